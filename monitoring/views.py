"""Browser pages of monitoring (dashboard, token usage, version comparison, evaluation runs) and /metrics."""

from __future__ import annotations

import secrets
import uuid
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.errors import NotFound, PortalError
from monitoring import charts, metrics, services
from monitoring.models import EvaluationRun, GateMetric, PromotionGate, TaskType
from registry import access, selectors
from registry.access import Action
from registry.models import PRODUCTION_ALIAS, ModelVersion, RegisteredModel, VersionStatus


def _model_or_404(request: HttpRequest, name: str) -> RegisteredModel:
    try:
        return selectors.model_get(request.user, name)
    except NotFound as exc:
        raise Http404(exc.message) from None


def _window(request: HttpRequest) -> str:
    try:
        return services.window_parse(request.GET.get("window"))
    except PortalError:
        return "hour"


def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of every process on this host: METRICS_TOKEN as a bearer token, or a
    staff session; anyone only when METRICS_PUBLIC is set. No address is trusted (behind a
    same-host proxy every client is loopback)."""
    if not (settings.METRICS_PUBLIC or _metrics_allowed(request)):
        if request.user.is_authenticated:
            message = "Metrics are for staff sessions and scrapers with the METRICS_TOKEN; your account is not staff."
            return JsonResponse({"error": message, "code": "permission_denied"}, status=403)
        response = JsonResponse({"error": "Metrics need the METRICS_TOKEN as 'Authorization: Bearer <token>' or a "
                                          "staff sign-in (METRICS_PUBLIC=true publishes them to anyone).",
                                 "code": "not_authenticated"}, status=401)  # fmt: skip
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)


def _metrics_allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    keyword, _, sent = request.headers.get("Authorization", "").partition(" ")
    if token and keyword.lower() == "bearer" and secrets.compare_digest(sent.strip().encode(), token.encode()):
        return True
    return bool(request.user.is_authenticated and request.user.is_staff)


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """Live serving charts of every model the user can see; the first figures come with the page
    (no second round trip before the charts show), the refreshes from dashboard_data."""
    window = _window(request)
    return render(request, "monitoring/dashboard.html", {
        "window": window, "windows": list(services.WINDOWS), "data_url": reverse("monitoring:dashboard-data"),
        "initial": _dashboard_figures(request, window),
    })  # fmt: skip


@login_required
def usage(request: HttpRequest) -> HttpResponse:
    """Model tokens used per model version and per caller over a window (staff: everyone's)."""
    window = _window(request)
    model = request.GET.get("model") or None
    summary = services.usage_summary(request.user, window, model=model)
    query = urlencode({"window": window, **({"model": model} if model else {})})
    return render(request, "monitoring/usage.html", {
        "window": window, "windows": list(services.WINDOWS), "model": model or "", "usage": summary,
        "everyone": request.user.is_staff, "csv_url": f"{reverse('api:usage-csv')}?{query}",
        "api_url": f"{reverse('api:usage')}?{query}",
    })  # fmt: skip


def _visible_versions(request: HttpRequest) -> Any:
    return ModelVersion.objects.filter(model__in=selectors.models_visible_to(request.user))


@login_required
def dashboard_data(request: HttpRequest) -> JsonResponse:
    """The dashboard's figures for a window (polled by static/monitoring/charts.js)."""
    return JsonResponse(_dashboard_figures(request, _window(request)))


def _dashboard_figures(request: HttpRequest, window: str) -> dict[str, Any]:
    series = services.series(window, _visible_versions(request))
    split = services.series(window, _visible_versions(request), split=True)
    figures = charts.traffic_figures(series)
    figures["latency_versions"] = charts.traffic_figures(split, per_version=True)["latency"]
    figures["batch_sizes"] = charts.batch_size_figure(series["totals"]["batch_size"]["histogram"])
    generation = charts.generation_figures(split)
    figures["ttft"], figures["output_speed"] = generation["ttft"], generation["output_speed"]
    return {"window": window, "totals": series["totals"], "figures": figures}


def confusion_run(evaluations: list[dict[str, Any]], production: int | None) -> dict[str, Any] | None:
    """The evaluation whose confusion matrix a model page shows: production's latest, else the newest of any version."""
    with_matrix = [r for r in evaluations if "confusion_matrix" in r["metrics"]]
    preferred = [r for r in with_matrix if r["version"] == production] or with_matrix
    return max(preferred, key=lambda r: r["run"].finished_at, default=None)


def _comparison(model: RegisteredModel) -> dict[str, Any]:
    """Every version's serving figures and latest evaluation per dataset, production marked."""
    stats = services.version_stats(model, "day")["model_stats"]
    latest = services.latest_runs(model)
    production = model.aliases.filter(name=PRODUCTION_ALIAS).values_list("version__version", flat=True).first()
    evaluations = [{"version": run.version.version, "dataset": run.dataset.name, "task": run.dataset.task,
                    "metrics": run.metrics, "run": run} for run in latest.values()]  # fmt: skip
    by_version: dict[int, list[dict[str, Any]]] = {}
    for row in evaluations:
        by_version.setdefault(row["version"], []).append(row)
    rows = [{"stats": s, "evaluations": sorted(by_version.get(int(s["version"]), []), key=lambda r: r["dataset"]),
             "production": int(s["version"]) == production} for s in stats]  # fmt: skip
    classification = any(r["task"] == TaskType.CLASSIFICATION for r in evaluations)
    metric = "accuracy" if classification or not evaluations else "r2"
    figures = {"accuracy": charts.accuracy_figure(evaluations, metric, production),
               "latency_versions": charts.version_latency_figure(stats)}  # fmt: skip
    newest = confusion_run(evaluations, production)
    if newest is not None:
        labels = list(newest["run"].version.labels or [])
        title = f"Confusion matrix: v{newest['version']} on {newest['dataset']}"
        figures["confusion"] = charts.confusion_figure(newest["metrics"]["confusion_matrix"], labels, title)
    return {"rows": rows, "production": production, "figures": figures, "metric": metric}


@login_required
def model_compare(request: HttpRequest, name: str) -> HttpResponse:
    """All versions of a model side by side: serving latency, errors and evaluation metrics."""
    model = _model_or_404(request, name)
    context = _comparison(model)
    split = services.series("day", model.versions.all(), split=True)
    context["figures"]["traffic"] = charts.traffic_figures(split, per_version=True)["rps"]
    context.update({
        "model": model, "can_evaluate": access.model_permits(request.user, model, Action.EVALUATE),
        "can_manage": access.model_permits(request.user, model, Action.MANAGE),
        "datasets": model.eval_datasets.all(), "ready_versions": model.versions.filter(status=VersionStatus.READY),
        "runs": EvaluationRun.objects.filter(version__model=model).select_related("version", "dataset")[:20],
        "gate": PromotionGate.objects.filter(model=model).select_related("dataset").first(),
        "gate_metrics": GateMetric.choices,
    })  # fmt: skip
    return render(request, "monitoring/compare.html", context)


@login_required
def model_charts_data(request: HttpRequest, name: str) -> JsonResponse:
    """The model page's figures: traffic and latency per version, tokens and generation timing,
    accuracy, confusion matrix."""
    model = _model_or_404(request, name)
    window = _window(request)
    split = services.series(window, model.versions.all(), split=True)
    traffic = charts.traffic_figures(split, per_version=True)
    figures = {"rps": traffic["rps"], "latency": traffic["latency"], "errors": traffic["errors"],
               "tokens": charts.tokens_figure(services.usage_series(window, model.versions.all())),
               **charts.generation_figures(split), **_comparison(model)["figures"]}  # fmt: skip
    return JsonResponse({"window": window, "figures": figures})


@login_required
def run_detail(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    try:
        run = services.run_get(request.user, run_id)
    except NotFound as exc:
        raise Http404(exc.message) from None
    figures = {}
    if run.metrics.get("confusion_matrix"):
        figures["confusion"] = charts.confusion_figure(run.metrics["confusion_matrix"], list(run.version.labels or []),
                                                       "Confusion matrix")  # fmt: skip
    if run.metrics.get("batch_ms"):
        ms = run.metrics["batch_ms"]
        figures["batches"] = {"data": [{"type": "bar", "x": list(range(1, len(ms) + 1)), "y": ms, "name": "ms"}],
                              "layout": charts._layout("Latency per batch", "ms")}  # fmt: skip
    api_url = reverse("api:evaluation-detail", args=[run.pk])
    return render(request, "monitoring/run_detail.html", {"run": run, "figures": figures, "api_url": api_url})


@login_required
@require_POST
def dataset_upload(request: HttpRequest, name: str) -> HttpResponse:
    try:
        model = selectors.model_get(request.user, name, action=Action.EVALUATE)
        upload = request.FILES.get("file")
        if upload is None:
            raise PortalError("Choose a file (.npz, CSV or JSON lines).")
        dataset = services.dataset_create(actor=request.user, model=model, name=request.POST.get("name", ""),
                                          file=upload, filename=upload.name or "")  # fmt: skip
        messages.success(request, f"Dataset {dataset.name} added: {dataset.rows} rows ({dataset.task}).")
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("monitoring:model-compare", name=name)


def _number(raw: str | None, name: str) -> float | None:
    if raw is None or not raw.strip():
        return None
    try:
        return float(raw)
    except ValueError:
        raise PortalError(f"{name} must be a number; got {raw!r}.") from None


@login_required
@require_POST
def gate_update(request: HttpRequest, name: str) -> HttpResponse:
    """Set, change or remove the promotion gate from the comparison page."""
    try:
        model = selectors.model_get(request.user, name, action=Action.MANAGE)
        if request.POST.get("remove"):
            services.gate_delete(actor=request.user, model=model)
            messages.success(request, "Promotion gate removed.")
        else:
            dataset = services.dataset_get(model, request.POST.get("dataset", ""))
            services.gate_set(
                actor=request.user,
                model=model,
                dataset=dataset,
                metric=request.POST.get("metric", "accuracy"),
                tolerance=_number(request.POST.get("tolerance"), "tolerance") or 0.0,
                min_value=_number(request.POST.get("min_value"), "min_value"),
                max_p95_ms=_number(request.POST.get("max_p95_ms"), "max_p95_ms"),
                enabled=bool(request.POST.get("enabled")),
            )
            messages.success(request, "Promotion gate saved.")
    except PortalError as exc:
        if isinstance(exc, NotFound) and exc.field is None:
            raise Http404(exc.message) from None
        messages.error(request, exc.message)
    return redirect("monitoring:model-compare", name=name)


@login_required
@require_POST
def evaluation_create(request: HttpRequest, name: str) -> HttpResponse:
    try:
        version = selectors.version_get(request.user, name, request.POST.get("version", ""), action=Action.EVALUATE)
        dataset = services.dataset_get(version.model, request.POST.get("dataset", ""))
        run = services.evaluation_start(actor=request.user, version=version, dataset=dataset)
    except NotFound as exc:
        messages.error(request, exc.message)
    except PortalError as exc:
        messages.error(request, exc.message)
    else:
        # No "queued" flash: the run page shows the live status, and a flash would still say
        # "queued" beside a run that finished before the page was drawn.
        return redirect("monitoring:run-detail", run_id=run.pk)
    return redirect("monitoring:model-compare", name=name)

"""Browser pages of conversions: the list, one conversion's page, start from a version, cancel."""

from __future__ import annotations

import json
import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.errors import NotFound, PortalError
from inference.conversions import recipes, services
from inference.models import ConversionRun
from registry import selectors


def _run_or_404(request: HttpRequest, run_id: uuid.UUID) -> ConversionRun:
    try:
        return services.conversion_get(request.user, run_id)
    except NotFound as exc:
        raise Http404(exc.message) from None


@login_required
def conversion_list(request: HttpRequest) -> HttpResponse:
    runs = services.conversions_visible_to(request.user)
    page = Paginator(runs, 25).get_page(request.GET.get("page"))
    return render(request, "inference/conversion_list.html", {"page": page})


@login_required
def conversion_detail(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    run = _run_or_404(request, run_id)
    context = {
        "run": run,
        "job": run,  # the shared progress bar reads `job`
        "api_url": reverse("api:conversion-detail", args=[run.pk]),
        "steps": recipes.STEPS.get(run.target, ()),
        "result_json": json.dumps(run.result, indent=2, sort_keys=True),
    }
    return render(request, "inference/conversion_detail.html", context)


@login_required
@require_POST
def conversion_start(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """Start a conversion from the version page's form."""
    try:
        source = selectors.version_get(request.user, name, version)
    except NotFound as exc:
        raise Http404(exc.message) from None
    options: dict[str, object] = {}
    if request.POST.get("opset"):
        options["opset"] = int(request.POST["opset"]) if request.POST["opset"].isdigit() else request.POST["opset"]
    if request.POST.get("per_channel") and request.POST.get("target") == recipes.ONNX_INT8:
        options["per_channel"] = True
    try:
        run = services.conversion_start(
            actor=request.user, version=source, target=request.POST.get("target", ""), options=options
        )
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("registry:version-detail", name=name, version=version)
    messages.success(request, f"Conversion {run.short_id} to {run.target} queued.")
    return redirect("inference:conversion-detail", run_id=run.pk)


@login_required
@require_POST
def conversion_action(request: HttpRequest, run_id: uuid.UUID, action: str) -> HttpResponse:
    run = _run_or_404(request, run_id)
    if action != "cancel":
        raise Http404(f"Unknown action {action!r}.")
    try:
        run = services.conversion_cancel(actor=request.user, run=run)
        messages.success(request, f"Conversion {run.short_id} {'cancelled' if not run.is_active else 'is stopping'}.")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("inference:conversion-detail", run_id=run.pk)

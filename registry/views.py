"""Browser pages of the registry: thin views over selectors and services."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.errors import NotFound, PortalError
from registry import access, diffs, selectors, services
from registry.access import Action
from registry.forms import (
    AliasSetForm,
    InlineEditForm,
    ModelCreateForm,
    ModelEditForm,
    VersionEditForm,
    VersionSettingsForm,
    VersionUploadForm,
)
from registry.models import PRODUCTION_ALIAS, ModelAlias, ModelFormat, ModelVersion, RegisteredModel, VersionStatus
from registry.sources import source_rows
from registry.text_tasks import DEFAULT_TOP_K, MAX_TOP_K, TASK_PARAMETERS, TEXT_INPUT, TextTask


def _json_or_none(raw: str, field: str) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PortalError(
            f"{field} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).", field=field
        ) from None


def _or_404(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except NotFound as exc:
        raise Http404(exc.message) from None


@login_required
def model_list(request: HttpRequest) -> HttpResponse:
    """All models the user can see, with search and tag filter."""
    query = request.GET.get("q", "").strip()
    tag = request.GET.get("tag", "").strip()
    models = (
        selectors.models_visible_to(request.user)
        .select_related("owner")
        .prefetch_related("tags", Prefetch("aliases", queryset=ModelAlias.objects.select_related("version")))
        .annotate(version_count=Count("versions", distinct=True))
    )
    for word in query.split():
        models = models.filter(Q(name__icontains=word) | Q(description__icontains=word))
    if tag:
        models = models.filter(tags__name=tag)
    page = Paginator(models.distinct().order_by("name"), 25).get_page(request.GET.get("page"))
    return render(request, "registry/model_list.html", {"page": page, "query": query, "tag": tag})


@login_required
def model_create(request: HttpRequest) -> HttpResponse:
    form = ModelCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            model = services.model_create(actor=request.user, **form.cleaned_data)
        except PortalError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        else:
            messages.success(request, f"Model {model.name} created. Upload its first version.")
            return redirect("registry:version-upload", name=model.name)
    return render(request, "registry/model_create.html", {"form": form})


@login_required
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    """The model page: aliases, versions, alias history, promote and roll back."""
    model = _or_404(lambda: selectors.model_get(request.user, name))
    versions = model.versions.select_related("created_by").prefetch_related("aliases", "tags")
    aliases = list(model.aliases.select_related("version", "updated_by"))
    rollback_targets = {alias.name: services.alias_previous_version(model, alias.name) for alias in aliases}
    permitted = access.actions_permitted(request.user, model)
    context = {
        "model": model,
        "versions": versions,
        "aliases": [(alias, rollback_targets[alias.name]) for alias in aliases],
        "held_aliases": aliases,
        "production_version": next((a.version.version for a in aliases if a.name == PRODUCTION_ALIAS), None),
        "production_object": next((a.version for a in aliases if a.name == PRODUCTION_ALIAS), None),
        "history": selectors.alias_history(model)[:50],
        "ready_versions": [v.version for v in versions if v.status == VersionStatus.READY],
        # Only what the user may do is offered (a button that then fails is worse than none).
        "can_change": Action.UPLOAD in permitted,
        "can_manage": Action.MANAGE in permitted,
        "can_delete": Action.DELETE in permitted,
        "can_override_gate": Action.OVERRIDE_GATE in permitted,
        "can_set_alias": Action.MOVE_ALIAS in permitted,
        "movable": _aliases_movable(permitted, model, [PRODUCTION_ALIAS, *(alias.name for alias in aliases)]),
        "edit_form": ModelEditForm.of(model, "model-edit", visibility=model.visibility),
        "production": PRODUCTION_ALIAS,
        "alias_form": AliasSetForm(),
    }
    return render(request, "registry/model_detail.html", context)


def _aliases_movable(permitted: frozenset[Action], model: Any, names: list[str]) -> set[str]:
    """The aliases the user may move (roll back, delete, promote to) directly, without a request."""
    movable = set()
    for name in names:
        protected, needs_approval = services.alias_protection(model, name)
        if (Action.PROMOTE if protected else Action.MOVE_ALIAS) in permitted and not needs_approval:
            movable.add(name)
    return movable


def _inline_edit_save(
    request: HttpRequest, form: InlineEditForm, obj: RegisteredModel | ModelVersion, save: Callable[..., Any]
) -> None:
    """Save an inline edit through its service (which checks the right and audits) and say what changed."""
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(str(e) for e in errors)}" for name, errors in form.errors.items())
        messages.error(request, f"Not saved: {problems}")
        return

    def current() -> dict[str, Any]:
        values = {field: getattr(obj, field) for field in form.cleaned_data if field != "tags"}
        return values | {"tags": sorted(obj.tags.values_list("name", flat=True))}

    before = current()
    try:
        save(actor=request.user, **form.cleaned_data)
    except PortalError as exc:
        messages.error(request, f"Not saved: {exc.message}")
        return
    after = current()
    changed = [field for field in before if before[field] != after[field]]
    messages.success(request, f"Saved {', '.join(changed)}." if changed else "Nothing changed.")


@login_required
@require_POST
def model_edit(request: HttpRequest, name: str) -> HttpResponse:
    """Save the model page's inline edit (description, tags, visibility); audited by the service."""
    model = _or_404(lambda: selectors.model_get(request.user, name))
    _inline_edit_save(request, ModelEditForm(request.POST), model, partial(services.model_update, model=model))
    return redirect("registry:model-detail", name=name)


@login_required
@require_POST
def version_edit(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """Save the version page's inline edit (description, tags); audited by the service."""
    obj = _or_404(lambda: selectors.version_get(request.user, name, version))
    _inline_edit_save(request, VersionEditForm(request.POST), obj, partial(services.version_update, version=obj))
    return redirect("registry:version-detail", name=name, version=version)


@login_required
@require_POST
def model_delete(request: HttpRequest, name: str) -> HttpResponse:
    try:
        model = selectors.model_get(request.user, name, action=Action.DELETE)
        services.model_delete(actor=request.user, model=model, force=request.POST.get("force") == "1")
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
        return redirect("registry:model-detail", name=name)
    messages.success(request, f"Model {name} and all its versions were deleted.")
    return redirect("registry:model-list")


@login_required
def version_upload(request: HttpRequest, name: str) -> HttpResponse:
    """Upload page. With JavaScript the form posts to the REST API with a progress bar;
    without it, this view takes the same form."""
    model = _or_404(lambda: selectors.model_get(request.user, name))
    form = VersionUploadForm(request.POST or None, request.FILES or None)
    may_upload_code = access.code_upload_permitted(request.user, model)
    if not may_upload_code:
        # MODEL_UPLOAD_POLICY: the code-bearing formats are not offered (the service refuses them too).
        format_field: Any = form.fields["format"]
        format_field.choices = [(ModelFormat.HUGGINGFACE.value, ModelFormat.HUGGINGFACE.label)]
    if request.method == "POST":
        try:
            selectors.model_get(request.user, name, for_change=True)
            if form.is_valid():
                data = form.cleaned_data
                version = services.version_upload(
                    actor=request.user,
                    model=model,
                    file=data["file"],
                    filename=data["file"].name,
                    format=data["format"] or None,
                    task=data["task"] or None,
                    signature=_json_or_none(data["signature"], "signature"),
                    example_input=_json_or_none(data["example_input"], "example_input"),
                    labels=data["labels"] or None,
                    description=data["description"],
                    tags=data["tags"],
                    source=form.source(),
                )
                messages.success(request, f"Uploaded version {version.version}; validation is running.")
                return redirect("registry:version-detail", name=name, version=version.version)
        except PortalError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, exc.message)
    context = {
        "model": model,
        "form": form,
        "api_url": reverse("api:version-list", args=[model.name]),
        "formats": ModelFormat.choices,
        "can_upload": selectors.model_can_change(request.user, model),
        "may_upload_code": may_upload_code,
        "upload_policy": settings.MODEL_UPLOAD_POLICY,
        "upload_policy_who": access.upload_policy_text(),
    }
    return render(request, "registry/version_upload.html", context, status=400 if form.errors else 200)


@login_required
def version_detail(request: HttpRequest, name: str, version: int) -> HttpResponse:
    obj = _or_404(lambda: selectors.version_get(request.user, name, version))
    aliases = list(obj.aliases.all())
    permitted = access.actions_permitted(request.user, obj.model)
    held = {alias.name for alias in aliases}
    base_url = request.build_absolute_uri("/").rstrip("/")
    context = {
        "model": obj.model,
        "version": obj,
        "aliases": aliases,
        "is_production": any(alias.name == PRODUCTION_ALIAS for alias in aliases),
        "tags": list(obj.tags.all()),
        # Only what the user may do is offered, as on the model page.
        "can_change": Action.UPLOAD in permitted,
        "can_download": Action.DOWNLOAD in permitted,
        "can_predict": Action.PREDICT in permitted,
        "can_delete": Action.DELETE in permitted,
        "can_set_alias": Action.MOVE_ALIAS in permitted,
        "can_promote": PRODUCTION_ALIAS in _aliases_movable(permitted, obj.model, [PRODUCTION_ALIAS]),
        # Archiving drops the version's aliases: each must be one the user may move.
        "can_archive": Action.UPLOAD in permitted and held <= _aliases_movable(permitted, obj.model, list(held)),
        "api_url": reverse("api:version-detail", args=[name, version]),
        "settled": obj.status not in (VersionStatus.PENDING, VersionStatus.VALIDATING),
        "production": PRODUCTION_ALIAS,
        "try_it": json.dumps(_example_inputs(obj)),
        "text_try_it": _text_try_it(obj) if obj.format == ModelFormat.HUGGINGFACE else None,
        "chat": _chat(obj) if obj.task == TextTask.TEXT_GENERATION else None,
        "snippets": _snippets(obj, base_url, grpc_address(base_url)),
        "identical": selectors.versions_identical(obj),
        "edit_form": VersionEditForm.of(obj, "version-edit"),
        "source": source_rows(obj.source),
        "derived": list(obj.derived.order_by("version").values_list("version", "derivation")),
        "production_number": obj.model.aliases.filter(name=PRODUCTION_ALIAS)
        .values_list("version__version", flat=True)
        .first(),
        "generative": obj.task == TextTask.TEXT_GENERATION,
        "settings_form": VersionSettingsForm(
            initial={name: getattr(obj, name) for name in VersionSettingsForm.base_fields}
        ),
    }
    return render(request, "registry/version_detail.html", context)


@login_required
@require_POST
def version_settings(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """Change a version's batching and max_tokens from its page (the service checks and audits)."""
    form = VersionSettingsForm(request.POST)
    try:
        obj = selectors.version_get(request.user, name, version, for_change=True)
        if not form.is_valid():
            raise PortalError(f"Settings are whole numbers; check {', '.join(form.errors)}.")
        changes = {field: value for field, value in form.cleaned_data.items() if value is not None}
        services.version_update(actor=request.user, version=obj, **changes)
        messages.success(request, f"Settings of version {version} saved.")
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("registry:version-detail", name=name, version=version)


def _diff_numbers(raw: list[str]) -> list[int]:
    """The version numbers asked for (?v=2&v=3, or ?v=2,3), in order, each once."""
    numbers: list[int] = []
    for part in (piece.strip().lstrip("v") for value in raw for piece in value.split(",")):
        if not part:
            continue
        if not part.isdigit():
            raise PortalError(f"{part!r} is not a version number.", field="v")
        if int(part) not in numbers:
            numbers.append(int(part))
    if len(numbers) > diffs.MAX_VERSIONS:
        raise PortalError(f"Compare at most {diffs.MAX_VERSIONS} versions at once.", field="v")
    return sorted(numbers)


@login_required
def version_diff(request: HttpRequest, name: str) -> HttpResponse:
    """Two or more versions of a model side by side: signature, format, size, parameters, source,
    metrics; ?only=differences hides the rows where they agree (the page's script toggles it in place)."""
    model = _or_404(lambda: selectors.model_get(request.user, name))
    differences_only = request.GET.get("only") == "differences"
    error = ""
    try:
        numbers = _diff_numbers(request.GET.getlist("v"))
    except PortalError as exc:
        numbers, error = [], exc.message
    versions = list(
        model.versions.filter(version__in=numbers).select_related("model", "parent", "created_by")
        .prefetch_related("tags").order_by("version")
    )  # fmt: skip
    missing = sorted(set(numbers) - {v.version for v in versions})
    if missing:
        raise Http404(f"Model {name!r} has no version {missing[0]}.")
    if not error and request.GET.getlist("v") and len(versions) < diffs.MIN_VERSIONS:
        error = "Choose two or more versions to compare."
    sections = []
    if len(versions) >= diffs.MIN_VERSIONS:
        rows = diffs.diff_rows(versions)
        sections = diffs.diff_sections(rows, differences_only)
        counts = (sum(row.differs for row in rows), len(rows))
    context = {
        "model": model,
        "versions": versions,
        "numbers": numbers,
        "all_versions": list(model.versions.order_by("-version").values_list("version", flat=True)),
        "sections": sections,
        "counts": counts if sections else None,
        "differences_only": differences_only,
        "max_versions": diffs.MAX_VERSIONS,
        "error": error,
    }
    return render(request, "registry/version_diff.html", context, status=400 if error else 200)


def _example_inputs(version: ModelVersion) -> dict[str, Any]:
    """One example per input for the try-it form: the uploader's example, else zeros of the right shape."""
    if version.example_input:
        return {
            tensor["name"]: tensor["data"][0] if tensor["shape"] else tensor["data"] for tensor in version.example_input
        }
    example = {}
    for spec in version.inputs:
        dims = spec["shape"][1:] if spec["shape"][:1] == [-1] else spec["shape"]
        fill: Any = False if spec["datatype"] == "BOOL" else (0.0 if spec["datatype"].startswith("FP") else 0)
        example[spec["name"]] = _filled([8 if d == -1 else d for d in dims], fill)
    return example


def _filled(shape: list[int], value: Any) -> Any:
    return value if not shape else [_filled(shape[1:], value) for _ in range(shape[0])]


NUMPY_NAMES = {"BOOL": "bool_", "FP16": "float16", "FP32": "float32", "FP64": "float64"}


# Mask markers of the common tokenizers (BERT's [MASK], RoBERTa's <mask>).
MASK_MARKER = re.compile(r"\[MASK\]|<mask>")


def _text_example(version: ModelVersion) -> str:
    """The text a Hugging Face version was validated with (the uploader's, or its task's default)."""
    for tensor in version.example_input or []:
        if tensor.get("name") == TEXT_INPUT and tensor.get("data"):
            return str(tensor["data"][0])
    return "Paris is the [MASK] of France." if version.task == TextTask.FILL_MASK else "Paris is the capital of France."


def _mask_token(version: ModelVersion, example: str) -> str:
    """A fill-mask version's mask marker: the validation's record, else the one its example holds."""
    recorded = (version.validation or {}).get("mask_token")
    if recorded:
        return str(recorded)
    found = MASK_MARKER.search(example)
    return found.group(0) if found else "[MASK]"


def _text_try_it(version: ModelVersion) -> dict[str, Any]:
    """What the try-it form of a Hugging Face version needs: its task, an example text, the mask
    marker (fill-mask) and the top_k control (tasks that rank answers)."""
    example = _text_example(version)
    takes_top_k = "top_k" in TASK_PARAMETERS.get(version.task, ())
    return {
        "task": version.task,
        "example": example,
        "mask_token": _mask_token(version, example) if version.task == TextTask.FILL_MASK else "",
        "top_k": DEFAULT_TOP_K.get(TextTask(version.task), 1) if takes_top_k else None,
        "max_top_k": MAX_TOP_K,
    }


def _chat(version: ModelVersion) -> dict[str, Any]:
    """What the chat playground of a text-generation version needs: where it posts, its max_tokens
    default and limit (the version's, else the portal's), and whether the model has a chat template."""
    limit = version.max_tokens_limit or settings.GENERATION_MAX_TOKENS_LIMIT
    return {
        "url": reverse("inference:playground-chat", args=[version.model.name, version.version]),
        "max_tokens": min(version.max_tokens_default or settings.GENERATION_MAX_TOKENS_DEFAULT, limit),
        "max_tokens_limit": limit,
        # Recorded by validation; a version validated before it was recorded is given the benefit of the doubt.
        "chat_template": (version.validation or {}).get("chat_template", True),
    }


CHAT_EXAMPLE = [{"role": "user", "content": "Write a haiku about the sea."}]


def _generation_snippets(version: ModelVersion, base_url: str) -> dict[str, str]:
    """A streamed chat completion with curl and with the openai client, against /v1."""
    name, number = version.model.name, version.version
    # "name" alone is the production alias; "name:3" a version, "name:staging" an alias.
    model = name if version.aliases.filter(name=PRODUCTION_ALIAS).exists() else f"{name}:{number}"
    body = {"model": model, "messages": CHAT_EXAMPLE, "max_tokens": 32, "stream": True}
    # Model names hold no quotes (MODEL_NAME_RE), nor does the example: single quotes hold the body.
    quoted = json.dumps(body)
    return {
        "curl": f"curl -sN '{base_url}/v1/chat/completions' \\\n  -H \"Authorization: Bearer $MAAS_TOKEN\" \\\n"
        f"  -H 'Content-Type: application/json' \\\n  -d '{quoted}'",
        "openai": "\n".join([
            "import os", "", "from openai import OpenAI", "",
            f'client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["MAAS_TOKEN"])',
            f'# model="{name}" is production; "{name}:{number}" this version, "{name}:staging" an alias.',
            "stream = client.chat.completions.create(",
            f"    model={model!r},",
            f"    messages={CHAT_EXAMPLE!r},",
            "    max_tokens=32,", "    temperature=0.7,", "    stream=True,", ")",
            "for chunk in stream:",
            "    if chunk.choices and chunk.choices[0].delta.content:",
            '        print(chunk.choices[0].delta.content, end="", flush=True)',
            "print()",
        ]),
    }  # fmt: skip


def _text_snippets(version: ModelVersion, base_url: str) -> dict[str, str]:
    """curl and Python (requests) calls of the friendly endpoint, tritonclient (BYTES) of /v2 and,
    for embeddings, the openai client against /v1."""
    name, number = version.model.name, version.version
    url = f"{base_url}{reverse('api:model-predict', args=[name])}?version={number}"
    try_it = _text_try_it(version)
    body: dict[str, Any] = {"inputs": try_it["example"]}
    if try_it["top_k"] is not None:
        body["parameters"] = {"top_k": try_it["top_k"]}
    printed: dict[str, str] = {
        TextTask.FILL_MASK: 'print(answer["token_str"], answer["score"])',
        TextTask.TEXT_CLASSIFICATION: 'print(answer["label"], answer["score"])',
        TextTask.TOKEN_CLASSIFICATION: 'print(answer["entity"], answer["word"], answer["score"])',
    }
    lines = ["import os", "", "import requests", "",
             f"response = requests.post(\n    {url!r},",
             "    headers={\"Authorization\": \"Bearer \" + os.environ[\"MAAS_TOKEN\"]},",
             f"    json={json.dumps(body, ensure_ascii=False)},",
             "    timeout=30,", ")", "response.raise_for_status()"]  # fmt: skip
    if version.task in printed:
        lines += ['for answer in response.json()["outputs"]:', f"    {printed[version.task]}"]
    else:
        lines += ['embedding = response.json()["outputs"]', "print(len(embedding), embedding[:4])"]
    # A quote in the text closes the shell's single-quoted string: spelled '\'' inside it.
    quoted = json.dumps(body, ensure_ascii=False).replace("'", "'\\''")
    snippets = {
        "curl": f"curl -s '{url}' \\\n  -H \"Authorization: Bearer $MAAS_TOKEN\" \\\n"
        f"  -H 'Content-Type: application/json' \\\n  -d '{quoted}'",
        "python": "\n".join(lines),
    }
    parameters = f", parameters={json.dumps(body['parameters'])}" if "parameters" in body else ""
    snippets["triton"] = "\n".join([
        "import os", "", "import numpy as np", "import tritonclient.http as httpclient", "",
        f'client = httpclient.InferenceServerClient("{base_url.split("://", 1)[-1]}")',
        'headers = {"Authorization": "Bearer " + os.environ["MAAS_TOKEN"]}',
        f'text = httpclient.InferInput("{TEXT_INPUT}", [1], "BYTES")',
        f"text.set_data_from_numpy(np.array([{try_it['example']!r}], dtype=object))",
        f'result = client.infer("{name}", [text], model_version="{number}", headers=headers{parameters})',
        *[f'print(result.as_numpy("{o["name"]}"))' for o in version.outputs],
    ])  # fmt: skip
    if version.task == TextTask.FEATURE_EXTRACTION:
        # "name" alone is the production alias; "name:3" a version, "name:staging" an alias.
        model = name if version.aliases.filter(name=PRODUCTION_ALIAS).exists() else f"{name}:{number}"
        snippets["openai"] = "\n".join([
            "import os", "", "from openai import OpenAI", "",
            f'client = OpenAI(base_url="{base_url}/v1", api_key=os.environ["MAAS_TOKEN"])',
            f'# model="{name}" is production; "{name}:{number}" this version, "{name}:staging" an alias.',
            f"response = client.embeddings.create(model={model!r}, input=[{try_it['example']!r}, "
            "'Another sentence.'])",
            "print(len(response.data), len(response.data[0].embedding))",
        ])  # fmt: skip
    return snippets


def grpc_address(base_url: str) -> str:
    """Where a client reaches the gRPC server: the page's host on GRPC_BIND's port ("" when it is off)."""
    if not settings.GRPC_BIND:
        return ""
    host = urlsplit(base_url).hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{settings.GRPC_BIND.rpartition(':')[2]}"


def _snippets(version: ModelVersion, base_url: str, grpc_address: str = "") -> dict[str, str]:
    """Copy-paste curl (small inputs only) and Python (tritonclient) calls of the v2 endpoint, over
    HTTP and, given the gRPC server's address, over gRPC."""
    if version.task == TextTask.TEXT_GENERATION:
        return _generation_snippets(version, base_url)
    if version.format == ModelFormat.HUGGINGFACE:
        return _text_snippets(version, base_url)
    url = f"{base_url}/v2/models/{version.model.name}/versions/{version.version}/infer"
    lines = ["import os", "", "import numpy as np", "import tritonclient.http as httpclient", "",
             f'client = httpclient.InferenceServerClient("{base_url.split("://", 1)[-1]}")',
             'headers = {"Authorization": "Bearer " + os.environ["MAAS_TOKEN"]}', "inputs = []"]  # fmt: skip
    tensors = []
    for name, data in _example_inputs(version).items():
        spec = next(s for s in version.inputs if s["name"] == name)
        array = np.asarray(data)
        shape = ([1] if spec["shape"][:1] == [-1] else []) + list(array.shape)
        dtype = NUMPY_NAMES.get(spec["datatype"], spec["datatype"].lower())
        lines += [f'tensor = httpclient.InferInput("{name}", {shape}, "{spec["datatype"]}")',
                  f"tensor.set_data_from_numpy(np.zeros({shape}, dtype=np.{dtype}), binary_data=True)",
                  "inputs.append(tensor)"]  # fmt: skip
        tensors.append({"name": name, "shape": shape, "datatype": spec["datatype"], "data": array.ravel().tolist()})
    call = f'client.infer("{version.model.name}", inputs, model_version="{version.version}", headers=headers)'
    lines += [f"result = {call}", *[f'print(result.as_numpy("{o["name"]}"))' for o in version.outputs]]
    snippets = {"python": "\n".join(lines)}
    if grpc_address:
        # The same call over gRPC (raw tensors, no JSON): tritonclient.grpc, metadata keys in lowercase.
        grpc_lines = [line.replace("httpclient", "grpcclient").replace(", binary_data=True", "") for line in lines]
        grpc_lines[3] = "import tritonclient.grpc as grpcclient"
        grpc_lines[5] = f'client = grpcclient.InferenceServerClient("{grpc_address}")'
        grpc_lines[6] = 'headers = {"authorization": "Bearer " + os.environ["MAAS_TOKEN"]}'
        snippets["grpc"] = "\n".join(grpc_lines)
    if sum(len(t["data"]) for t in tensors) <= 64:
        body = json.dumps({"inputs": tensors})
        snippets["curl"] = (f"curl -s {url} \\\n  -H \"Authorization: Bearer $MAAS_TOKEN\" \\\n"
                            f"  -H 'Content-Type: application/json' \\\n  -d '{body}'")  # fmt: skip
    return snippets


VERSION_ACTIONS = {
    "archive": (services.version_archive, "Version {v} archived."),
    "restore": (services.version_restore, "Version {v} restored; it is being validated again."),
    "validate": (services.version_revalidate, "Validation of version {v} queued again."),
}


@login_required
@require_POST
def version_action(request: HttpRequest, name: str, version: int, action: str) -> HttpResponse:
    """Archive, restore, validate again or delete a version from a button."""
    try:
        needed = Action.DELETE if action == "delete" else Action.UPLOAD
        obj = selectors.version_get(request.user, name, version, action=needed)
        # "Also remove its aliases" ticked: take the version offline on purpose (audited).
        force = request.POST.get("force") == "1"
        if action == "delete":
            services.version_delete(actor=request.user, version=obj, force=force)
            messages.success(request, f"Version {version} deleted.")
            return redirect("registry:model-detail", name=name)
        if action not in VERSION_ACTIONS:
            raise Http404(f"Unknown action {action!r}.")
        service, message = VERSION_ACTIONS[action]
        service(actor=request.user, version=obj, **({"force": force} if action == "archive" else {}))
        messages.success(request, message.format(v=version))
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("registry:version-detail", name=name, version=version)


@login_required
@require_POST
def alias_set(request: HttpRequest, name: str) -> HttpResponse:
    """Set or move an alias (the promote button posts alias=production)."""
    form = AliasSetForm(request.POST)
    try:
        model = selectors.model_get(request.user, name, action=Action.MOVE_ALIAS)
        if not form.is_valid():
            raise PortalError("Choose an alias name and a version number.")
        alias = form.cleaned_data["alias"].strip().lower()
        services.alias_set(
            actor=request.user,
            model=model,
            name=alias,
            version_number=form.cleaned_data["version"],
            force=form.cleaned_data["force"],
        )
        messages.success(request, f"{alias} now points at version {form.cleaned_data['version']}.")
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect(request.POST.get("next") or reverse("registry:model-detail", args=[name]))


@login_required
@require_POST
def alias_action(request: HttpRequest, name: str, alias: str, action: str) -> HttpResponse:
    """Roll back or delete an alias."""
    try:
        model = selectors.model_get(request.user, name, action=Action.MOVE_ALIAS)
        if action == "rollback":
            moved = services.alias_rollback(actor=request.user, model=model, name=alias)
            messages.success(request, f"{alias} rolled back to version {moved.version.version}.")
        elif action == "delete":
            services.alias_delete(actor=request.user, model=model, name=alias)
            messages.success(request, f"Alias {alias} deleted.")
        else:
            raise Http404(f"Unknown action {action!r}.")
    except NotFound as exc:
        raise Http404(exc.message) from None
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("registry:model-detail", name=name)

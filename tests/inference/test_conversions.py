"""Conversions run in-process (MODEL_SANDBOX=off, as every unit test): steps, the child, refusals, cancel."""

from __future__ import annotations

import contextlib
from io import StringIO
from typing import Any

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from inference.conversions import recipes, services, work
from inference.models import ConversionRun, RunStatus
from registry.artifacts import artifact_storage
from registry.models import ModelVersion, VersionStatus
from registry.services import role_grant

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]}


def _stored_artifacts() -> set[str]:
    storage = artifact_storage()
    found: set[str] = set()

    def walk(prefix: str) -> None:
        folders, files = storage.listdir(prefix)
        found.update(f"{prefix}/{name}".lstrip("/") for name in files)
        for folder in folders:
            walk(f"{prefix}/{folder}".lstrip("/"))

    with contextlib.suppress(FileNotFoundError):
        walk("")
    return found


def convert(actor: Any, version: ModelVersion, target: str, **options: Any) -> ConversionRun:
    run = services.conversion_start(actor=actor, version=version, target=target, options=options or None)
    work.conversion_execute(run.pk)
    run.refresh_from_db()
    return run


@pytest.mark.parametrize("format", ["torchscript", "exported_program"])
@pytest.mark.parametrize("target", ["onnx", "onnx-int8"])
def test_conversion_makes_a_ready_child_with_parent_recipe_and_figures(
    ready_version: Any, owner: Any, format: str, target: str
) -> None:
    parent = ready_version(format=format, example_input=EXAMPLE)
    run = convert(owner, parent, target)
    assert run.status == RunStatus.SUCCEEDED, run.error
    child = run.child
    assert child is not None and child.status == VersionStatus.READY
    assert child.format == "onnx" and child.parent_id == parent.pk
    assert child.derivation.startswith("converted to ONNX")
    assert child.signature["inputs"] == parent.signature["inputs"]
    assert [o["name"] for o in child.signature["outputs"]] == [o["name"] for o in parent.signature["outputs"]]
    assert child.source["conversion_target"] == target and child.source["parent_sha256"] == parent.sha256
    assert child.source["sha256"] == child.sha256
    assert {"torch_version", "onnx_version", "onnxruntime_version", "onnxscript_version"} <= set(child.source)
    result = run.result
    assert result["comparison"]["within"] is True
    assert result["sha256"] == {"parent": parent.sha256, "child": child.sha256}
    assert result["latency_ms"]["parent"]["runs"] == result["latency_ms"]["child"]["runs"] > 0
    assert result["sizes"]["child"] == child.size_bytes
    assert run.rows_done == run.total_rows == len(recipes.STEPS[target])
    if target == "onnx-int8":
        assert result["memory_bytes"]["child"] < result["memory_bytes"]["parent"]


def test_child_beyond_tolerance_fails_with_figures_and_leaves_nothing(
    ready_version: Any, owner: Any, settings: Any
) -> None:
    parent = ready_version(example_input=EXAMPLE)
    settings.CONVERSION_TOLERANCES = {**settings.CONVERSION_TOLERANCES, "onnx-int8": {"atol": 0.0, "rtol": 0.0}}
    before = _stored_artifacts()
    run = convert(owner, parent, "onnx-int8")
    assert run.status == RunStatus.FAILED
    assert "beyond the tolerance" in run.error and "max abs diff" in run.error and "max rel diff" in run.error
    assert run.result["comparison"]["within"] is False and run.result["comparison"]["max_abs_diff"] > 0
    assert run.child is None and ModelVersion.objects.filter(parent=parent).count() == 0
    assert _stored_artifacts() == before


def test_refusals_name_the_problem(ready_version: Any, owner: Any, member: Any, outsider: Any) -> None:
    parent = ready_version()
    with pytest.raises(InvalidInput, match="Unknown target 'tflite'"):
        services.conversion_start(actor=owner, version=parent, target="tflite")
    with pytest.raises(Conflict, match="fp16 conversions run on GPU hosts only"):
        services.conversion_start(actor=owner, version=parent, target="fp16")
    with pytest.raises(InvalidInput, match="Unknown option 'bits'"):
        services.conversion_start(actor=owner, version=parent, target="onnx", options={"bits": 4})
    with pytest.raises(InvalidInput, match="opset must be an integer from 18 to 23"):
        services.conversion_start(actor=owner, version=parent, target="onnx", options={"opset": 7})
    with pytest.raises(NotFound):
        services.conversion_start(actor=outsider, version=parent, target="onnx")
    role_grant(actor=owner, model=parent.model, username=member.username, role="predictor")
    with pytest.raises(PermissionDenied):
        services.conversion_start(actor=member, version=parent, target="onnx")
    ModelVersion.objects.filter(pk=parent.pk).update(status=VersionStatus.FAILED)
    parent.refresh_from_db()
    with pytest.raises(Conflict, match="is failed; only ready versions can be converted"):
        services.conversion_start(actor=owner, version=parent, target="onnx")
    assert not ConversionRun.objects.exists()


def test_an_onnx_version_can_only_be_quantised(ready_version: Any, owner: Any) -> None:
    child = convert(owner, ready_version(example_input=EXAMPLE), "onnx").child
    assert child is not None
    with pytest.raises(InvalidInput, match="A onnx version can be converted to onnx-int8 only"):
        services.conversion_start(actor=owner, version=child, target="onnx")
    grandchild = convert(owner, child, "onnx-int8")
    assert grandchild.status == RunStatus.SUCCEEDED, grandchild.error
    with pytest.raises(InvalidInput, match="already a onnx-int8 conversion; convert its parent instead"):
        services.conversion_start(actor=owner, version=grandchild.child, target="onnx-int8")  # type: ignore[arg-type]
    lineage = services.version_lineage(grandchild.child)  # type: ignore[arg-type]
    assert [link["version"] for link in lineage["chain"]] == [1, 2, 3]
    assert lineage["chain"][2]["recipe"]["conversion_target"] == "onnx-int8"


def test_export_failure_is_shortened_exporter_message(ready_version: Any, owner: Any, monkeypatch: Any) -> None:
    from inference.conversions import export

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("\x1b[96mFailed to export the model\x1b[0m\n" + "detail line\n" * 500)

    monkeypatch.setattr(export.torch.onnx, "export", broken)
    run = convert(owner, ready_version(example_input=EXAMPLE), "onnx")
    assert run.status == RunStatus.FAILED
    assert run.error.startswith(
        "Step 1 of 4 (export): The ONNX export failed: RuntimeError: Failed to export the model"
    )
    assert "\x1b" not in run.error and len(run.error) < 600
    assert not ModelVersion.objects.filter(parent__isnull=False).exists()


def test_cancel_midway_leaves_no_version_and_no_artifact(ready_version: Any, owner: Any, monkeypatch: Any) -> None:
    parent = ready_version(example_input=EXAMPLE)
    run = services.conversion_start(actor=owner, version=parent, target="onnx-int8")
    before = _stored_artifacts()
    original = work.ConversionWork.step_quantize

    def cancel_then_quantize(self: work.ConversionWork) -> None:
        services.conversion_cancel(actor=owner, run=ConversionRun.objects.get(pk=run.pk))
        original(self)

    monkeypatch.setattr(work.ConversionWork, "step_quantize", cancel_then_quantize)
    assert work.conversion_execute(run.pk) == RunStatus.CANCELLED
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.child is None
    assert ModelVersion.objects.count() == 1 and _stored_artifacts() == before


def test_outputs_compare_is_allclose_and_reports_the_worst_output() -> None:
    parent = {"a": np.array([1.0, 2.0], np.float32), "b": np.array([100.0], np.float32)}
    same = recipes.outputs_compare(parent, {k: v.copy() for k, v in parent.items()}, 1e-4, 1e-3)
    assert same.within and same.max_abs_diff == 0.0
    off = recipes.outputs_compare(parent, {"a": parent["a"], "b": np.array([100.5], np.float32)}, 0.1, 0.001)
    assert not off.within and off.worst_output == "b" and off.max_abs_diff == pytest.approx(0.5)
    assert off.max_rel_diff == pytest.approx(0.005)
    assert "max abs diff 0.5" in off.message()
    relative = recipes.outputs_compare(parent, {"a": parent["a"], "b": np.array([100.5], np.float32)}, 0.0, 0.01)
    assert relative.within
    nan = recipes.outputs_compare(parent, {"a": np.array([np.nan, 2.0], np.float32), "b": parent["b"]}, 1, 1)
    assert not nan.within
    with pytest.raises(ValueError, match="output 'b' of the converted model is missing"):
        recipes.outputs_compare(parent, {"a": parent["a"]}, 1, 1)


def test_recipes_targets_per_format_and_options() -> None:
    assert recipes.targets_allowed("torchscript", "", gpu_available=False) == ["onnx", "onnx-int8"]
    assert recipes.targets_allowed("exported_program", "", gpu_available=True) == ["onnx", "onnx-int8", "fp16"]
    assert recipes.targets_allowed("onnx", "", gpu_available=True) == ["onnx-int8"]
    assert recipes.targets_allowed("huggingface", "fill-mask", gpu_available=True) == []
    assert "Hugging Face text versions cannot be converted" in recipes.target_refusal(
        "huggingface", "fill-mask", "onnx", gpu_available=False
    )
    assert recipes.options_parse("onnx-int8", {"per_channel": True, "opset": 18}) == {"per_channel": True, "opset": 18}
    with pytest.raises(InvalidInput, match="Unknown option 'per_channel' for onnx"):
        recipes.options_parse("onnx", {"per_channel": True})
    assert recipes.derivation_text("onnx-int8", {"opset": 18}) == (
        "converted to ONNX, int8 dynamic quantisation (opset=18)"
    )
    assert recipes.percentiles([float(n) for n in range(1, 101)]) == {"p50": 50.0, "p95": 95.0, "runs": 100}


URL = "/api/v1/models/iris/versions/{}/conversions/"


def test_rest_starts_lists_shows_and_cancels_with_clear_errors(
    ready_version: Any, owner: Any, outsider: Any, api: Any, monkeypatch: Any
) -> None:
    monkeypatch.setattr(work, "conversion_enqueue", lambda run_id: None)  # stays queued: nothing runs it
    monkeypatch.setattr("inference.conversions.services.conversion_enqueue", lambda run_id: None)
    parent = ready_version(example_input=EXAMPLE)
    client = api(owner)
    unknown = client.post(URL.format(1), {"target": "tflite"}, format="json")
    assert unknown.status_code == 400 and "Unknown target 'tflite'" in unknown.json()["error"]
    gpu = client.post(URL.format(1), {"target": "fp16"}, format="json")
    assert gpu.status_code == 409 and "GPU" in gpu.json()["error"]
    options = client.post(URL.format(1), {"target": "onnx", "options": {"opset": "x"}}, format="json")
    assert options.status_code == 400 and "opset" in options.json()["error"]
    assert client.post(URL.format(9), {"target": "onnx"}, format="json").status_code == 404
    assert api(outsider).post(URL.format(1), {"target": "onnx"}, format="json").status_code == 404

    started = client.post(URL.format(1), {"target": "onnx-int8", "options": {"per_channel": True}}, format="json")
    assert started.status_code == 201, started.json()
    body = started.json()
    assert (body["status"], body["target"], body["options"], body["total_rows"]) == (
        "queued", "onnx-int8", {"per_channel": True}, 5)  # fmt: skip
    assert body["steps"] == ["export", "quantize", "compare", "validate", "store"]
    assert [run["id"] for run in client.get(URL.format(1)).json()] == [body["id"]]
    assert client.get("/api/v1/conversions/").json()["results"][0]["id"] == body["id"]
    assert api(outsider).get(f"/api/v1/conversions/{body['id']}/").status_code == 404
    cancelled = client.post(f"/api/v1/conversions/{body['id']}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/v1/conversions/{body['id']}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.json()["error"]
    lineage = client.get("/api/v1/models/iris/versions/1/lineage/").json()
    assert lineage == {"chain": [{"version": 1, "format": "torchscript", "status": "ready", "derivation": "",
                                  "recipe": {}, "conversion": ""}], "children": []}  # fmt: skip
    assert parent.conversions.count() == 1


def test_version_page_offers_targets_only_to_uploaders(ready_version: Any, owner: Any, member: Any, client: Any
                                                       ) -> None:  # fmt: skip
    ready_version()
    role_grant(actor=owner, model=ModelVersion.objects.get().model, username=member.username, role="predictor")
    client.force_login(member)
    assert "conversion-form" not in client.get("/models/iris/versions/1/").content.decode()
    client.force_login(owner)
    page = client.get("/models/iris/versions/1/").content.decode()
    assert 'id="conversion-form"' in page and '<option value="onnx-int8">' in page and "fp16" not in page


def test_version_comparison_shows_what_the_conversion_measured(ready_version: Any, owner: Any, client: Any) -> None:
    run = convert(owner, ready_version(example_input=EXAMPLE), "onnx")
    client.force_login(owner)
    page = client.get("/models/iris/versions/diff/?v=1&v=2").content.decode()
    assert f"conversion {run.short_id} · latency p50 ms" in page
    assert f"conversion {run.short_id} · max abs diff" in page
    child_page = client.get("/models/iris/versions/2/").content.decode()
    assert 'id="conversion-compare"' in child_page and "latency p95 (ms, same host, same example)" in child_page
    assert "conversion " + run.short_id + " · latency" not in child_page.split('id="conversion-compare"')[1]


def test_command_converts_and_waits(ready_version: Any, owner: Any, celery_eager: Any) -> None:
    ready_version(example_input=EXAMPLE)
    out = StringIO()
    call_command("convert_version", "iris", "1", "--target", "onnx-int8", "--user", "olivia", "--wait", stdout=out)
    assert "Converted: iris v2 (max abs diff" in out.getvalue()
    with pytest.raises(CommandError, match="already a onnx-int8 conversion"):
        call_command("convert_version", "iris", "2", "--target", "onnx", "--user", "olivia")
    with pytest.raises(CommandError, match="--options is not valid JSON"):
        call_command("convert_version", "iris", "1", "--target", "onnx", "--user", "olivia", "--options", "{")

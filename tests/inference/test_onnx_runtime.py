"""The ONNX Runtime format: graph reading, the runtime, the worker cache and sandboxed hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from core.datatypes import NUMPY_DTYPES
from inference import validation
from inference.cache import model_cache, model_source
from inference.runtimes import ModelLoadError, runtime_for
from inference.runtimes.onnx import CPU, CUDA, OnnxRuntime, providers_for
from inference.sandbox.client import SandboxedModel, probe
from inference.services import ProbeFailed
from registry.models import VersionStatus
from registry.onnx_graph import onnx_read
from tests.conftest import upload_file
from tests.onnx_graphs import IRIS_INPUT, IRIS_OUTPUT, NUMERIC_TYPES, external_model, identity_model, relu_model

CPU_DEVICE = torch.device("cpu")


def iris_expected(model_files: dict[str, Path], features: np.ndarray) -> np.ndarray:
    module = torch.jit.load(str(model_files["torchscript"]))
    with torch.inference_mode():
        return module(torch.from_numpy(features)).numpy()


def test_every_numeric_datatype_is_read_from_the_graph_and_served(tmp_path):
    model = identity_model(NUMERIC_TYPES, ["batch", 2])
    graph = onnx_read(model.SerializeToString())
    assert [spec["datatype"] for spec in graph.inputs] == list(NUMERIC_TYPES)
    assert {tuple(spec["shape"]) for spec in graph.inputs + graph.outputs} == {(-1, 2)}
    path = tmp_path / "identity.onnx"
    onnx.save(model, path)
    runtime = OnnxRuntime.load(path, CPU_DEVICE)
    arrays = [(np.arange(6).reshape(3, 2) % 2).astype(NUMPY_DTYPES[datatype]) for datatype in NUMERIC_TYPES]
    outputs = runtime.predict([torch.from_numpy(array) for array in arrays])
    assert [name for name, _ in outputs] == [f"y_{datatype.lower()}" for datatype in NUMERIC_TYPES]
    for array, (_, tensor) in zip(arrays, outputs, strict=True):
        assert tensor.numpy().dtype == array.dtype and np.array_equal(tensor.numpy(), array)


def test_symbolic_unknown_and_fixed_dimensions(tmp_path):
    model = identity_model({"FP32": onnx.TensorProto.FLOAT}, ["batch", None, 7])
    assert onnx_read(model.SerializeToString()).inputs == [{"name": "x_fp32", "datatype": "FP32", "shape": [-1, -1, 7]}]


def test_graph_metadata_and_versions_are_read(tmp_path):
    model = relu_model()
    model.doc_string, model.producer_name, model.producer_version = "Clips.", "maker", "1.2"
    onnx.helper.set_model_props(model, {"author": "search", "labels": "a,b"})
    graph = onnx_read(model.SerializeToString())
    assert graph.describe() == {"ir_version": 8, "opset": 17, "opsets": {"": 17}, "producer": "maker 1.2",
                                "doc_string": "Clips.", "metadata": {"author": "search", "labels": "a,b"}}  # fmt: skip


def test_the_exported_mlp_predicts_like_torch(onnx_files, model_files):
    runtime = runtime_for("onnx").load(onnx_files["onnx"], CPU_DEVICE)
    assert isinstance(runtime, OnnxRuntime)
    features = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    [(name, tensor)] = runtime.predict([torch.from_numpy(features)])
    assert name == IRIS_OUTPUT
    np.testing.assert_allclose(tensor.numpy(), iris_expected(model_files, features), rtol=1e-5, atol=1e-6)
    assert runtime.parameter_count() == 4 * 8 + 8 + 8 * 3 + 3
    assert runtime.memory_bytes() == 4 * runtime.parameter_count()


def test_sessions_use_the_workers_torch_threads(onnx_files):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        runtime = OnnxRuntime.load(onnx_files["onnx"], CPU_DEVICE)
        options = runtime.session.get_session_options()
        assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    finally:
        torch.set_num_threads(threads)


def test_cuda_provider_only_on_a_gpu_device_when_the_package_offers_it(monkeypatch):
    assert providers_for(CPU_DEVICE) == [CPU]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    assert providers_for(torch.device("cuda")) == [CPU]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    assert providers_for(torch.device("cuda")) == [CUDA, CPU]
    assert providers_for(CPU_DEVICE) == [CPU]


def test_files_onnxruntime_refuses_are_load_errors_that_say_why(tmp_path, model_files):
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        OnnxRuntime.load(model_files["torchscript"], CPU_DEVICE)
    future = tmp_path / "future.onnx"
    onnx.save(relu_model(opset=30), future)
    with pytest.raises(ModelLoadError, match=r"imports opset 30 .* \(it supports up to opset \d+\)"):
        OnnxRuntime.load(future, CPU_DEVICE)
    broken = relu_model()
    broken.graph.node[0].op_type = "NoSuchOperator"
    onnx.save(broken, tmp_path / "broken.onnx")
    with pytest.raises(ModelLoadError, match=r"could not load the model: .*NoSuchOperator"):
        OnnxRuntime.load(tmp_path / "broken.onnx", CPU_DEVICE)


@pytest.mark.django_db
def test_the_worker_cache_serves_an_onnx_version_in_batches(owner, registered_model, onnx_files, model_files):
    version = upload_file(owner, registered_model, onnx_files["onnx_zip"], signature=None, enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.READY
    model_cache().reset()
    try:
        loaded = model_cache().get(version.pk)
        assert loaded.batching and loaded.size_bytes == 4 * (4 * 8 + 8 + 8 * 3 + 3)
        # The serving loop stacks concurrent requests into one forward of the whole batch.
        features = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
        [(name, datatype, array)] = loaded.predict({IRIS_INPUT: features})
        assert (name, datatype, array.shape) == (IRIS_OUTPUT, "FP32", (32, 3))
        np.testing.assert_allclose(array, iris_expected(model_files, features), rtol=1e-5, atol=1e-6)
    finally:
        model_cache().reset()


@pytest.fixture
def sandboxed(settings: Any) -> None:
    settings.MODEL_SANDBOX = "require"


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["onnx", "onnx_tar"])
def test_validation_and_predictions_in_a_sandboxed_host(sandboxed, owner, registered_model, onnx_files, key):
    version = upload_file(owner, registered_model, onnx_files[key], signature=None, format="onnx", enqueue=False)
    assert validation.version_validate(version.pk) == VersionStatus.READY
    version.refresh_from_db()
    assert version.validation["provider"] == CPU
    model = SandboxedModel(model_source(version.pk))
    try:
        features = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
        [(_, datatype, array)] = model.predict({IRIS_INPUT: features})
        session = onnxruntime.InferenceSession(str(onnx_files["onnx"]), providers=[CPU])
        assert datatype == "FP32"
        np.testing.assert_allclose(array, session.run(None, {IRIS_INPUT: features})[0], rtol=1e-6)
    finally:
        model.close()


@pytest.mark.django_db
def test_external_data_outside_the_model_is_not_read_in_the_sandbox_past_the_upload_checks(
    sandboxed, settings, tmp_path
):
    secret = Path(settings.DATA_DIR) / "secret_key"
    secret.write_bytes(b"s3cr3t-key-0123")
    folder = tmp_path / "model"
    folder.mkdir()
    for location in (str(secret), "../../" + "../" * 10 + str(secret).lstrip("/")):
        onnx.save(external_model(location), folder / "model.onnx")
        signature = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}], "outputs": []}
        with pytest.raises(ProbeFailed) as refused:
            probe(folder, "onnx", signature, None, None)
        assert "s3cr3t" not in str(refused.value)


def test_a_gpu_worker_without_the_cuda_provider_runs_and_reports_the_cpu(onnx_files, monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    runtime = OnnxRuntime.load(onnx_files["onnx"], torch.device("cuda"))
    assert runtime.provider == CPU and runtime.device == CPU_DEVICE

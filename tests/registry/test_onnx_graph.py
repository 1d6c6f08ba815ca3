"""The ONNX structure reader: weights skipped, damaged bytes refused with NotOnnx and nothing else."""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from registry.onnx_graph import NotOnnx, onnx_read
from tests.onnx_graphs import graph_model, relu_model


def test_a_large_model_is_read_without_its_weights_quickly():
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(20_000)]
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [8_000_000], np.zeros(8_000_000, np.float32).tobytes(), raw=True
    )
    x = helper.make_tensor_value_info("t0", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("t20000", TensorProto.FLOAT, ["batch", 3])
    data = graph_model([x], [y], nodes, initializers=[weights]).SerializeToString()
    started = time.perf_counter()
    graph = onnx_read(data)
    assert time.perf_counter() - started < 5  # ~0.1 s here: the 32 MB of weights are skipped, not parsed
    assert graph.parameter_count == 8_000_000 and graph.weight_bytes == 32_000_000
    assert graph.inputs == [{"name": "t0", "datatype": "FP32", "shape": [-1, 3]}]


def test_truncated_and_damaged_models_raise_not_onnx_only():
    data = relu_model().SerializeToString()
    rng = np.random.default_rng(0)
    for i in range(600):
        damaged = bytearray(data)
        if i % 2:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        else:
            for _ in range(3):
                damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
        with contextlib.suppress(NotOnnx):  # any other exception fails the test
            onnx_read(bytes(damaged))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [(b"", "empty"), (b"\x08\x07", "holds no graph"), (b"hello world, not a model", "not ONNX")],
)
def test_what_is_not_a_model_says_why(data, fragment):
    with pytest.raises(NotOnnx, match=fragment):
        onnx_read(data)

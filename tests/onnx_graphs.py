"""Small ONNX models built for the tests: a trained iris MLP exported by torch, and tiny onnx.helper graphs."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import onnx
import torch
from onnx import TensorProto, helper

from portal import demo

IRIS_INPUT, IRIS_OUTPUT = "features", "scores"
# Every numeric datatype the torch formats serve, as ONNX element types.
NUMERIC_TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
}  # fmt: skip


def iris_onnx(root: Path) -> dict[str, Path]:
    """The iris MLP (4 → 8 → 3) as one .onnx file, and with external data as a .zip and a .tar.gz."""
    net = demo.iris_classifier(hidden=8, steps=5)
    inputs, outputs = [IRIS_INPUT], [IRIS_OUTPUT]
    single = demo.save_onnx(net, (torch.randn(2, 4),), root / "iris.onnx", input_names=inputs, output_names=outputs)
    folder = root / "iris-external"
    folder.mkdir()
    demo.save_onnx(net, (torch.randn(2, 4),), folder / "iris.onnx", input_names=inputs, output_names=outputs,
                   external_data=True)  # fmt: skip
    files = {"onnx": single, "onnx_zip": root / "iris-external.zip", "onnx_tar": root / "iris-external.tar.gz"}
    with zipfile.ZipFile(files["onnx_zip"], "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"iris/{path.name}")
    with tarfile.open(files["onnx_tar"], "w:gz") as archive:
        archive.add(folder, arcname="iris")
    return files


def graph_model(
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    nodes: list[onnx.NodeProto],
    *,
    opset: int = 17,
    initializers: list[onnx.TensorProto] | None = None,
    **fields: object,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **fields)
    model.ir_version = 8
    return model


def identity_model(datatypes: Mapping[str, int], dims: list[int | str | None]) -> onnx.ModelProto:
    """One Identity per datatype: input `x_<type>` → output `y_<type>`, each of shape `dims`."""
    inputs, outputs, nodes = [], [], []
    for name, element in datatypes.items():
        inputs.append(helper.make_tensor_value_info(f"x_{name.lower()}", element, dims))
        outputs.append(helper.make_tensor_value_info(f"y_{name.lower()}", element, dims))
        nodes.append(helper.make_node("Identity", [f"x_{name.lower()}"], [f"y_{name.lower()}"]))
    return graph_model(inputs, outputs, nodes)


def relu_model(opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    return graph_model([x], [y], [helper.make_node("Relu", ["x"], ["y"])], opset=opset)


def external_model(location: str) -> onnx.ModelProto:
    """y = x + w, where w (3 floats) is external data at `location` (as written, unchecked)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return graph_model([x], [y], [helper.make_node("Add", ["x", "w"], ["y"])], initializers=[weight])


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def tar_of(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path

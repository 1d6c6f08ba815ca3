"""Reading an ONNX model's structure without loading it: what the upload checks and the signature come from.

An .onnx file is a protobuf ModelProto. It is walked here field by field over the bytes
(an mmap of the uploaded file), descending only into the messages that matter: the
opsets, the metadata, the graph's inputs and outputs, and every tensor's external-data
reference (initializers, constants and subgraphs included). Weights are skipped by their
length, never copied, so a 2 GB model costs no memory; onnx and onnxruntime are not
imported (model code runs only in sandboxed hosts). A file that is not a well-formed
ModelProto raises NotOnnx with the reason.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

# Protobuf wire types.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# ONNX TensorProto.DataType → Open Inference Protocol datatype (bfloat16, float8, int4,
# complex and string tensors have no OIP counterpart among the tensor datatypes served).
ONNX_DATATYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
                  9: "BOOL", 10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64"}  # fmt: skip
ONNX_TYPE_NAMES = {0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16",
                   17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ",
                   21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1"}  # fmt: skip
ELEMENT_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
# The default operator domain, under both of its names.
DEFAULT_DOMAINS = ("", "ai.onnx")
# Subgraphs nest (If/Loop bodies); a file nesting deeper than this is refused, not recursed into.
MAX_DEPTH = 32
# Fields visited in all: a real model has thousands of nodes, not millions of empty ones.
MAX_FIELDS = 5_000_000
MAX_METADATA_CHARS = 2000


class NotOnnx(ValueError):
    """The bytes are not a well-formed ONNX ModelProto; the message says why."""


class UnservableOnnx(NotOnnx):
    """A well-formed ONNX model whose inputs or outputs the portal cannot serve (sequences, bfloat16, strings…)."""


@dataclass
class OnnxGraph:
    """What an .onnx file declares: versions, opsets, metadata, signature and external-data files."""

    ir_version: int = 0
    opsets: dict[str, int] = field(default_factory=dict)
    producer: str = ""
    doc_string: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # Relative paths of the external-data files the tensors name (empty: all weights inside).
    external: set[str] = field(default_factory=set)
    parameter_count: int = 0
    weight_bytes: int = 0

    @property
    def opset(self) -> int:
        """The default (ai.onnx) domain's opset version; 0 when the model imports none."""
        return max((self.opsets.get(domain, 0) for domain in DEFAULT_DOMAINS), default=0)

    def describe(self) -> dict[str, object]:
        """JSON-safe figures for a version's validation record and page."""
        return {
            "ir_version": self.ir_version,
            "opset": self.opset,
            "opsets": dict(self.opsets),
            "producer": self.producer,
            "doc_string": self.doc_string,
            "metadata": dict(self.metadata),
        }


class _Walk:
    """A cursor over a serialized message: fields as (number, wire type, value or (start, end))."""

    def __init__(self, data: bytes | mmap.mmap | memoryview) -> None:
        self.data = data
        self.visited = 0

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        data = self.data
        while True:
            if pos >= end:
                raise NotOnnx("a field runs past the end of its message (the file is truncated or not ONNX)")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise NotOnnx("a number is longer than 10 bytes (the file is not ONNX)")

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field number, wire type, value or start, end) of each field between start and end."""
        pos = start
        while pos < end:
            key, pos = self.varint(pos, end)
            number, wire = key >> 3, key & 7
            self.visited += 1
            if number == 0 or self.visited > MAX_FIELDS:
                raise NotOnnx("the file holds an invalid field (it is not an ONNX model)")
            if wire == VARINT:
                value, pos = self.varint(pos, end)
                yield number, wire, value, pos
            elif wire == LENGTH:
                length, pos = self.varint(pos, end)
                if pos + length > end:
                    raise NotOnnx("a field runs past the end of its message (the file is truncated or not ONNX)")
                yield number, wire, pos, pos + length
                pos += length
            elif wire in (FIXED64, FIXED32):
                pos += 8 if wire == FIXED64 else 4
                if pos > end:
                    raise NotOnnx("a field runs past the end of its message (the file is truncated or not ONNX)")
                yield number, wire, pos, pos
            else:
                raise NotOnnx(f"the file uses protobuf wire type {wire}, which ONNX never writes (it is not ONNX)")

    def text(self, start: int, end: int) -> str:
        try:
            return bytes(self.data[start:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise NotOnnx("a name in the file is not UTF-8 text (it is not an ONNX model)") from None

    def packed(self, wire: int, value: int, end: int) -> list[int]:
        """A repeated int field: one varint, or a packed run of them."""
        if wire == VARINT:
            return [value]
        numbers, pos = [], value
        while pos < end:
            number, pos = self.varint(pos, end)
            numbers.append(number)
        return numbers


def _expect(wire: int, want: int, what: str) -> None:
    if wire != want:
        raise NotOnnx(f"{what} has the wrong protobuf type (the file is not an ONNX model)")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _Reader:
    """Walks one ModelProto, filling an OnnxGraph."""

    def __init__(self, data: bytes | mmap.mmap | memoryview) -> None:
        self.walk = _Walk(data)
        self.graph = OnnxGraph()

    def model(self, end: int) -> OnnxGraph:
        graph = self.graph
        has_graph = False
        walk = self.walk
        for number, wire, a, b in walk.fields(0, end):
            if number == 1:
                _expect(wire, VARINT, "ir_version")
                graph.ir_version = a
            elif number in (2, 3):
                _expect(wire, LENGTH, "producer")
                graph.producer = " ".join(filter(None, [graph.producer, walk.text(a, b)]))
            elif number == 6:
                _expect(wire, LENGTH, "doc_string")
                graph.doc_string = walk.text(a, b)[:MAX_METADATA_CHARS]
            elif number == 7:
                _expect(wire, LENGTH, "graph")
                has_graph = True
                self.graph_proto(a, b, depth=0, main=True)
            elif number == 8:
                _expect(wire, LENGTH, "opset_import")
                domain, version = self.opset_id(a, b)
                graph.opsets[domain] = version
            elif number == 14:
                _expect(wire, LENGTH, "metadata_props")
                key, value = self.string_pair(a, b)
                if len(graph.metadata) < 100:
                    graph.metadata[key[:200]] = value[:MAX_METADATA_CHARS]
            elif number == 25:
                _expect(wire, LENGTH, "functions")
                self.nodes_of(a, b, node_field=7, depth=1)
            elif number == 20:
                _expect(wire, LENGTH, "training_info")
                for sub, sub_wire, c, d in walk.fields(a, b):
                    if sub in (1, 2) and sub_wire == LENGTH:
                        self.graph_proto(c, d, depth=1, main=False)
        if not 1 <= graph.ir_version <= 100:
            raise NotOnnx("it has no ONNX IR version (a ModelProto starts with one): the file is not an ONNX model")
        if not has_graph:
            raise NotOnnx("it holds no graph: the file is not an ONNX model")
        if graph.ir_version >= 3 and not graph.opsets:
            raise NotOnnx("it imports no operator set (opset_import is empty): the file is not a usable ONNX model")
        return graph

    def opset_id(self, start: int, end: int) -> tuple[str, int]:
        domain, version = "", 0
        for number, wire, a, b in self.walk.fields(start, end):
            if number == 1 and wire == LENGTH:
                domain = self.walk.text(a, b)
            elif number == 2 and wire == VARINT:
                version = _signed(a)
        return domain, version

    def string_pair(self, start: int, end: int) -> tuple[str, str]:
        key = value = ""
        for number, wire, a, b in self.walk.fields(start, end):
            if number == 1 and wire == LENGTH:
                key = self.walk.text(a, b)
            elif number == 2 and wire == LENGTH:
                value = self.walk.text(a, b)
        return key, value

    def graph_proto(self, start: int, end: int, *, depth: int, main: bool) -> None:
        if depth > MAX_DEPTH:
            raise NotOnnx(f"its subgraphs nest more than {MAX_DEPTH} deep; it was refused")
        inputs, outputs, initializers = [], [], set()
        for number, wire, a, b in self.walk.fields(start, end):
            if wire != LENGTH:
                continue
            if number == 1:
                self.node(a, b, depth)
            elif number == 5:
                initializers.add(self.tensor(a, b, count=main))
            elif number == 15:
                for sub, sub_wire, c, d in self.walk.fields(a, b):
                    if sub in (1, 2) and sub_wire == LENGTH:
                        self.tensor(c, d, count=main and sub == 1)
            elif number == 11 and main:
                inputs.append((a, b))
            elif number == 12 and main:
                outputs.append((a, b))
        if main:
            # Before IR 4, initializers were listed among the inputs too: those are weights, not inputs.
            specs = [self.value_info(a, b, "input") for a, b in inputs]
            self.graph.inputs = [spec for spec in specs if spec["name"] not in initializers]
            self.graph.outputs = [self.value_info(a, b, "output") for a, b in outputs]

    def nodes_of(self, start: int, end: int, *, node_field: int, depth: int) -> None:
        for number, wire, a, b in self.walk.fields(start, end):
            if number == node_field and wire == LENGTH:
                self.node(a, b, depth)

    def node(self, start: int, end: int, depth: int) -> None:
        for number, wire, a, b in self.walk.fields(start, end):
            if number == 5 and wire == LENGTH:
                self.attribute(a, b, depth)

    def attribute(self, start: int, end: int, depth: int) -> None:
        for number, wire, a, b in self.walk.fields(start, end):
            if wire != LENGTH:
                continue
            if number in (5, 10):  # t, tensors
                self.tensor(a, b, count=False)
            elif number in (6, 11):  # g, graphs
                self.graph_proto(a, b, depth=depth + 1, main=False)
            elif number in (22, 23):  # sparse_tensor(s): values and indices
                for sub, sub_wire, c, d in self.walk.fields(a, b):
                    if sub in (1, 2) and sub_wire == LENGTH:
                        self.tensor(c, d, count=False)

    def tensor(self, start: int, end: int, *, count: bool) -> str:
        """A TensorProto's name; its external-data location is recorded, its data skipped."""
        name, dims, data_type, external = "", [], 0, False
        location = None
        for number, wire, a, b in self.walk.fields(start, end):
            if number == 1:
                dims += [_signed(d) for d in self.walk.packed(wire, a, b)]
            elif number == 2 and wire == VARINT:
                data_type = a
            elif number == 8 and wire == LENGTH:
                name = self.walk.text(a, b)
            elif number == 13 and wire == LENGTH:
                key, value = self.string_pair(a, b)
                if key == "location":
                    location = value
            elif number == 14 and wire == VARINT:
                external = a == 1
        if external or location is not None:
            if not location:
                raise NotOnnx(f"tensor {name!r} keeps its data outside the file but names no location")
            self.graph.external.add(location)
        if count:
            elements = 1
            for dim in dims:
                elements *= max(dim, 0)
            self.graph.parameter_count += elements
            self.graph.weight_bytes += elements * ELEMENT_BYTES.get(data_type, 4)
        return name

    def value_info(self, start: int, end: int, kind: str) -> dict[str, Any]:
        """An input or output as {"name", "datatype", "shape"} (symbolic and unknown dims are -1)."""
        name, tensor_type = "", None
        for number, wire, a, b in self.walk.fields(start, end):
            if number == 1 and wire == LENGTH:
                name = self.walk.text(a, b)
            elif number == 2 and wire == LENGTH:
                for sub, sub_wire, c, d in self.walk.fields(a, b):
                    if sub == 1 and sub_wire == LENGTH:  # tensor_type
                        tensor_type = (c, d)
                    elif sub_wire == LENGTH:
                        raise UnservableOnnx(
                            f"{kind} {name or '?'} is a sequence, map or optional value; only tensors can be served"
                        )
        if tensor_type is None:
            raise NotOnnx(f"{kind} {name or '?'} has no tensor type")
        elem_type, shape = 0, None
        for number, wire, a, b in self.walk.fields(*tensor_type):
            if number == 1 and wire == VARINT:
                elem_type = a
            elif number == 2 and wire == LENGTH:
                shape = self.shape(a, b)
        if elem_type not in ONNX_DATATYPES:
            type_name = ONNX_TYPE_NAMES.get(elem_type, str(elem_type))
            raise UnservableOnnx(
                f"{kind} {name!r} is a {type_name} tensor, which the Open Inference Protocol cannot carry here; "
                f"served types are {', '.join(sorted(set(ONNX_DATATYPES.values())))}"
            )
        return {"name": name, "datatype": ONNX_DATATYPES[elem_type], "shape": shape}

    def shape(self, start: int, end: int) -> list[int]:
        dims = []
        for number, wire, a, b in self.walk.fields(start, end):
            if number != 1 or wire != LENGTH:
                continue
            size = -1
            for sub, sub_wire, c, _ in self.walk.fields(a, b):
                if sub == 1 and sub_wire == VARINT:
                    size = _signed(c) if _signed(c) >= 0 else -1
            dims.append(size)
        return dims


def onnx_read(data: bytes | mmap.mmap | memoryview) -> OnnxGraph:
    """The structure of a serialized ModelProto; NotOnnx when it is not one."""
    if len(data) == 0:
        raise NotOnnx("the file is empty")
    try:
        return _Reader(data).model(len(data))
    except RecursionError:
        raise NotOnnx("its messages nest too deep; it was refused") from None


def onnx_read_stream(stream: IO[bytes]) -> OnnxGraph:
    """onnx_read over an open file (mapped, not read into memory, when it is a real file)."""
    stream.seek(0)
    try:
        fileno = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fileno = -1
    try:
        if fileno >= 0:
            try:
                mapped = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
            except ValueError:  # an empty file cannot be mapped
                raise NotOnnx("the file is empty") from None
            with mapped:
                return onnx_read(mapped)
        return onnx_read(stream.read())
    finally:
        stream.seek(0)


__all__ = ["NotOnnx", "OnnxGraph", "UnservableOnnx", "onnx_read", "onnx_read_stream"]

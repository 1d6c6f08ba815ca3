"""Uploaded ONNX models: a single .onnx file, or an archive of one .onnx and its external-data files.

The checks read structure only (registry.onnx_graph): the file is a ModelProto, its inputs
and outputs are tensors the protocol carries, a single file keeps all its weights inside,
and an archive holds exactly one .onnx whose external data all lie inside the archive.
They run at upload and again when a worker unpacks the stored archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from core.errors import InvalidInput
from registry import signatures
from registry.archives import MAX_READ_BYTES, ArchiveListing, archive_scan
from registry.onnx_graph import NotOnnx, OnnxGraph, UnservableOnnx, onnx_read, onnx_read_stream

HINT = (
    "Save it with torch.onnx.export(...).save('model.onnx') or onnx.save(model, 'model.onnx'); a model with "
    "external data is its .onnx file and the data files packed together in one .zip or .tar.gz."
)
# How a refusal of bytes that are not ONNX at all begins (artifacts tells it from other refusals).
NOT_ONNX = "The file is not an ONNX model"
# The .onnx of an archive is read into memory to be checked: its weights belong in the data files.
MAX_ARCHIVED_GRAPH_BYTES = MAX_READ_BYTES


@dataclass(frozen=True)
class OnnxUpload:
    """An ONNX upload that passed the checks: its graph and, for an archive, its kind and the .onnx's name."""

    graph: OnnxGraph
    archive_kind: str | None = None
    graph_name: str = ""


def _refuse(message: str) -> InvalidInput:
    return InvalidInput(message, field="file")


def onnx_file_inspect(stream: IO[bytes]) -> OnnxUpload:
    """Check a single uploaded .onnx file; InvalidInput (400) names what is wrong."""
    try:
        graph = onnx_read_stream(stream)
    except UnservableOnnx as exc:
        raise _refuse(f"The ONNX model cannot be served: {exc}.") from None
    except NotOnnx as exc:
        raise _refuse(f"{NOT_ONNX}: {exc}. {HINT}") from None
    if graph.external:
        names = ", ".join(sorted(graph.external)[:5])
        raise _refuse(
            f"The .onnx file keeps weights in external data files ({names}) that were not uploaded with it; "
            "upload the .onnx and its data files together in one .zip or .tar.gz."
        )
    _graph_check(graph)
    return OnnxUpload(graph)


def onnx_wanted(name: str) -> int:
    """What an archive scan keeps: the head of each .onnx file (enough to tell it is too large)."""
    return MAX_ARCHIVED_GRAPH_BYTES + 1 if name.lower().endswith(".onnx") else 0


def onnx_archive_inspect(stream: IO[bytes]) -> OnnxUpload:
    """Scan an uploaded .zip / .tar.gz with the archive checks and check the ONNX model it holds."""
    return onnx_listing_check(archive_scan(stream, onnx_wanted))


def onnx_listing_check(listing: ArchiveListing) -> OnnxUpload:
    """The one .onnx of a scanned (or unpacked) archive, its graph checked and its external data present."""
    graphs = sorted(name for name in listing.files if name.lower().endswith(".onnx"))
    if not graphs:
        raise _refuse(f"The archive holds no .onnx file. {HINT}")
    if len(graphs) > 1:
        raise _refuse(
            f"The archive holds {len(graphs)} .onnx files ({', '.join(graphs[:5])}); an ONNX archive holds one "
            "model and its external-data files."
        )
    name = graphs[0]
    if listing.files[name] > MAX_ARCHIVED_GRAPH_BYTES:
        raise _refuse(
            f"{name!r} is larger than {MAX_ARCHIVED_GRAPH_BYTES // 1024**2} MiB inside the archive; keep its weights "
            "in external data (onnx.save(..., save_as_external_data=True)) or upload the .onnx file alone."
        )
    try:
        graph = onnx_read(listing.contents[name])
    except UnservableOnnx as exc:
        raise _refuse(f"The ONNX model {name!r} cannot be served: {exc}.") from None
    except NotOnnx as exc:
        raise _refuse(f"{name!r} in the archive is not an ONNX model: {exc}. {HINT}") from None
    folder = PurePosixPath(name).parent
    for location in sorted(graph.external):
        target = _external_target(folder, location)
        if target not in listing.files:
            raise _refuse(
                f"{name!r} keeps weights in {location!r}, which the archive does not hold beside it; "
                "pack the data files the model names with it."
            )
    _graph_check(graph)
    return OnnxUpload(graph, archive_kind=listing.kind, graph_name=name)


def _external_target(folder: PurePosixPath, location: str) -> str:
    """The archive member an external-data location names, refused when it leaves the model's folder."""
    path = PurePosixPath(location.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (len(location) > 1 and location[1] == ":") or "\x00" in location:
        raise _refuse(
            f"The model keeps weights in {location!r}, a path outside the archive (absolute or with '..'); "
            "external data must lie beside the .onnx file. It was refused."
        )
    return (folder / path).as_posix().removeprefix("./")


def _graph_check(graph: OnnxGraph) -> None:
    """Inputs and outputs a signature can hold (names the protocol accepts, at least one input)."""
    if not graph.inputs:
        raise _refuse("The ONNX model takes no input (every graph input is a weight); there is nothing to serve.")
    if not graph.outputs:
        raise _refuse("The ONNX model has no output.")
    for kind, specs in (("input", graph.inputs), ("output", graph.outputs)):
        for spec in specs:
            name = str(spec["name"])
            if not signatures.TENSOR_NAME_RE.match(name):
                raise _refuse(
                    f"The ONNX model's {kind} {name!r} has a name the Open Inference Protocol does not accept here "
                    "(letters, digits and _ . : / -, starting with a letter or _); name it when exporting "
                    "(input_names=/output_names=)."
                )
            if spec["shape"] is None and kind == "input":
                raise _refuse(f"The ONNX model's input {name!r} has no shape (not even a rank); export it with one.")


def onnx_signature(graph: OnnxGraph, declared: Any) -> dict[str, list[dict[str, Any]]]:
    """The signature read from the graph, refined by a declared one when given.

    A declared signature must name the graph's inputs (and outputs, when it lists them)
    with the same datatypes and ranks; it may fix a dimension the graph leaves open (-1).
    Inputs keep the graph's order, which is the order the runtime feeds them in.
    Outputs whose rank the graph does not give are left to validation to find.
    """
    inputs = [_spec(spec) for spec in graph.inputs]
    outputs = [_spec(spec) for spec in graph.outputs]
    if any(spec["shape"] is None for spec in outputs):
        outputs = []
    if declared in (None, "", {}):
        return {"inputs": inputs, "outputs": outputs}
    parsed = signatures.signature_parse(declared)
    return {
        "inputs": _refine(inputs, parsed["inputs"], "inputs"),
        "outputs": _refine(outputs, parsed["outputs"], "outputs") if parsed["outputs"] and outputs else outputs,
    }


def _spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {"name": spec["name"], "datatype": spec["datatype"], "shape": spec["shape"]}


def _refine(graph_specs: list[dict[str, Any]], declared: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    by_name = {spec["name"]: spec for spec in declared}
    names = [spec["name"] for spec in graph_specs]
    if set(by_name) != set(names):
        raise InvalidInput(
            f"The signature's {key} {sorted(by_name)} differ from the ONNX graph's {names}; leave the signature out "
            "to use the graph's, or name the same tensors.",
            field="signature",
        )
    refined = []
    for spec in graph_specs:
        want = by_name[spec["name"]]
        if want["datatype"] != spec["datatype"]:
            raise InvalidInput(
                f"The signature says {spec['name']} is {want['datatype']}; the ONNX graph says {spec['datatype']}.",
                field="signature",
            )
        shape = spec["shape"]
        if len(want["shape"]) != len(shape) or any(
            -1 not in (w, g) and w != g for w, g in zip(want["shape"], shape, strict=True)
        ):
            raise InvalidInput(
                f"The signature gives {spec['name']} the shape {want['shape']}; the ONNX graph says {shape} "
                "(-1: any size).",
                field="signature",
            )
        refined.append({**spec, "shape": [g if w == -1 else w for w, g in zip(want["shape"], shape, strict=True)]})
    return refined


__all__ = [
    "MAX_ARCHIVED_GRAPH_BYTES",
    "NOT_ONNX",
    "OnnxUpload",
    "onnx_archive_inspect",
    "onnx_file_inspect",
    "onnx_listing_check",
    "onnx_signature",
    "onnx_wanted",
]

"""Reading and checking labelled evaluation data against a model version's signature.

`.npz`: one array per model input (named like the input) plus `labels` (classification:
class indices, or class names when the version has labels) or `targets` (regression).
CSV (tabular models with one `[-1, F]` input): a header, F feature columns in input order
and a `label` or `target` column. Everything is checked before anything is written.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from core.datatypes import NUMPY_DTYPES
from core.errors import InvalidInput, PayloadTooLarge
from inference.runs.arrays import FILE, batched_layout, inputs_checked, npz_arrays
from monitoring.models import DatasetFormat, TaskType

TARGET_KEYS = {"labels": TaskType.CLASSIFICATION, "targets": TaskType.REGRESSION}
CSV_TARGETS = {"label": TaskType.CLASSIFICATION, "labels": TaskType.CLASSIFICATION,
               "target": TaskType.REGRESSION, "targets": TaskType.REGRESSION}  # fmt: skip


@dataclass
class Labelled:
    """Checked evaluation data: inputs by name (rows first) and the labels or targets."""

    source_format: str
    task: str
    inputs: dict[str, np.ndarray]
    target: np.ndarray
    num_classes: int | None

    @property
    def rows(self) -> int:
        return len(self.target)

    def arrays(self) -> dict[str, np.ndarray]:
        key = "labels" if self.task == TaskType.CLASSIFICATION else "targets"
        return {**self.inputs, key: self.target}


def dataset_limit() -> int:
    return int(getattr(settings, "EVALUATION_DATASET_MAX_BYTES", settings.BATCH_INPUT_MAX_BYTES))


def output_classes(signature: dict[str, Any], labels: list[str]) -> int | None:
    """How many classes the version's first output scores (its last dimension), if known."""
    outputs = signature.get("outputs") or []
    if outputs and outputs[0].get("shape") and outputs[0]["shape"][-1] > 0 and len(outputs[0]["shape"]) == 2:
        return int(outputs[0]["shape"][-1])
    return len(labels) or None


def _inputs_check(arrays: dict[str, np.ndarray], signature: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each input present, with the signature's shape (rows first) and a compatible datatype."""
    specs = signature.get("inputs", [])
    for spec in specs:
        if spec["datatype"] not in NUMPY_DTYPES:
            raise InvalidInput(f"Input {spec['name']!r} is BYTES; evaluation takes numeric inputs only.", field=FILE)
    more = " plus 'labels' (classification) or 'targets' (regression)"
    return inputs_checked(arrays, specs, batched_layout(signature), what="The dataset", more=more)


def _labels_check(raw: np.ndarray, classes: int | None, names: list[str]) -> np.ndarray:
    """Class indices in [0, classes): integers, or class names when the version has labels."""
    values = raw.reshape(-1) if raw.ndim == 2 and raw.shape[1] == 1 else raw
    if values.ndim != 1:
        raise InvalidInput(f"labels must be one class per row; it has shape {list(raw.shape)}.", field=FILE)
    if values.dtype.kind in "US":
        lookup = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in values if str(v) not in lookup})
        if unknown:
            known = f"its classes are {names}" if names else "the version has no class names; use class indices"
            raise InvalidInput(f"labels name unknown classes {unknown[:5]}; {known}.", field=FILE)
        return np.asarray([lookup[str(v)] for v in values], dtype=np.int64)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            raise InvalidInput("labels must be whole class indices (0, 1, 2, …), not fractions.", field=FILE)
    elif values.dtype.kind not in "iub":
        raise InvalidInput(f"labels hold {values.dtype} values; use class indices or class names.", field=FILE)
    indices = values.astype(np.int64)
    if classes is None:
        raise InvalidInput("The version's outputs do not say how many classes it scores; it cannot be "
                           "evaluated as a classifier.", field=FILE)  # fmt: skip
    bad = indices[(indices < 0) | (indices >= classes)]
    if bad.size:
        raise InvalidInput(
            f"labels hold class {int(bad[0])}, outside the classifier's {classes} outputs "
            f"(valid classes 0 to {classes - 1}); {bad.size} label(s) are out of range.",
            field=FILE,
        )
    return indices


def _targets_check(raw: np.ndarray) -> np.ndarray:
    if raw.dtype.kind not in "iuf":
        raise InvalidInput(f"targets hold {raw.dtype} values; regression targets must be numbers.", field=FILE)
    values = raw.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise InvalidInput("targets hold NaN or infinite values.", field=FILE)
    return values


def _csv_arrays(stream: IO[bytes], signature: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    specs = signature.get("inputs", [])
    if len(specs) != 1 or len(specs[0]["shape"]) != 2 or specs[0]["shape"][1] < 1:
        raise InvalidInput("CSV datasets are for tabular models with one input of shape [-1, F]; "
                           "upload an .npz with one array per input instead.", field=FILE)  # fmt: skip
    spec, width = specs[0], specs[0]["shape"][1]
    try:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        header = [column.strip() for column in next(reader, [])]
        lines = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"The CSV file cannot be read: {exc}.", field=FILE) from None
    targets = [i for i, column in enumerate(header) if column.lower() in CSV_TARGETS]
    if not targets:
        raise InvalidInput(
            f"The CSV header {header} has no 'label' (classification) or 'target' (regression) column.", field=FILE
        )
    target_index = targets[0]
    features = [i for i in range(len(header)) if i != target_index]
    if len(features) != width:
        few = len(features) < width
        raise InvalidInput(
            f"The CSV has {len(features)} feature column(s) {[header[i] for i in features]}; input "
            f"{spec['name']!r} takes {width}" + (f" ({width - len(features)} missing)." if few else "."),
            field=FILE,
        )
    rows, labels = [], []
    for number, line in enumerate(lines, start=2):
        if not any(cell.strip() for cell in line):
            continue
        if len(line) != len(header):
            raise InvalidInput(f"CSV line {number} has {len(line)} cells; the header has {len(header)}.", field=FILE)
        values = []
        for i in features:
            cell = line[i].strip()
            try:
                values.append(float(cell))
            except ValueError:
                what = "is empty" if not cell else f"is not a number ({cell[:20]!r})"
                raise InvalidInput(f"CSV line {number}, column {header[i]!r} {what}.", field=FILE) from None
        rows.append(values)
        labels.append(line[target_index].strip())
    task = CSV_TARGETS[header[target_index].lower()]
    label_array: np.ndarray
    try:
        label_array = np.asarray([float(v) for v in labels])
        if task == TaskType.CLASSIFICATION and np.all(label_array == np.round(label_array)):
            label_array = label_array.astype(np.int64)
    except ValueError:
        if task == TaskType.REGRESSION:
            raise InvalidInput("The target column holds values that are not numbers.", field=FILE) from None
        label_array = np.asarray(labels)
    key = "labels" if task == TaskType.CLASSIFICATION else "targets"
    return {spec["name"]: np.asarray(rows, dtype=np.float64).reshape(-1, width), key: label_array}, DatasetFormat.CSV


def dataset_read(file: IO[bytes], filename: str, signature: dict[str, Any], class_names: list[str]) -> Labelled:
    """Checked labelled data from an uploaded file; InvalidInput (or PayloadTooLarge) says what is wrong."""
    size = getattr(file, "size", None)
    if size is not None and size > dataset_limit():
        raise PayloadTooLarge(f"The dataset is larger than the limit of {filesizeformat(dataset_limit())}.")
    file.seek(0)
    head = file.read(8)
    file.seek(0)
    if not head:
        raise InvalidInput("The uploaded dataset is empty.", field=FILE)
    if head.startswith(b"PK") or filename.lower().endswith(".npz"):
        source_format: str = DatasetFormat.NPZ
        arrays = npz_arrays(file, dataset_limit())
    else:
        arrays, source_format = _csv_arrays(file, signature)
    return labelled_check(arrays, signature, class_names, source_format)


def labelled_check(
    arrays: dict[str, np.ndarray], signature: dict[str, Any], class_names: list[str], source_format: str
) -> Labelled:
    """Inputs, labels/targets and row counts of already-read arrays, checked against a signature."""
    found = [key for key in TARGET_KEYS if key in arrays]
    if len(found) != 1:
        problem = "both 'labels' and 'targets'" if found else "neither 'labels' nor 'targets'"
        raise InvalidInput(f"The dataset has {problem}: give 'labels' (classification) or 'targets' "
                           "(regression).", field=FILE)  # fmt: skip
    key = found[0]
    task = TARGET_KEYS[key]
    inputs = _inputs_check({k: v for k, v in arrays.items() if k != key}, signature)
    classes = output_classes(signature, class_names) if task == TaskType.CLASSIFICATION else None
    raw = arrays[key]
    if raw.ndim == 0:
        raise InvalidInput(f"{key} must have one entry per row.", field=FILE)
    target = _labels_check(raw, classes, class_names) if task == TaskType.CLASSIFICATION else _targets_check(raw)
    counts = {name: len(array) for name, array in inputs.items()} | {key: len(target)}
    if len(set(counts.values())) > 1:
        raise InvalidInput(f"The arrays have different numbers of rows {counts}; each needs one row per example.",
                           field=FILE)  # fmt: skip
    if not len(target):
        raise InvalidInput("The dataset has no rows.", field=FILE)
    return Labelled(source_format, task, inputs, target, classes)

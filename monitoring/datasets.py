"""Reading and checking labelled evaluation data against a model version's signature.

`.npz`: one array per model input (named like the input) plus `labels` (classification:
class indices, or class names when the version has labels) or `targets` (regression).
CSV (tabular models with one `[-1, F]` input): a header, F feature columns in input order
and a `label` or `target` column. Everything is checked before anything is written.

Text classifiers (Hugging Face text-classification versions: one BYTES input `text`, class
scores first): CSV with a `text` and a `label` column, or JSON lines
(`{"text": "...", "label": "positive"}` per line); labels are class names or indices.
Texts are stored as a numpy unicode array (never an object array), so the worker reads
them like any other input.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from django.conf import settings
from django.template.defaultfilters import filesizeformat

from core.datatypes import NUMPY_DTYPES
from core.errors import InvalidInput, PayloadTooLarge
from inference.runs.arrays import FILE, NPZ_EXPANSION, batched_layout, inputs_checked, npz_arrays
from monitoring.models import DatasetFormat, TaskType
from registry.text_tasks import TEXT_INPUT, TextTask

TARGET_KEYS = {"labels": TaskType.CLASSIFICATION, "targets": TaskType.REGRESSION}
CSV_TARGETS = {"label": TaskType.CLASSIFICATION, "labels": TaskType.CLASSIFICATION,
               "target": TaskType.REGRESSION, "targets": TaskType.REGRESSION}  # fmt: skip
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson", ".json")


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


def is_text_signature(signature: dict[str, Any]) -> bool:
    """True for a text model's signature: one BYTES input named `text` (a Hugging Face version)."""
    specs = signature.get("inputs", [])
    return len(specs) == 1 and specs[0]["name"] == TEXT_INPUT and specs[0]["datatype"] == "BYTES"


def _text_model_check(signature: dict[str, Any], task: str) -> None:
    """Text datasets are labelled classes: only a text classifier (class scores first) can be scored on them."""
    outputs = signature.get("outputs") or []
    first = outputs[0] if outputs else {}
    if (task and task != TextTask.TEXT_CLASSIFICATION) or first.get("datatype", "").startswith(("BYTES", "INT")):
        raise InvalidInput(
            f"Evaluation datasets of texts are for text-classification models; this version is "
            f"{task or 'a text model'} (its first output {first.get('name', '?')!r} is not class scores).",
            field=FILE,
        )


def _texts_check(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The one `text` input of a text classifier: one string per row, none empty."""
    extra = [key for key in arrays if key != TEXT_INPUT]
    if TEXT_INPUT not in arrays or extra:
        problem = f"has an unexpected array {extra[0]!r}" if extra else f"has no array named {TEXT_INPUT!r}"
        raise InvalidInput(
            f"The dataset {problem}: a text classifier's dataset holds {TEXT_INPUT!r} (one string per row) "
            "and 'labels'.",
            field=FILE,
        )
    raw = arrays[TEXT_INPUT]
    if raw.ndim != 1:
        raise InvalidInput(f"{TEXT_INPUT!r} must be one string per row; it has shape {list(raw.shape)}.", field=FILE)
    if raw.dtype.kind == "S":
        try:
            raw = np.asarray([value.decode("utf-8") for value in raw.tolist()], dtype=np.str_)
        except UnicodeDecodeError:
            raise InvalidInput(f"{TEXT_INPUT!r} holds byte strings that are not UTF-8.", field=FILE) from None
    if raw.dtype.kind != "U":
        raise InvalidInput(
            f"{TEXT_INPUT!r} holds {raw.dtype} values; save the texts as a string array (numpy.array(texts)).",
            field=FILE,
        )
    empty = next((row for row, value in enumerate(raw.tolist()) if not value.strip()), None)
    if empty is not None:
        raise InvalidInput(f"Text {empty} (row {empty + 1}) is empty.", field=FILE)
    return {TEXT_INPUT: raw}


def _inputs_check(arrays: dict[str, np.ndarray], signature: dict[str, Any]) -> dict[str, np.ndarray]:
    """Each input present, with the signature's shape (rows first) and a compatible datatype."""
    if is_text_signature(signature):
        return _texts_check(arrays)
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


def _text_label(raw: Any, names: list[str], classes: int | None, where: str) -> int:
    """A class index from a label cell or value: a class name, or an index in range."""
    if isinstance(raw, str):
        value = raw.strip()
        if value in names:
            return names.index(value)
        if not value:
            raise InvalidInput(f"{where}: the label is empty.", field=FILE)
        try:
            raw = int(value)
        except ValueError:
            known = f"the model's classes are {names}" if names else "the model has no class names; use indices"
            raise InvalidInput(f"{where}: unknown label {value[:40]!r}; {known}.", field=FILE) from None
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidInput(f"{where}: the label must be a class name or index, not {json.dumps(raw)[:40]}.",
                           field=FILE)  # fmt: skip
    if classes is None or not 0 <= raw < classes:
        valid = f"valid indices are 0 to {classes - 1}" if classes else "the model does not say how many classes"
        raise InvalidInput(f"{where}: label {raw} is not a class of the model ({valid}).", field=FILE)
    return raw


def _text_rows_array(texts: list[str], labels: list[int], source_format: str) -> tuple[dict[str, np.ndarray], str]:
    if not texts:
        raise InvalidInput("The dataset has no rows.", field=FILE)
    array = np.asarray(texts, dtype=np.str_)
    # Unicode arrays are fixed-width (4 bytes a character of the longest text): one very long
    # text would make every row that long in the stored file.
    if array.nbytes > dataset_limit() * NPZ_EXPANSION:
        longest = max(range(len(texts)), key=lambda row: len(texts[row]))
        limit = filesizeformat(dataset_limit() * NPZ_EXPANSION)
        raise PayloadTooLarge(
            f"The texts take {filesizeformat(array.nbytes)} stored as fixed-width strings (the longest, row "
            f"{longest + 1}, has {len(texts[longest])} characters), more than {limit}."
        )
    return {TEXT_INPUT: array, "labels": np.asarray(labels, dtype=np.int64)}, source_format


def _utf8(stream: IO[bytes]) -> str:
    data = stream.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidInput(
            f"The file is not UTF-8 text: line {line} has a byte that is not UTF-8 (0x{data[exc.start]:02x} at "
            f"byte {exc.start}); save it as UTF-8.",
            field=FILE,
        ) from None


def _text_csv_arrays(stream: IO[bytes], names: list[str], classes: int | None) -> tuple[dict[str, np.ndarray], str]:
    """A text classifier's CSV: a header with `text` and `label` columns (others are ignored)."""
    reader = csv.reader(io.StringIO(_utf8(stream), newline=""))
    try:
        header = [column.strip().lower() for column in next(reader, [])]
        missing = [column for column in (TEXT_INPUT, "label") if column not in header]
        if missing:
            raise InvalidInput(
                f"The CSV header {header[:10]} has no {missing[0]!r} column; a text classifier's CSV has a "
                f"'{TEXT_INPUT}' and a 'label' column.",
                field=FILE,
            )
        text_at, label_at = header.index(TEXT_INPUT), header.index("label")
        texts: list[str] = []
        labels: list[int] = []
        for line in reader:
            where = f"CSV line {reader.line_num}"
            if not any(cell.strip() for cell in line):
                continue
            if len(line) != len(header):
                raise InvalidInput(f"{where} has {len(line)} cells; the header has {len(header)}.", field=FILE)
            if not line[text_at].strip():
                raise InvalidInput(f"{where}: the text is empty.", field=FILE)
            texts.append(line[text_at])
            labels.append(_text_label(line[label_at], names, classes, where))
    except csv.Error as exc:
        raise InvalidInput(f"CSV line {reader.line_num} cannot be read: {exc}.", field=FILE) from None
    return _text_rows_array(texts, labels, DatasetFormat.CSV)


def _json_lines_arrays(stream: IO[bytes], names: list[str], classes: int | None) -> tuple[dict[str, np.ndarray], str]:
    """JSON lines: one object `{"text": "...", "label": ...}` per line; blank lines are skipped."""
    content = _utf8(stream)
    if content.lstrip().startswith("["):
        raise InvalidInput(
            'The file is one JSON array; send JSON lines instead: one {"text": "...", "label": "..."} object per '
            "line, with no enclosing brackets or commas between lines.",
            field=FILE,
        )
    texts: list[str] = []
    labels: list[int] = []
    # Lines end at "\n" only: JSON strings may hold U+2028 and other breaks str.splitlines() splits at.
    for number, line in enumerate(content.split("\n"), start=1):
        where = f"Line {number}"
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{where} is not valid JSON: {exc.msg} (column {exc.colno}).", field=FILE) from None
        if not isinstance(record, dict):
            raise InvalidInput(f'{where} is not a JSON object like {{"text": "...", "label": "..."}}.', field=FILE)
        missing = [key for key in (TEXT_INPUT, "label") if key not in record]
        if missing:
            raise InvalidInput(f"{where} has no {missing[0]!r} key.", field=FILE)
        text = record[TEXT_INPUT]
        if not isinstance(text, str):
            raise InvalidInput(f"{where}: 'text' must be a string, not {type(text).__name__}.", field=FILE)
        if not text.strip():
            raise InvalidInput(f"{where}: the text is empty.", field=FILE)
        texts.append(text)
        labels.append(_text_label(record["label"], names, classes, where))
    return _text_rows_array(texts, labels, DatasetFormat.JSON_LINES)


def _text_arrays(
    stream: IO[bytes], filename: str, signature: dict[str, Any], class_names: list[str], head: bytes
) -> tuple[dict[str, np.ndarray], str]:
    """A text classifier's CSV or JSON lines (by name, else by a first `{`), read and labelled."""
    classes = output_classes(signature, class_names)
    lower = filename.lower()
    json_lines = lower.endswith(JSON_LINES_SUFFIXES) or (
        not lower.endswith(".csv") and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith((b"{", b"["))
    )
    if json_lines:
        return _json_lines_arrays(stream, class_names, classes)
    return _text_csv_arrays(stream, class_names, classes)


def dataset_read(
    file: IO[bytes], filename: str, signature: dict[str, Any], class_names: list[str], *, task: str = ""
) -> Labelled:
    """Checked labelled data from an uploaded file; InvalidInput (or PayloadTooLarge) says what is wrong."""
    size = getattr(file, "size", None)
    if size is not None and size > dataset_limit():
        raise PayloadTooLarge(f"The dataset is larger than the limit of {filesizeformat(dataset_limit())}.")
    file.seek(0)
    head = file.read(64)
    file.seek(0)
    if not head:
        raise InvalidInput("The uploaded dataset is empty.", field=FILE)
    text = is_text_signature(signature)
    if text:
        _text_model_check(signature, task)
    if head.startswith(b"PK") or filename.lower().endswith(".npz"):
        source_format: str = DatasetFormat.NPZ
        arrays = npz_arrays(file, dataset_limit())
    elif text:
        arrays, source_format = _text_arrays(file, filename, signature, class_names, head)
    else:
        arrays, source_format = _csv_arrays(file, signature)
    return labelled_check(arrays, signature, class_names, source_format, task=task)


def labelled_check(
    arrays: dict[str, np.ndarray],
    signature: dict[str, Any],
    class_names: list[str],
    source_format: str,
    *,
    task: str = "",
) -> Labelled:
    """Inputs, labels/targets and row counts of already-read arrays, checked against a signature."""
    if is_text_signature(signature):
        _text_model_check(signature, task)
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

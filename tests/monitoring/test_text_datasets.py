"""Labelled text datasets of text classifiers: CSV and JSON lines, read, checked and normalised."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from core.errors import InvalidInput, PayloadTooLarge
from monitoring import datasets
from monitoring.models import DatasetFormat, TaskType
from registry.text_tasks import TextTask, task_signature

LABELS = ["negative", "positive"]
SIGNATURE = task_signature(TextTask.TEXT_CLASSIFICATION, {"id2label": {"0": "negative", "1": "positive"}})
CLASSIFIER = TextTask.TEXT_CLASSIFICATION


def read(content: bytes | str, filename: str, *, task: str = CLASSIFIER, signature=SIGNATURE, labels=LABELS):
    data = content.encode() if isinstance(content, str) else content
    file = SimpleUploadedFile(filename, data)
    return datasets.dataset_read(file, filename, signature, labels, task=task)


def jsonl(*records) -> str:
    return "\n".join(json.dumps(record) for record in records) + "\n"


def test_csv_with_class_names_is_stored_as_unicode_texts_and_class_indices():
    labelled = read('text,label\n"Great, really great.",positive\nAwful.,negative\n', "reviews.csv")
    arrays = labelled.arrays()
    assert labelled.source_format == DatasetFormat.CSV and labelled.task == TaskType.CLASSIFICATION
    assert arrays["text"].dtype.kind == "U" and arrays["text"].tolist() == ["Great, really great.", "Awful."]
    assert arrays["labels"].tolist() == [1, 0] and arrays["labels"].dtype == np.int64
    assert labelled.num_classes == 2 and labelled.rows == 2


def test_csv_takes_class_indices_extra_columns_and_any_column_order():
    labelled = read("id,label,text\n1,1,Lovely.\n2,0,Dull.\n\n", "reviews.csv")
    assert labelled.arrays()["text"].tolist() == ["Lovely.", "Dull."]
    assert labelled.arrays()["labels"].tolist() == [1, 0]


def test_json_lines_with_names_and_indices():
    labelled = read(jsonl({"text": "Lovely ☀", "label": "positive"}, {"text": "Dull", "label": 0}), "r.jsonl")
    assert labelled.source_format == DatasetFormat.JSON_LINES
    assert labelled.arrays()["text"].tolist() == ["Lovely ☀", "Dull"]
    assert labelled.arrays()["labels"].tolist() == [1, 0]


def test_json_lines_are_recognised_without_their_extension():
    labelled = read(jsonl({"text": "Lovely", "label": 1}), "upload")
    assert labelled.source_format == DatasetFormat.JSON_LINES


def test_a_stored_text_dataset_is_an_npz_without_pickled_objects(tmp_path):
    labelled = read(jsonl({"text": "Lovely", "label": 1}, {"text": "Dull", "label": 0}), "r.jsonl")
    buffer = io.BytesIO()
    np.savez(buffer, **labelled.arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as npz:
        assert npz["text"].tolist() == ["Lovely", "Dull"]


def test_an_npz_of_texts_and_labels_is_accepted():
    buffer = io.BytesIO()
    np.savez(buffer, text=np.array(["Lovely", "Dull"]), labels=np.array(["positive", "negative"]))
    labelled = read(buffer.getvalue(), "d.npz")
    assert labelled.source_format == DatasetFormat.NPZ
    assert labelled.arrays()["labels"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("content", "filename", "words"),
    [
        ("words,label\nLovely,positive\n", "d.csv", "has no 'text' column"),
        ("text,sentiment\nLovely,positive\n", "d.csv", "has no 'label' column"),
        ("text,label\nLovely,positive\n  ,negative\n", "d.csv", "CSV line 3: the text is empty"),
        ("text,label\nLovely,positive\nMeh,neutral\n", "d.csv", "CSV line 3: unknown label 'neutral'; the model's "
         "classes are ['negative', 'positive']"),
        ("text,label\nLovely,2\n", "d.csv", "CSV line 2: label 2 is not a class of the model (valid indices are 0"),
        ("text,label\nLovely,positive,extra\n", "d.csv", "CSV line 2 has 3 cells; the header has 2"),
        ("text,label\nLovely,\n", "d.csv", "CSV line 2: the label is empty"),
        ("text,label\n", "d.csv", "no rows"),
        (jsonl({"text": "Lovely", "label": 1}) + '{"text": "Dull", "label": 0\n', "d.jsonl",
         "Line 2 is not valid JSON"),
        (jsonl({"text": "Lovely", "label": 1}, ["Dull", 0]), "d.jsonl", "Line 2 is not a JSON object"),
        (jsonl({"text": "Lovely", "label": 1}, {"label": 0}), "d.jsonl", "Line 2 has no 'text' key"),
        (jsonl({"text": "Lovely"}), "d.jsonl", "Line 1 has no 'label' key"),
        (jsonl({"text": "", "label": 1}), "d.jsonl", "Line 1: the text is empty"),
        (jsonl({"text": 42, "label": 1}), "d.jsonl", "Line 1: 'text' must be a string, not int"),
        (jsonl({"text": "Lovely", "label": 1.5}), "d.jsonl", "the label must be a class name or index, not 1.5"),
        (jsonl({"text": "Lovely", "label": True}), "d.jsonl", "Line 1: the label must be a class name or index"),
        (jsonl({"text": "Lovely", "label": "great"}), "d.jsonl", "Line 1: unknown label 'great'"),
        (b"text,label\nLovely,positive\nCaf\xe9,negative\n", "d.csv", "not UTF-8 text: line 3"),
        (b'{"text": "Caf\xe9", "label": 1}\n', "d.jsonl", "not UTF-8 text: line 1"),
        (json.dumps([{"text": "Lovely", "label": 1}]), "d.json", "The file is one JSON array; send JSON lines"),
    ],
    ids=["no-text-column", "no-label-column", "empty-text", "unknown-label", "index-out-of-range", "ragged-line",
         "empty-label", "no-rows", "bad-json", "not-an-object", "no-text-key", "no-label-key", "json-empty-text",
         "text-not-a-string", "fractional-label", "boolean-label", "json-unknown-label", "csv-not-utf8",
         "json-not-utf8", "json-array"],
)  # fmt: skip
def test_bad_text_datasets_are_refused_naming_the_line_and_the_problem(content, filename, words):
    with pytest.raises(InvalidInput) as error:
        read(content, filename)
    assert words in error.value.message
    assert error.value.field == "file"


def test_an_npz_with_an_empty_text_is_refused():
    buffer = io.BytesIO()
    np.savez(buffer, text=np.array(["Lovely", " "]), labels=np.array([1, 0]))
    with pytest.raises(InvalidInput, match=r"Text 1 \(row 2\) is empty"):
        read(buffer.getvalue(), "d.npz")


def test_an_npz_of_numbers_for_a_text_classifier_is_refused():
    buffer = io.BytesIO()
    np.savez(buffer, text=np.array([1.0, 2.0]), labels=np.array([1, 0]))
    with pytest.raises(InvalidInput, match="save the texts as a string array"):
        read(buffer.getvalue(), "d.npz")


@pytest.mark.parametrize("task", [TextTask.FILL_MASK, TextTask.FEATURE_EXTRACTION, TextTask.TOKEN_CLASSIFICATION])
def test_text_datasets_are_refused_for_models_that_do_not_classify_texts(task):
    signature = task_signature(task, {"hidden_size": 8})
    with pytest.raises(InvalidInput, match=f"for text-classification models; this version is {task}"):
        read(jsonl({"text": "Lovely", "label": 1}), "d.jsonl", task=task, signature=signature)


def test_texts_too_large_once_stored_fixed_width_are_413(settings):
    settings.EVALUATION_DATASET_MAX_BYTES = 2_000
    long_text = "a" * 1_000
    content = jsonl({"text": long_text, "label": 1}, *[{"text": "b", "label": 0}] * 10)
    with pytest.raises(PayloadTooLarge, match="the longest, row 1, has 1000 characters"):
        read(content, "d.jsonl")

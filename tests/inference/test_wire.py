"""Messages between the prediction gateways and the workers: round trips and refusals."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import numpy as np
import pytest

from core.datatypes import NUMPY_DTYPES
from inference.wire import BatchReply, BatchRequest, Failure, Heartbeat, Outputs, WireError


def _tensors() -> dict[str, np.ndarray]:
    return {
        "features": np.arange(8, dtype=np.float32).reshape(2, 4),
        "mask": np.array([[True, False]]),
        "big": np.array([2**63 + 5], dtype=np.uint64),
        "half": np.array([1.5, -2.0], dtype=np.float16),
    }


def _assert_same(got: dict[str, np.ndarray], sent: dict[str, np.ndarray]) -> None:
    assert list(got) == list(sent)
    for name, array in sent.items():
        assert got[name].shape == array.shape and got[name].dtype == array.dtype
        np.testing.assert_array_equal(got[name], array)


def _request() -> BatchRequest:
    return BatchRequest("b1", "maas:reply:host:1:ab", 7, 1000.25, 1030.25, [_tensors(), {"x": np.zeros((0, 3))}])


def test_batch_request_round_trips():
    sent = _request()
    got = BatchRequest.decode(sent.encode())
    assert (got.batch_id, got.reply_to, got.version_id, got.sent_at, got.deadline) == (
        "b1", "maas:reply:host:1:ab", 7, 1000.25, 1030.25,
    )  # fmt: skip
    assert len(got.requests) == 2
    _assert_same(got.requests[0], sent.requests[0])
    _assert_same(got.requests[1], sent.requests[1])


def test_texts_and_per_request_parameters_round_trip():
    texts = np.array(["Paris is the [MASK] of France.", "ünïcode ✓", ""], dtype=object)
    raw = np.array([b"\xff\xfe not utf-8"], dtype=object)
    sent = BatchRequest("b2", "r", 3, 1.0, 2.0, [{"text": texts}, {"text": raw}], [{"top_k": 3}, {}])
    got = BatchRequest.decode(sent.encode())
    assert got.parameters_of(0) == {"top_k": 3} and got.parameters_of(1) == {}
    assert got.requests[0]["text"].dtype == object and got.requests[0]["text"].shape == (3,)
    # Texts arrive as UTF-8 bytes; bytes that are not UTF-8 arrive unchanged for the worker to refuse.
    assert got.requests[0]["text"].tolist() == [t.encode() for t in texts.tolist()]
    assert got.requests[1]["text"].tolist() == [b"\xff\xfe not utf-8"]


def test_bytes_outputs_round_trip_in_replies():
    labels = np.array([[b"capital", b"city"]], dtype=object)
    got = BatchReply.decode(BatchReply("b", [Outputs({"token_str": labels})], 0.0, 0.0, 1, "w").encode())
    assert isinstance(got.answers[0], Outputs)
    assert got.answers[0].tensors["token_str"].tolist() == [[b"capital", b"city"]]


def test_a_batch_with_a_parameter_map_missing_is_refused():
    fields = msgpack.unpackb(_request().encode())
    fields[-1] = [{}]  # two requests, one map
    with pytest.raises(WireError, match="one parameter map per request"):
        BatchRequest.decode(msgpack.packb(fields))


def test_decoded_tensors_are_writable_for_torch():
    got = BatchRequest.decode(_request().encode())
    assert got.requests[0]["features"].flags.writeable


@pytest.mark.parametrize("datatype", sorted(NUMPY_DTYPES))
def test_every_datatype_round_trips(datatype):
    array = np.ones((2, 3), dtype=NUMPY_DTYPES[datatype])
    got = BatchReply.decode(BatchReply("b", [Outputs({"y": array})], 0.0, 0.0, 2, "w").encode())
    assert isinstance(got.answers[0], Outputs)
    _assert_same(got.answers[0].tensors, {"y": array})


def test_batch_reply_round_trips_outputs_and_failures_in_order():
    outputs = {"probabilities": np.array([[0.1, 0.9]], dtype=np.float32)}
    sent = BatchReply("b1", [Outputs(outputs), Failure("Model 'iris' v1 raised ValueError", 422)], 1.5, 2.25, 3, "h:9")
    got = BatchReply.decode(sent.encode())
    assert (got.batch_id, got.queue_ms, got.compute_ms, got.batch_rows, got.worker) == ("b1", 1.5, 2.25, 3, "h:9")
    first, second = got.answers
    assert isinstance(first, Outputs)
    _assert_same(first.tensors, outputs)
    assert second == Failure("Model 'iris' v1 raised ValueError", 422)


def test_heartbeat_round_trips():
    assert Heartbeat.decode(Heartbeat(["inference", "gpu"], 12.5, [3, 4], [5]).encode()) == Heartbeat(
        ["inference", "gpu"], 12.5, [3, 4], [5]
    )


def test_each_kind_refuses_the_others():
    request, reply = _request().encode(), BatchReply("b", [], 0.0, 0.0, 0, "w").encode()
    beat = Heartbeat([], 0, []).encode()
    for decode, foreign in [(BatchRequest.decode, reply), (BatchReply.decode, beat), (Heartbeat.decode, request)]:
        with pytest.raises(WireError, match="expected a"):
            decode(foreign)


def _packed(fields: Any) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


GOOD_TENSOR = {"x": ["FP32", [1], b"\x00\x00\x80?"]}


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [], []]) + b"\x00", "not msgpack"),  # trailing bytes
        # The dict messages of the release before typed messages: refused, not misread.
        (_packed({"b": "b", "r": "r", "v": 1, "s": 0.0, "d": 1.0, "q": []}), "expected a 'batch.2' message"),
        (_packed([]), "expected a 'batch.2' message"),
        (_packed(["batch.1", "b", "r", 1, 0.0, 1.0, []]), "expected a 'batch.2' message"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, []]), "has 7 fields, not 6"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [], [], "extra"]), "has 7 fields, not 8"),
        (_packed(["batch.2", 5, "r", 1, 0.0, 1.0, [], []]), "batch_id: int"),
        (_packed(["batch.2", "b", "r", "7", 0.0, 1.0, [], []]), "version_id: str"),
        (_packed(["batch.2", "b", "r", 1, "now", 1.0, [], []]), "sent_at: str"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, {}, []]), "requests: dict"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [["FP32"]], [{}]]), "tensors must be a map"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"x": ["FP99", [1], b"1234"]}], [{}]]), "malformed tensor"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"x": ["FP32", [2], b"1234"]}], [{}]]), "malformed tensor"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"x": ["FP32", [1]]}], [{}]]), "malformed tensor"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"x": ["FP32", [1], "text"]}], [{}]]), "malformed tensor"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"x": ["FP32", "1", b"1234"]}], [{}]]), "malformed tensor"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"t": ["BYTES", [1], "text"]}], [{}]]), "list of byte strings"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"t": ["BYTES", [1], ["text"]]}], [{}]]), "list of byte strings"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{"t": ["BYTES", [3], [b"a"]]}], [{}]]), "malformed tensor"),
        (_packed(["batch.2", "b", "r", 1, 0.0, 1.0, [{}], ["top_k=3"]]), "one parameter map per request"),
    ],
)
def test_batch_request_refuses_malformed_messages(raw, fragment):
    with pytest.raises(WireError, match=fragment):
        BatchRequest.decode(raw)


@pytest.mark.parametrize(
    ("answers", "fragment"),
    [
        ([["ok"]], "an answer is"),
        ([["err", "boom"]], "an answer is"),
        ([["err", "boom", "422"]], "status: str"),
        ([["err", 7, 422]], "message: int"),
        ([["maybe", GOOD_TENSOR]], "an answer is"),
        ([{"ok": GOOD_TENSOR}], "an answer is"),  # the old answer layout
        ([["ok", {"x": ["FP32", [3], b"\x00"]}]], "malformed tensor"),
    ],
)
def test_batch_reply_refuses_malformed_answers(answers, fragment):
    with pytest.raises(WireError, match=fragment):
        BatchReply.decode(_packed(["reply.1", "b", answers, 0.0, 0.0, 1, "w"]))


@pytest.mark.parametrize(
    "fields",
    [
        ["beat.3", "inference", 1.0, [], []],
        ["beat.3", [1], 1.0, [], []],
        ["beat.3", [], 1.0, ["3"], []],
        ["beat.3", [], None, [], []],
        ["beat.3", [], 1.0, [], ["4"]],
        ["beat.3", [], 1.0, [], [], []],
        ["beat.2", [], 1.0, [], [], []],
    ],
)
def test_heartbeat_refuses_malformed_fields(fields):
    with pytest.raises(WireError):
        Heartbeat.decode(_packed(fields))


def test_a_pickle_is_refused_not_unpickled():
    with pytest.raises(WireError, match="not msgpack"):
        BatchRequest.decode(pickle.dumps(["batch.1", "b", "r", 1, 0.0, 1.0, []]))


def test_msgpack_extension_types_are_refused():
    raw = _packed(["batch.2", "b", "r", 1, 0.0, 1.0, [msgpack.ExtType(1, b"x")], [{}]])
    with pytest.raises(WireError, match="tensors must be a map"):
        BatchRequest.decode(raw)

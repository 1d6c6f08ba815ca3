"""Incremental detokenization, stop strings, sampling parameters and the GPT-2 builder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from inference.generation import Detokenizer, SamplingParams, StopStrings
from inference.generation.sampling import batch_sample, row_sample
from portal.text_models import GPT2_EOS, gpt2_save


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gpt2_save(Path(tmp_path_factory.mktemp("gpt2")) / "tiny", size="tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir) -> Any:
    return AutoTokenizer.from_pretrained(tiny_dir)


def byte_tokens(tokenizer: Any, data: bytes) -> list[int]:
    """One token per byte (byte-level BPE has all 256): how a random model spells characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    char = {byte: chr(code) for byte, code in zip(printable, codes, strict=True)}
    ids = [tokenizer.convert_tokens_to_ids(char[b]) for b in data]
    assert tokenizer.unk_token_id not in ids
    return ids


def stream(tokenizer: Any, tokens: list[int]) -> list[str]:
    detokenizer = Detokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in tokens]
    return [*pieces, detokenizer.flush()]


def test_multi_byte_characters_split_across_tokens_stream_whole(tokenizer):
    text = "Größe 5 € — 日本 😀!"
    tokens = byte_tokens(tokenizer, text.encode())
    pieces = stream(tokenizer, tokens)
    assert "".join(pieces) == text == tokenizer.decode(tokens)
    assert not any("\ufffd" in piece for piece in pieces)
    assert "€" in pieces and "😀" in pieces  # each emitted once its last byte arrived


def test_lone_bytes_stream_exactly_as_the_final_decode_shows_them(tokenizer):
    data = "a€".encode()[:-1] + b"b" + "日".encode()[:2] + "é".encode() + "😀".encode()[:3]
    tokens = byte_tokens(tokenizer, data)
    pieces = stream(tokenizer, tokens)
    assert "".join(pieces) == tokenizer.decode(tokens) == data.decode(errors="replace")
    assert pieces[-1] == "\ufffd"  # an incomplete character at the end shows only once it is final


def test_stop_strings_hold_back_a_possible_start_and_cut_before_the_stop():
    stops = StopStrings(("END", "\n\n"))
    assert stops.feed("Hello E") == "Hello "
    assert stops.feed("N") == ""
    assert stops.feed("Dless") == ""
    assert stops.stopped
    other = StopStrings(("END",))
    assert other.feed("EN") == ""
    assert other.feed("oh") == "ENoh"
    assert other.feed("E") == ""
    assert other.flush() == "E"
    assert StopStrings(()).feed("anything") == "anything"


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"temperature": 2.5},
        {"top_p": 0.0},
        {"top_k": -1},
        {"max_tokens": 0},
        {"stop": ("",)},
        {"stop": ("a", "b", "c", "d", "e")},
    ],
)
def test_sampling_params_refuse_bad_values(bad):
    with pytest.raises(ValueError):  # noqa: PT011 (each message names its parameter)
        SamplingParams(**bad)


def test_top_p_keeps_the_smallest_head_with_that_mass():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    params = SamplingParams(temperature=1.0, top_p=0.7)
    generator = torch.Generator().manual_seed(0)
    drawn = {row_sample(logits, params, generator) for _ in range(300)}
    assert drawn == {0, 1}


def test_batch_sample_uses_each_rows_settings():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7], [0.4, 0.35, 0.25], [0.4, 0.35, 0.25]]))
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, top_k=1),
        SamplingParams(temperature=1.0),
    ]
    generators = [None, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)]
    seen = {tuple(batch_sample(logits, params, generators)) for _ in range(100)}
    assert {row[:2] for row in seen} == {(2, 0)}
    assert len({row[2] for row in seen}) == 3


def test_gpt2_save_is_deterministic_and_complete(tiny_dir, tokenizer, tmp_path):
    again = gpt2_save(tmp_path / "again", size="tiny")
    names = sorted(path.name for path in tiny_dir.iterdir())
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(names)
    for name in names:
        assert (tiny_dir / name).read_bytes() == (again / name).read_bytes(), name
    assert tokenizer.eos_token == GPT2_EOS
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == f"<|user|>\nHi{GPT2_EOS}\n<|assistant|>\n"
    parameters = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_dir).parameters())
    assert 500_000 < parameters < 2_000_000


def test_gpt2_save_refuses_an_unknown_size(tmp_path):
    with pytest.raises(ValueError, match="unknown GPT-2 size 'huge'"):
        gpt2_save(tmp_path / "x", size="huge")


def test_random_token_streams_join_to_the_full_decode(tokenizer):
    generator = torch.Generator().manual_seed(0)
    vocabulary = len(tokenizer)
    for _ in range(200):
        tokens = torch.randint(
            1, vocabulary, (int(torch.randint(1, 40, (1,), generator=generator)),), generator=generator
        )
        ids = tokens.tolist()
        assert "".join(stream(tokenizer, ids)) == tokenizer.decode(ids)


def test_rows_with_different_cuts_in_one_batch_each_keep_their_own_head():
    probabilities = torch.tensor([0.05, 0.1, 0.15, 0.3, 0.4])
    logits = torch.log(probabilities).repeat(4, 1)
    params = [
        SamplingParams(temperature=1.0, top_k=2),
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=1.0, top_p=0.6),
        SamplingParams(temperature=1.0, top_k=4, top_p=0.5),
    ]
    generators = [torch.Generator().manual_seed(row) for row in range(4)]
    drawn: list[set[int]] = [set(), set(), set(), set()]
    for _ in range(400):
        for row, token in enumerate(batch_sample(logits, params, generators)):
            drawn[row].add(token)
    assert drawn == [{3, 4}, {0, 1, 2, 3, 4}, {3, 4}, {3, 4}]
    only_plain = [SamplingParams(temperature=1.0, top_k=2), SamplingParams(temperature=1.0, top_k=3)]
    seen = {tuple(batch_sample(logits[:2], only_plain, generators[:2])) for _ in range(300)}
    assert {row[0] for row in seen} == {3, 4} and {row[1] for row in seen} == {2, 3, 4}

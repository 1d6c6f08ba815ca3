"""The continuous-batching engine against `generate()`, on a tiny random GPT-2 built once per module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from inference.generation import Engine, EngineFull, FinishReason, GenerationRequest, SamplingParams
from inference.generation.engine import prefill_groups
from portal.text_models import gpt2_save

PROMPTS = [
    "Paris is",
    "The model answers questions about the portal",
    "Hi",
    "日本語のテキスト",
    "Write a short poem about the sea and the wind. Write a short poem about",
    "Café crème",
]
GREEDY = SamplingParams(max_tokens=20, temperature=0.0)


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    directory = gpt2_save(Path(tmp_path_factory.mktemp("gpt2")) / "tiny", size="tiny")
    return AutoModelForCausalLM.from_pretrained(directory).eval(), AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def reference(lm) -> dict[str, list[int]]:
    """`generate(do_sample=False)` of each prompt alone: the tokens the engine must reproduce."""
    model, tokenizer = lm
    out = {}
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        generated = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=GREEDY.max_tokens
        )
        out[prompt] = generated[0, ids.shape[1] :].tolist()
    return out


def run(engine: Engine, joins: dict[int, list[GenerationRequest]] | None = None) -> dict[int, dict[str, Any]]:
    """Step until idle, submitting `joins[k]` after step k; per sequence its tokens, text pieces, outputs."""
    results: dict[int, dict[str, Any]] = {}
    step = 0
    while engine.has_work() or any(k >= step for k in (joins or {})):
        for output in engine.step():
            result = results.setdefault(output.sequence_id, {"tokens": [], "pieces": [], "outputs": []})
            result["tokens"] += output.token_ids
            result["pieces"].append(output.text)
            result["outputs"].append(output)
        step += 1
        for request in (joins or {}).get(step, []):
            engine.submit(request)
    return results


def test_greedy_output_equals_generate_at_batch_one(lm, reference):
    model, tokenizer = lm
    for prompt in PROMPTS:
        engine = Engine(model, tokenizer, max_sequences=1)
        sequence = engine.submit(GenerationRequest(prompt, GREEDY))
        result = run(engine)[sequence]
        assert result["tokens"] == reference[prompt]
        assert "".join(result["pieces"]) == tokenizer.decode(reference[prompt])


def test_greedy_outputs_equal_generate_with_sequences_joining_mid_flight(lm, reference):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=8)
    first = [engine.submit(GenerationRequest(prompt, GREEDY)) for prompt in PROMPTS[:2]]
    later = {
        3: [GenerationRequest(p, GREEDY) for p in PROMPTS[2:4]],
        7: [GenerationRequest(p, GREEDY) for p in PROMPTS[4:]],
    }
    results = run(engine, later)
    assert first == [0, 1]
    for sequence, prompt in enumerate(PROMPTS):
        assert results[sequence]["tokens"] == reference[prompt], prompt
        assert "".join(results[sequence]["pieces"]) == tokenizer.decode(reference[prompt])
        assert results[sequence]["outputs"][-1].finish_reason == FinishReason.LENGTH


def test_greedy_request_among_sampled_ones_still_equals_generate(lm, reference):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=8)
    hot = [
        SamplingParams(max_tokens=20, temperature=1.5, seed=1),
        SamplingParams(max_tokens=20, temperature=0.7, top_k=3, seed=2),
        SamplingParams(max_tokens=20, temperature=1.0, top_p=0.5, seed=3),
    ]
    for params in hot[:2]:
        engine.submit(GenerationRequest(PROMPTS[1], params))
    greedy = engine.submit(GenerationRequest(PROMPTS[0], GREEDY))
    engine.submit(GenerationRequest(PROMPTS[2], hot[2]))
    assert run(engine)[greedy]["tokens"] == reference[PROMPTS[0]]


def test_a_seed_reproduces_its_sample_alone_or_in_a_batch_and_seeds_differ(lm):
    model, tokenizer = lm
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=7)
    alone = Engine(model, tokenizer)
    sequence = alone.submit(GenerationRequest(PROMPTS[0], params))
    tokens = run(alone)[sequence]["tokens"]

    crowded = Engine(model, tokenizer)
    crowded.submit(GenerationRequest(PROMPTS[1], SamplingParams(max_tokens=16, temperature=1.2, seed=8)))
    later = {2: [GenerationRequest(PROMPTS[0], params), GenerationRequest(PROMPTS[0], GREEDY)]}
    results = run(crowded, later)
    other = Engine(model, tokenizer)
    different = other.submit(GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=16, temperature=1.0, seed=8)))
    assert results[1]["tokens"] == tokens
    assert run(other)[different]["tokens"] != tokens


def test_top_k_one_samples_the_greedy_tokens(lm, reference):
    model, tokenizer = lm
    engine = Engine(model, tokenizer)
    sequence = engine.submit(GenerationRequest(PROMPTS[3], SamplingParams(max_tokens=20, temperature=1.9, top_k=1)))
    assert run(engine)[sequence]["tokens"] == reference[PROMPTS[3]]


def test_stop_string_cuts_the_text_before_it_and_ends_the_sequence(lm, reference):
    model, tokenizer = lm
    full = tokenizer.decode(reference[PROMPTS[1]])
    stop = full[6:10]
    engine = Engine(model, tokenizer)
    sequence = engine.submit(
        GenerationRequest(PROMPTS[1], SamplingParams(max_tokens=20, temperature=0.0, stop=(stop,)))
    )
    result = run(engine)[sequence]
    assert "".join(result["pieces"]) == full[: full.find(stop)]
    assert result["outputs"][-1].finish_reason == FinishReason.STOP
    assert len(result["tokens"]) < 20
    assert result["tokens"] == reference[PROMPTS[1]][: len(result["tokens"])]


def test_max_tokens_ends_with_finish_reason_length(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer)
    one = engine.submit(GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=1, temperature=0.0)))
    five = engine.submit(GenerationRequest(PROMPTS[2], SamplingParams(max_tokens=5, temperature=0.0, logprobs=True)))
    results = run(engine)
    assert [len(results[one]["tokens"]), len(results[five]["tokens"])] == [1, 5]
    last = results[five]["outputs"][-1]
    assert last.finish_reason == FinishReason.LENGTH and last.completion_tokens == 5
    assert all(o.logprobs is not None and len(o.logprobs) == 1 and o.logprobs[0] <= 0 for o in results[five]["outputs"])
    assert results[one]["outputs"][-1].finish_reason == FinishReason.LENGTH
    assert engine.stats()["running"] == 0


def test_streamed_text_equals_final_decode_for_sampled_byte_soup(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=16)
    for seed in range(16):
        engine.submit(GenerationRequest(PROMPTS[3], SamplingParams(max_tokens=24, temperature=2.0, seed=seed)))
    results = run(engine)
    texts = [tokenizer.decode([t for t in r["tokens"] if t != tokenizer.eos_token_id]) for r in results.values()]
    assert ["".join(r["pieces"]) for r in results.values()] == texts
    # Random weights emit lone bytes: some outputs hold replacement characters, no piece starts mid-character.
    assert any("\ufffd" in text for text in texts)


def test_cancellation_frees_the_slot_within_one_step(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=2)
    a, b, c = (engine.submit(GenerationRequest(p, GREEDY)) for p in PROMPTS[:3])
    engine.step()
    engine.step()
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 1
    assert engine.cancel(a)
    outputs = {o.sequence_id: o for o in engine.step()}
    assert outputs[a].finish_reason == FinishReason.CANCELLED and outputs[a].token_ids == ()
    assert c in outputs  # admitted in the same step
    assert [s.id for s in engine.running] == [b, c]
    assert not engine.cancel(a)


def test_cancelling_a_waiting_request_removes_it_from_the_queue(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=1)
    engine.submit(GenerationRequest(PROMPTS[0], GREEDY))
    waiting = engine.submit(GenerationRequest(PROMPTS[1], GREEDY))
    assert engine.cancel(waiting)
    outputs = engine.step()
    assert [(o.sequence_id, o.finish_reason) for o in outputs if o.finish_reason] == [(waiting, FinishReason.CANCELLED)]
    assert engine.stats()["waiting"] == 0


def test_budget_caps_running_sequences_and_queues_the_rest(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=2)
    for prompt in PROMPTS[:5]:
        engine.submit(GenerationRequest(prompt, GREEDY))
    engine.step()
    assert engine.stats()["running"] == 2 and engine.stats()["waiting"] == 3
    # A token budget for about one sequence (prompt + 20) admits one at a time.
    tight = Engine(model, tokenizer, max_sequences=8, max_tokens=40)
    for prompt in PROMPTS[:3]:
        tight.submit(GenerationRequest(prompt, GREEDY))
    tight.step()
    assert tight.stats()["running"] == 1 and tight.stats()["reserved_tokens"] <= 40
    peak = 0
    while tight.has_work():
        tight.step()
        peak = max(peak, tight.stats()["reserved_tokens"])
    assert peak <= 40


def test_submit_refuses_when_the_waiting_queue_is_full(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_sequences=1, max_waiting=2)
    engine.submit(GenerationRequest(PROMPTS[0], GREEDY))
    engine.submit(GenerationRequest(PROMPTS[1], GREEDY))
    with pytest.raises(EngineFull, match="2 requests are waiting"):
        engine.submit(GenerationRequest(PROMPTS[2], GREEDY))
    engine.step()  # one is admitted: there is room in the queue again
    engine.submit(GenerationRequest(PROMPTS[2], GREEDY))


def test_submit_refuses_requests_that_can_never_run(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, max_tokens=100)
    with pytest.raises(ValueError, match="context of 512 tokens"):
        engine.submit(GenerationRequest([5] * 500, SamplingParams(max_tokens=20)))
    with pytest.raises(ValueError, match="cache budget of 100"):
        engine.submit(GenerationRequest([5] * 90, SamplingParams(max_tokens=20)))
    with pytest.raises(ValueError, match="empty"):
        engine.submit(GenerationRequest([], SamplingParams()))


def test_a_long_prompt_is_prefilled_in_chunks_while_running_streams_keep_decoding(lm):
    model, tokenizer = lm
    long_prompt = tokenizer(" ".join(PROMPTS) * 20)["input_ids"][:300]
    assert len(long_prompt) == 300
    ids = torch.tensor([long_prompt])
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20)
    engine = Engine(model, tokenizer, prefill_tokens=64)
    running = engine.submit(GenerationRequest(PROMPTS[0], SamplingParams(max_tokens=40, temperature=0.0)))
    engine.step()
    long = engine.submit(GenerationRequest(long_prompt, GREEDY))
    chunked_steps = 0
    while engine.stats()["prefilling"] or chunked_steps == 0:
        outputs = {o.sequence_id: o for o in engine.step()}
        assert len(outputs[running].token_ids) == 1  # the running stream gets its token every step
        chunked_steps += 1
    assert chunked_steps == 5  # 300 tokens in chunks of 64: the fifth reads the rest and emits
    results = run(engine)
    assert [outputs[long].token_ids[0], *results[long]["tokens"]] == expected[0, 300:].tolist()


def test_cancelling_a_prompt_being_prefilled_in_chunks_frees_its_reservation(lm):
    model, tokenizer = lm
    engine = Engine(model, tokenizer, prefill_tokens=16)
    sequence = engine.submit(GenerationRequest(list(range(5, 105)), GREEDY))
    assert engine.step() == []
    assert engine.stats()["prefilling"] == 1 and engine.stats()["reserved_tokens"] == 120
    assert engine.cancel(sequence)
    (output,) = engine.step()
    assert output.finish_reason == FinishReason.CANCELLED
    assert engine.stats()["reserved_tokens"] == 0 and not engine.has_work()


def test_end_of_sequence_token_ends_with_stop_like_generate(lm, reference):
    model, tokenizer = lm
    tokens = reference[PROMPTS[3]]
    eos = next(t for t in tokens[1:] if t not in tokens[:1])  # a token greedy decoding reaches after a few steps
    ids = tokenizer(PROMPTS[3], return_tensors="pt")["input_ids"]
    expected = model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20, eos_token_id=eos, pad_token_id=0
    )[0, ids.shape[1] :].tolist()
    engine = Engine(model, tokenizer, eos_token_ids=[eos])
    sequence = engine.submit(GenerationRequest(PROMPTS[3], GREEDY))
    other = engine.submit(GenerationRequest(PROMPTS[0], GREEDY))
    results = run(engine)
    assert results[sequence]["tokens"] == expected[: expected.index(eos) + 1]
    assert results[sequence]["outputs"][-1].finish_reason == FinishReason.STOP
    assert "".join(results[sequence]["pieces"]) == tokenizer.decode(results[sequence]["tokens"][:-1])
    assert len(results[other]["tokens"]) == 20 or results[other]["tokens"][-1] == eos


def test_greedy_outputs_equal_generate_for_a_llama_style_model(lm):
    """Rotary positions and grouped-query attention: the padded batch cache keeps each row's own positions."""
    _, tokenizer = lm
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        model = LlamaForCausalLM(config).eval()
    expected = {}
    for prompt in PROMPTS[:4]:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16)
        expected[prompt] = out[0, ids.shape[1] :].tolist()
    engine = Engine(model, tokenizer, prefill_tokens=8)  # the longer prompts are read in chunks
    params = SamplingParams(max_tokens=16, temperature=0.0)
    engine.submit(GenerationRequest(PROMPTS[0], params))
    results = run(engine, {2: [GenerationRequest(p, params) for p in PROMPTS[1:4]]})
    assert [results[i]["tokens"] for i in range(4)] == [expected[p] for p in PROMPTS[:4]]


def test_prefill_groups_keep_padding_small_and_cover_every_prompt():
    lengths = [3, 19, 4, 18, 5, 17, 3]
    groups = prefill_groups(lengths)
    assert sorted(row for group in groups for row in group.rows) == list(range(len(lengths)))
    for group in groups:
        assert group.width == max(lengths[row] for row in group.rows)
        real = sum(lengths[row] for row in group.rows)
        assert group.width * len(group.rows) <= 1.25 * real
    padded = sum(group.width * len(group.rows) for group in groups)
    assert padded < 19 * len(lengths) * 0.6  # against one forward padded to the longest
    assert [group.rows for group in prefill_groups([7, 7, 7])] == [[0, 1, 2]]
    assert prefill_groups([]) == []

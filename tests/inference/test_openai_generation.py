"""Completions and chat completions shaped: requests checked, answers and stream chunks built (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import InvalidInput
from inference import openai_generation as shaping
from inference.generation.messages import Output
from inference.routes import Target
from registry.access import PREDICTOR


def generative(**fields: Any) -> Target:
    values: dict[str, Any] = {
        "version_id": 5, "model_name": "gpt", "version": 2, "status": "ready", "format": "huggingface",
        "signature": {}, "queue": "inference", "max_batch_size": 1, "max_batch_delay_ms": 0, "ready_versions": (2,),
        "model_id": 1, "actions": PREDICTOR, "task": "text-generation", "max_tokens_default": 16,
        "max_tokens_limit": 100, "context_length": 128, "chat_template": True,
    }  # fmt: skip
    return Target(**(values | fields))


def test_a_completion_request_takes_a_prompt_and_openai_s_sampling_fields():
    call = shaping.completion_request(
        {"model": "gpt:2", "prompt": ["Once upon"], "max_tokens": 8, "temperature": 0, "top_p": 0.5, "top_k": 4,
         "seed": 7, "stop": "\n", "n": 1, "stream": True, "stream_options": {"include_usage": True}, "logprobs": 2,
         "user": "u", "frequency_penalty": 0, "presence_penalty": 0.0}
    )  # fmt: skip
    assert (call.kind, call.model, call.prompt, call.messages, call.max_tokens) == ("completion", "gpt:2",
                                                                                     "Once upon", None, 8)  # fmt: skip
    assert (call.temperature, call.top_p, call.top_k, call.seed, call.stop) == (0.0, 0.5, 4, 7, ("\n",))
    assert call.stream and call.include_usage and call.logprobs == 2
    assert shaping.generation_params(generative(), call) == {
        "max_tokens": 8, "temperature": 0.0, "top_p": 0.5, "top_k": 4, "stop": ["\n"], "logprobs": True, "seed": 7,
        "max_tokens_implicit": False,
    }  # fmt: skip


def test_defaults_come_from_openai_and_the_model():
    call = shaping.completion_request({"model": "gpt", "prompt": "x"})
    assert (call.temperature, call.top_p, call.top_k, call.stream, call.logprobs) == (1.0, 1.0, 0, False, None)
    params = shaping.generation_params(generative(max_tokens_default=12), call)
    assert params == {
        "max_tokens": 12,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "stop": [],
        "logprobs": False,
        "max_tokens_implicit": True,
    }


def test_a_chat_request_takes_text_turns_and_the_newer_max_completion_tokens():
    call = shaping.chat_request(
        {"model": "gpt", "max_tokens": 90, "max_completion_tokens": 5, "logprobs": True, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}],
             "name": "ada"},
            {"role": "assistant", "content": ""},
        ]}
    )  # fmt: skip
    assert call.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": ""},
    ]
    assert call.max_tokens == 5 and call.logprobs == 0 and call.prompt is None


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ([], None, "must be a JSON object"),
        ({"prompt": "x"}, "model", "You must provide a model"),
        ({"model": "m"}, "prompt", "You must provide a prompt"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt", "holds 2 texts"),
        ({"model": "m", "prompt": [1, 2]}, "prompt", "token ids is not supported"),
        ({"model": "m", "prompt": 3}, "prompt", "must be a string"),
        ({"model": "m", "prompt": ""}, "prompt", "is empty"),
        ({"model": "m", "prompt": "x", "n": 2}, "n", "n=2 is not supported"),
        ({"model": "m", "prompt": "x", "temperature": 2.5}, "temperature", "between 0 and 2"),
        ({"model": "m", "prompt": "x", "temperature": "hot"}, "temperature", "must be a number"),
        ({"model": "m", "prompt": "x", "top_p": 0}, "top_p", "above 0 and at most 1"),
        ({"model": "m", "prompt": "x", "top_p": 1.5}, "top_p", "above 0 and at most 1"),
        ({"model": "m", "prompt": "x", "top_k": -1}, "top_k", "at least 0"),
        ({"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens", "positive integer"),
        ({"model": "m", "prompt": "x", "seed": -1}, "seed", "seed must be an integer"),
        ({"model": "m", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"model": "m", "prompt": "x", "stop": [""]}, "stop", "non-empty string"),
        ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs", "from 0 to 5"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, "stream", "true or false"),
        ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options",
         "only allowed when stream is true"),
        ({"model": "m", "prompt": "x", "frequency_penalty": 0.5}, "frequency_penalty", "not supported (only 0)"),
        ({"model": "m", "prompt": "x", "presence_penalty": 1}, "presence_penalty", "not supported (only 0)"),
        ({"model": "m", "prompt": "x", "best_of": 2}, "best_of", "Unrecognized request argument supplied: best_of"),
    ],
)  # fmt: skip
def test_bad_completion_requests_name_the_field(body, param, fragment):
    with pytest.raises(InvalidInput) as caught:
        shaping.completion_request(body)
    assert fragment in caught.value.message and caught.value.field == param, caught.value.message


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (None, "non-empty list"),
        ([], "non-empty list"),
        (["hi"], "messages[0] must be an object"),
        ([{"role": "tool", "content": "42"}], "unknown role 'tool'"),
        ([{"content": "hi"}], "unknown role None"),
        ([{"role": "user", "content": 3}], "string or a list of text parts"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "only text parts"),
        ([{"role": "user", "content": "hi", "tool_calls": []}], "unsupported fields: tool_calls"),
    ],
)
def test_bad_chats_name_the_turn_and_the_problem(messages, fragment):
    with pytest.raises(InvalidInput) as caught:
        shaping.chat_request({"model": "m", "messages": messages})
    assert fragment in caught.value.message and caught.value.field == "messages", caught.value.message


def test_chat_refuses_top_logprobs_it_cannot_give():
    with pytest.raises(InvalidInput, match="top_logprobs above 0 is not supported"):
        shaping.chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})


def test_the_model_must_generate_fit_the_limit_and_have_a_chat_template_for_chats():
    completion = shaping.completion_request({"model": "bert", "prompt": "x", "max_tokens": 101})
    with pytest.raises(InvalidInput, match="is a fill-mask model; completions and chat completions need"):
        shaping.generation_params(generative(task="fill-mask"), completion)
    with pytest.raises(InvalidInput, match="is a torchscript \\(tensor\\) model"):
        shaping.generation_params(generative(task="", format="torchscript"), completion)
    with pytest.raises(InvalidInput, match="max_tokens=101 is over the maximum of 100 tokens") as caught:
        shaping.generation_params(generative(), completion)
    assert caught.value.field == "max_tokens"
    chat = shaping.chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(InvalidInput, match=r"has no chat template.*use /v1/completions"):
        shaping.generation_params(generative(chat_template=False), chat)
    long_chat = shaping.chat_request(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 500}
    )
    with pytest.raises(InvalidInput, match="max_completion_tokens=500 is over the maximum of 100"):
        shaping.generation_params(generative(), long_chat)


def _outputs() -> list[Output]:
    return [
        Output("r", "Hel", [1, 2], None, 2, [-0.5, -0.25]),
        Output("r", "", [3], None, 3, [-1.0]),
        Output("r", "lo", [4], "length", 4, [-2.0]),
    ]


def test_a_completion_answer_has_text_finish_reason_usage_and_logprobs():
    shaper = shaping.Shaper(shaping.completion_request({"model": "gpt:2", "prompt": "x", "logprobs": 1}))
    for output in _outputs():
        shaper.add(output)
    answer = shaper.response(prompt_tokens=6)
    assert answer["id"].startswith("cmpl-") and answer["object"] == "text_completion" and answer["model"] == "gpt:2"
    (choice,) = answer["choices"]
    assert (choice["text"], choice["finish_reason"], choice["index"]) == ("Hello", "length", 0)
    assert choice["logprobs"] == {
        "tokens": ["Hel", "", "", "lo"], "token_logprobs": [-0.5, -0.25, -1.0, -2.0],
        "top_logprobs": [{"Hel": -0.5}, {"": -0.25}, {"": -1.0}, {"lo": -2.0}], "text_offset": [0, 0, 3, 3],
    }  # fmt: skip
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}


def test_a_chat_answer_is_an_assistant_message():
    call = shaping.chat_request({"model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    shaper = shaping.Shaper(call)
    for output in [*_outputs()[:2], Output("r", "lo", [4], "stop", 4)]:
        shaper.add(output)
    answer = shaper.response(prompt_tokens=3)
    assert answer["id"].startswith("chatcmpl-") and answer["object"] == "chat.completion"
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert answer["usage"]["total_tokens"] == 7


def test_chat_chunks_open_with_the_role_skip_empty_steps_and_end_with_the_reason():
    call = shaping.chat_request({"model": "gpt", "messages": [{"role": "user", "content": "x"}], "stream": True,
                                 "stream_options": {"include_usage": True}})  # fmt: skip
    shaper = shaping.Shaper(call)
    chunks = [shaper.chunk(output) for output in _outputs()]
    assert chunks[1] is None
    first, last = chunks[0], chunks[2]
    assert first is not None and last is not None
    assert first["object"] == "chat.completion.chunk" and first["id"] == last["id"] == shaper.id
    assert first["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "logprobs": None,
                                 "finish_reason": None}]  # fmt: skip
    assert last["choices"][0]["delta"] == {"content": "lo"} and last["choices"][0]["finish_reason"] == "length"
    usage = shaper.usage_chunk(prompt_tokens=2)
    assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 4,
                                                         "total_tokens": 6}  # fmt: skip


def test_a_first_chat_step_without_text_still_sends_the_role():
    shaper = shaping.Shaper(shaping.chat_request({"model": "g", "messages": [{"role": "user", "content": "x"}]}))
    chunk = shaper.chunk(Output("r", "", [9], None, 1))
    assert chunk is not None and chunk["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    final = shaper.chunk(Output("r", "", [], "stop", 1))
    assert final is not None and final["choices"][0]["delta"] == {} and final["choices"][0]["finish_reason"] == "stop"


def test_completion_chunks_carry_text_and_their_tokens_logprobs():
    shaper = shaping.Shaper(shaping.completion_request({"model": "g", "prompt": "x", "stream": True, "logprobs": 0}))
    first = shaper.chunk(_outputs()[0])
    assert first is not None and first["object"] == "text_completion"
    assert first["choices"][0]["text"] == "Hel" and first["choices"][0]["logprobs"] == {
        "tokens": ["Hel", ""], "token_logprobs": [-0.5, -0.25], "top_logprobs": None, "text_offset": [0, 0],
    }  # fmt: skip


def test_server_sent_events_are_data_lines():
    assert shaping.sse({"a": "é"}) == b'data: {"a":"\xc3\xa9"}\n\n'
    assert json.loads(shaping.sse({"x": 1})[6:]) == {"x": 1}
    assert shaping.SSE_DONE == b"data: [DONE]\n\n"

"""In-process generation throughput: the continuous-batching engine against `generate()`.

    .venv/bin/python -m bench.generation_engine [--sizes tiny small] [--tokens 64] [--threads 1]

For each locally built random GPT-2 (portal.text_models.gpt2_save) and batch 1 and 32:
`generate()` on one left-padded batch (the limit: no arrivals, no departures) and the
engine with every request submitted at once, stepped until all finish. Greedy, max_tokens
new tokens per request (generate() is held to exactly that many), prompts of 6-20 tokens.
Output tokens per second, one torch thread by default. With --transformers-cb, also
transformers' own continuous batching in-process (`generate_batch` with an explicit cache
cap: on CPU it otherwise sizes its cache from the machine's RAM).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.utils import logging as hf_logging

from inference.generation import Engine, GenerationRequest, SamplingParams
from portal.text_models import GPT2_CORPUS, gpt2_save

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


def prompts(tokenizer: object, count: int) -> list[list[int]]:
    """`count` prompts of 6 to 20 tokens cut from the training corpus."""
    ids = [token for text in GPT2_CORPUS for token in tokenizer(text)["input_ids"]]  # type: ignore[operator]
    span = len(ids) - 24
    return [ids[i * 7 % span : i * 7 % span + 6 + i % 15] for i in range(count)]


def generate_rate(model: object, tokenizer: object, batch: list[list[int]], tokens: int) -> float:
    width = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(  # type: ignore[attr-defined]
            ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens
        )
    return len(batch) * tokens / (time.perf_counter() - start)


def transformers_cb_rate(model: object, batch: list[list[int]], tokens: int) -> float:
    """transformers' continuous batching (its manager thread, paged cache capped at 64 pages of 32)."""
    config = GenerationConfig(
        max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    cap = ContinuousBatchingConfig(num_blocks=64, max_batch_tokens=512, page_size=32)
    start = time.perf_counter()
    out = model.generate_batch(batch, generation_config=config, continuous_batching_config=cap)  # type: ignore[attr-defined]
    produced = sum(len(output.generated_tokens) for output in out.values())
    return produced / (time.perf_counter() - start)


def engine_rate(model: object, tokenizer: object, batch: list[list[int]], tokens: int) -> tuple[float, float]:
    """Tokens per second and the mean time to first token (s)."""
    engine = Engine(model, tokenizer, max_sequences=len(batch), max_tokens=len(batch) * 1024)
    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    start = time.perf_counter()
    for prompt in batch:
        engine.submit(GenerationRequest(prompt, params))
    produced = 0
    first: dict[int, float] = {}
    while engine.has_work():
        for output in engine.step():
            produced += len(output.token_ids)
            first.setdefault(output.sequence_id, time.perf_counter() - start)
    return produced / (time.perf_counter() - start), sum(first.values()) / len(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--transformers-cb", action="store_true", help="also measure transformers' generate_batch")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="bench-gen-"))
    header = f"{'model':6} {'batch':>5} {'generate tok/s':>15} {'engine tok/s':>13} {'ratio':>6} {'engine TTFT ms':>15}"
    print(header + (f" {'transformers CB tok/s':>22}" if args.transformers_cb else ""))
    for size in args.sizes:
        directory = gpt2_save(root / size, size=size)
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
        engine_rate(model, tokenizer, prompts(tokenizer, 2), 4)  # warm-up
        if args.transformers_cb:
            transformers_cb_rate(model, prompts(tokenizer, 2), 4)
        for batch_size in (1, 32):
            batch = prompts(tokenizer, batch_size)
            reference = generate_rate(model, tokenizer, batch, args.tokens)
            rate, ttft = engine_rate(model, tokenizer, batch, args.tokens)
            ratio = rate / reference
            line = f"{size:6} {batch_size:>5} {reference:>15.0f} {rate:>13.0f} {ratio:>6.2f} {ttft * 1000:>15.1f}"
            if args.transformers_cb:
                line += f" {transformers_cb_rate(model, batch, args.tokens):>22.0f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()

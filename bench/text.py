"""Text-model benchmark: the portal serving Hugging Face models against in-process torch and
a naive server, in one run, with one load generator (wrk).

Models: a small BERT (4 layers, 256 hidden, a WordPiece tokenizer trained here on the
benchmark's own sentences) as a sentence-embedding model (`BertModel`, mean pooling,
normalised) and as a two-class classifier (`BertForSequenceClassification`). Requests carry
one sentence of 8-64 tokens, mixed lengths, round-robin over 256 sentences
(bench/wrk/texts.lua), as OIP v2 JSON with a BYTES `text` input, at 1 and 32 connections.

(a) in-process: tokenizer + forward (+ pooling) at batch 1 and at batch 32 (the limit), and
    the transformers `pipeline()` for the classifier at batch 1 and 32; batch 32 both padded
    to the batch's longest in arrival order and sorted by length ("bucket"), and padded to
    the model maximum ("pad to max");
(b) the naive server: bench/reference_text.py (Starlette, the model per request) under
    `uvicorn --workers 2`;
(c) the portal (embedded default: SQLite + embedded Redis): `uvicorn portal.asgi
    --workers 2` + one Celery worker, padding-aware batching ("bucket"), then the same
    worker restarted with INFERENCE_TEXT_PADDING=max_length for the c=32 comparison.
Each server's first answer is checked against the in-process outputs (atol 1e-4).
Every process runs one torch thread.

    .venv/bin/python bench/text.py [--duration 8] [--only embeddings,classification]
                                   [--worker-concurrency 2] [--skip-naive] [--keep]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import (
    PYTHON,
    ROOT,
    Processes,
    base_env,
    embedded_redis,
    free_port,
    http_request,
    uvicorn_argv,
    wait_until,
    worker_argv,
    wrk_parse,
)

sys.path.insert(0, str(ROOT))

from transformers.utils import logging as hf_logging

from portal.text_models import bert_build, tokenizer_train

hf_logging.disable_progress_bar()

TASKS = {"embeddings": "feature-extraction", "classification": "text-classification"}
OUTPUTS = {"embeddings": "embedding", "classification": "scores"}
LUA = ROOT / "bench" / "wrk" / "texts.lua"
CONCURRENCY = (1, 32)
SENTENCES = 256
ATOL = 1e-4
WORDS = (  # noqa: SIM905
    "the a model portal serves language text request answer team fast slow small large worker queue batch token "
    "sentence paris france capital city river mountain data train test score label good bad great terrible movie "
    "product review service price quality delivery support customer happy sad because while after before during "
    "every some many few quickly slowly really quite very again never always often seldom under over between "
    "through across weather morning evening night summer winter spring autumn coffee tea bread music book film"
).split()


@dataclass
class Result:
    label: str
    model: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    processes: Processes
    sentences: list[str] = field(default_factory=list)
    dirs: dict[str, Path] = field(default_factory=dict)
    zips: dict[str, Path] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)
    results: list[Result] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    # -- preparation ---------------------------------------------------------------------
    def prepare(self) -> None:
        torch.set_num_threads(1)
        rng = random.Random(0)
        raw = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 58))) + "." for _ in range(SENTENCES * 4)]
        tokenizer = tokenizer_train(raw, vocab_size=2000, max_length=128)
        # Keep sentences of 8-64 tokens (with [CLS] and [SEP]), mixed.
        self.sentences = [s for s in raw if 8 <= len(tokenizer(s)["input_ids"]) <= 64][:SENTENCES]
        lengths = [len(tokenizer(s)["input_ids"]) for s in self.sentences]
        print(f"{len(self.sentences)} sentences of {min(lengths)}-{max(lengths)} tokens "
              f"(mean {statistics.fmean(lengths):.1f})")  # fmt: skip
        for name in self.args.only:
            model = bert_build(TASKS[name], tokenizer, hidden=256, layers=4, heads=4, seed=1)
            directory = self.work / name
            model.save_pretrained(directory, safe_serialization=True)
            tokenizer.save_pretrained(directory)
            self.dirs[name] = directory
            self.zips[name] = Path(shutil.make_archive(str(self.work / f"{name}-hf"), "zip", directory))
            params = sum(p.numel() for p in model.parameters())
            print(f"  {name}: {TASKS[name]}, {params / 1e6:.2f} M parameters")
        bodies = [json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [s]}]})
                  for s in self.sentences]  # fmt: skip
        (self.work / "bodies.txt").write_text("\n".join(bodies) + "\n")

    # -- (a) in-process --------------------------------------------------------------------
    def in_process(self) -> None:
        print("\n(a) in-process, 1 torch thread")
        for name in self.args.only:
            self.limits[name] = figures = self.in_process_one(name)
            print(f"  {name}: " + ", ".join(f"{key} {value:,.2f}" for key, value in figures.items()))

    def in_process_one(self, name: str) -> dict[str, float]:
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, pipeline

        tokenizer = AutoTokenizer.from_pretrained(self.dirs[name])
        auto = AutoModel if name == "embeddings" else AutoModelForSequenceClassification
        model = auto.from_pretrained(self.dirs[name]).eval()

        def run(texts: list[str], padding: Any = True) -> np.ndarray:
            encoded = tokenizer(texts, padding=padding, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                out = model(**encoded)
            if name == "classification":
                return torch.softmax(out.logits, dim=-1).numpy()
            mask = encoded["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1).numpy()

        self.expected[name] = run([self.sentences[0]])
        chunks = [self.sentences[i : i + 32] for i in range(0, SENTENCES, 32)]
        ordered = sorted(self.sentences, key=len)
        buckets = [ordered[i : i + 32] for i in range(0, SENTENCES, 32)]
        figures = {
            "batch1_ms": _median_ms(lambda i: run([self.sentences[i % SENTENCES]]), 1.5),
            "batch32_items": 32000 / _median_ms(lambda i: run(chunks[i % len(chunks)]), 2.0),
            "bucket32_items": 32000 / _median_ms(lambda i: run(buckets[i % len(buckets)]), 2.0),
            "padmax32_items": 32000 / _median_ms(lambda i: run(chunks[i % len(chunks)], "max_length"), 2.0),
        }
        if name == "classification":
            classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)
            figures["pipeline1_ms"] = _median_ms(lambda i: classify(self.sentences[i % SENTENCES]), 1.5)
            figures["pipeline32_items"] = 32000 / _median_ms(
                lambda i: classify(chunks[i % len(chunks)], batch_size=32), 2.0
            )
        return figures

    # -- HTTP loads --------------------------------------------------------------------------
    def check(self, label: str, name: str, port: int, token: str | None) -> None:
        body = json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                       "data": [self.sentences[0]]}]}).encode()  # fmt: skip
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        status, _, content = http_request(port, "POST", f"/v2/models/{name}/infer", body, headers)
        if status != 200:
            raise RuntimeError(f"{label} {name}: HTTP {status}: {content[:300]!r}")
        outputs = {o["name"]: o for o in json.loads(content)["outputs"]}
        got = np.asarray(outputs[OUTPUTS[name]]["data"], dtype=np.float32).reshape(self.expected[name].shape)
        if not np.allclose(got, self.expected[name], atol=ATOL, rtol=0):
            self.problems.append(f"{label} {name}: output differs from in-process (max |d| "
                                 f"{np.max(np.abs(got - self.expected[name])):.2e})")  # fmt: skip
            print(f"  CORRECTNESS FAIL {label} {name}")
        else:
            print(f"  correct: {label} {name}")

    def load(self, label: str, name: str, port: int, token: str | None, concurrency: tuple[int, ...]) -> None:
        self.wrk(port, name, token, 32, max(2.0, self.args.duration / 3))  # warm-up, unmeasured
        for connections in concurrency:
            result = self.wrk(port, name, token, connections, self.args.duration)
            row = Result(label, name, connections, result.rps, result.p50_ms, result.p99_ms, result.errors)
            self.results.append(row)
            errors = f"  errors: {result.error_text()}" if result.errors else ""
            print(f"  {label:<28} {name:<14} c={connections:<2} {result.rps:>8,.1f} req/s  p50 {result.p50_ms:7.2f} ms"
                  f"  p99 {result.p99_ms:7.2f} ms{errors}")  # fmt: skip
            if result.errors:
                self.problems.append(f"{label} {name} c={connections}: {result.error_text()}")

    def wrk(self, port: int, name: str, token: str | None, connections: int, seconds: float) -> Any:
        env = base_env() | {"BENCH_BODIES_FILE": str(self.work / "bodies.txt"), "BENCH_TOKEN": token or ""}
        argv = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout",
                "10s", "--latency", "-s", str(LUA), f"http://127.0.0.1:{port}/v2/models/{name}/infer"]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
        return wrk_parse(done.stdout)

    # -- (b) naive server ------------------------------------------------------------------
    def naive(self) -> None:
        print("\n(b) naive server: Starlette + the model per request, uvicorn --workers 2")
        port = free_port()
        env = base_env() | {"BENCH_TEXT_MODELS": ",".join(f"{n}={self.dirs[n]}" for n in self.args.only)}
        server = self.processes.start("naive", uvicorn_argv("bench.reference_text:application", port), env)
        try:
            wait_until(lambda: http_request(port, "GET", "/")[0] > 0, server, "naive server")
            for name in self.args.only:
                self.check("naive", name, port, None)
            for name in self.args.only:
                self.load("naive", name, port, None, CONCURRENCY)
        finally:
            self.processes.stop([server])

    # -- (c) the portal --------------------------------------------------------------------
    def portal(self) -> None:
        print(f"\n(c) portal, embedded: uvicorn portal.asgi --workers 2 + celery worker "
              f"--concurrency {self.args.worker_concurrency}")  # fmt: skip
        data = self.work / "portal"
        data.mkdir()
        env = base_env() | {"PORTAL_DATA_DIR": str(data)}
        started = [embedded_redis(self.processes, env)]
        setup = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "text_setup.py"),
             *(f"{n}={TASKS[n]}={self.zips[n]}" for n in self.args.only)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        (self.work / "logs" / "setup.log").write_text(setup.stdout + setup.stderr)
        if setup.returncode != 0:
            raise RuntimeError(f"portal setup failed:\n{setup.stderr[-3000:]}")
        info = json.loads(setup.stdout.strip().splitlines()[-1])
        token = info["token"]
        for name, details in info["models"].items():
            figures = details["validation"]
            print(f"  {name} v{details['version']}: validated on {figures.get('device')}, "
                  f"{figures.get('parameter_count', 0) / 1e6:.2f} M parameters, max_batch_size "
                  f"{details['max_batch_size']}")  # fmt: skip
        port = free_port()
        try:
            web = self.processes.start("web", uvicorn_argv("portal.asgi:application", port), env)
            started.append(web)
            wait_until(lambda: http_request(port, "GET", "/v2/health/live")[0] == 200, web, "portal web server")
            for padding, concurrency in (("bucket", CONCURRENCY), ("max_length", (32,))):
                worker = self.processes.start(
                    f"worker-{padding}",
                    worker_argv(self.args.worker_concurrency, log_level="WARNING"),
                    env | {"INFERENCE_TEXT_PADDING": padding},
                )  # fmt: skip
                try:
                    for name in self.args.only:
                        wait_until(lambda n=name: self.ready(port, n, token), worker, f"worker serving {name}")
                        self.check(f"portal {padding}", name, port, token)
                    for name in self.args.only:
                        self.load(f"portal ({padding})", name, port, token, concurrency)
                finally:
                    self.processes.stop([worker])
        finally:
            self.processes.stop(started)

    def ready(self, port: int, name: str, token: str) -> bool:
        status, _, _ = http_request(port, "GET", f"/v2/models/{name}/ready", None, {"Authorization": f"Bearer {token}"})
        return status == 200

    def find(self, label: str, name: str, connections: int) -> Result | None:
        return next((r for r in self.results if r.label == label and r.model == name and r.connections == connections),
                    None)  # fmt: skip

    def report(self) -> int:
        print("\n== summary (req/s = sentences/s; one sentence per request)")
        failures: list[str] = []
        for name in self.args.only:
            limit = self.limits[name]
            # The limit: a batch of 32 as it arrives (padded to its longest), by hand or by pipeline().
            # The globally sorted batches ("bucket32") are an oracle no server sees; shown for padding.
            best32 = max(limit["batch32_items"], limit.get("pipeline32_items", 0.0))
            batch1_ms = limit["batch1_ms"]
            portal32, portal1 = self.find("portal (bucket)", name, 32), self.find("portal (bucket)", name, 1)
            naive32 = self.find("naive", name, 32)
            padmax32 = self.find("portal (max_length)", name, 32)
            print(f"  {name}: in-process batch 1 {batch1_ms:.2f} ms ({1000 / batch1_ms:,.0f}/s), batch-32 limit "
                  f"{best32:,.0f}/s")  # fmt: skip
            if portal32 is not None:
                print(f"    portal c=32 {portal32.rps:,.0f}/s = {portal32.rps / best32:.0%} of the batch-32 limit"
                      + (f", {portal32.rps / naive32.rps:.2f}x the naive server ({naive32.rps:,.0f}/s)" if naive32
                         else ""))  # fmt: skip
                if portal32.rps < 0.6 * best32:
                    failures.append(f"{name}: c=32 below 60 % of the in-process batch-32 limit")
                if naive32 is not None and portal32.rps < 2 * naive32.rps:
                    failures.append(f"{name}: c=32 below 2x the naive server")
            if portal1 is not None:
                gap = portal1.p50_ms - batch1_ms
                print(f"    portal c=1 p50 {portal1.p50_ms:.2f} ms = in-process batch 1 + {gap:.2f} ms")
                if gap > 1.5:
                    failures.append(f"{name}: c=1 p50 more than 1.5 ms over in-process batch 1")
            if portal32 is not None and padmax32 is not None:
                print(f"    padding: bucket {portal32.rps:,.0f}/s vs pad-to-max {padmax32.rps:,.0f}/s "
                      f"({portal32.rps / padmax32.rps:.2f}x); in-process batch 32: arrival order "
                      f"{limit['batch32_items']:,.0f}/s, sorted {limit['bucket32_items']:,.0f}/s, pad-to-max "
                      f"{limit['padmax32_items']:,.0f}/s")  # fmt: skip
                if portal32.rps <= padmax32.rps:
                    failures.append(f"{name}: padding-aware batching not faster than pad-to-max")
        for problem in self.problems:
            print(f"  PROBLEM: {problem}")
        for failure in failures:
            print(f"  TARGET MISSED: {failure}")
        if not failures and not self.problems:
            print("  every target met")
        return 1 if self.problems else 0


def _median_ms(call: Any, budget: float) -> float:
    """Median milliseconds of `call(i)` over calls for about `budget` seconds (after a warm-up)."""
    for i in range(5):
        call(i)
    samples, i = [], 0
    deadline = time.perf_counter() + budget
    while time.perf_counter() < deadline or len(samples) < 10:
        started = time.perf_counter()
        call(i)
        samples.append((time.perf_counter() - started) * 1000)
        i += 1
    return statistics.median(samples)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured load")
    parser.add_argument("--only", default=",".join(TASKS), help="embeddings,classification")
    # Two serving processes: the model is compute-bound and the naive server computes in two.
    parser.add_argument("--worker-concurrency", type=int, default=2, help="serving processes of the portal worker")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-portal", action="store_true", help="references only (checks the harness)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    args.only = [name for name in args.only.split(",") if name]
    unknown = set(args.only) - set(TASKS)
    if unknown:
        parser.error(f"unknown model(s) {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="maas-text-bench-"))
    (work / "logs").mkdir()
    processes = Processes(work / "logs")
    bench = Bench(args, work, processes)
    try:
        bench.prepare()
        bench.in_process()
        if not args.skip_naive:
            bench.naive()
        if not args.skip_portal:
            bench.portal()
        return bench.report()
    finally:
        processes.stop()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

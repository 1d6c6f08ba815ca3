"""Generation benchmark: the portal's streaming /v1/completions against in-process generate()
and `transformers serve`, in one run, with one load generator (bench/loadgen.py).

Models: two random-weight GPT-2s built here by portal.text_models.gpt2_save, `tiny` (~1 M
parameters) and `small` (~60 M), each with its locally trained byte-level BPE tokenizer and
chat template. Every request: a streamed `POST /v1/completions`, temperature 0, max_tokens
64, `stream_options.include_usage`, prompts of 3-12 words cut from the tokenizer's corpus;
the prompts whose greedy continuation reaches end-of-sequence within 64 tokens in-process
are left out, so every server generates the same count (random models have no `ignore_eos`
here). Concurrency 1, 8 and 32; output tokens/s from the tokens received (usage of the last
chunk), TTFT p50/p99, inter-token latency p50 ((last - first token) / (tokens - 1) per
request), errors.

(a) in-process `generate()` (greedy, exactly 64 new tokens) at batch 1 and at batch 32 (the
    limit: one left-padded batch, no arrivals or departures); also the portal's own engine
    (inference.generation.Engine) stepping 32 sequences in-process, with its forward time
    per step, for the profile;
(b) `transformers serve <model dir>` (HF_HUB_OFFLINE=1) with `--continuous-batching` and an
    explicit cache cap (--cb-num-blocks/--cb-block-size/--cb-max-batch-tokens; uncapped on
    CPU it sizes its cache from the machine's RAM), and without it;
(c) the portal (embedded default: SQLite + embedded Redis): `uvicorn portal.asgi --workers
    2` + one Celery worker (one serving process), each model uploaded as a `text-generation`
    version; then py-spy samples the worker and the gateways during an extra, unmeasured
    c=32 load per model: where the time goes.
Every process runs one torch thread. Prints a table, the target ratios and the profile, and
writes the figures as JSON (--json, default bench-generation.json in the work directory,
which is kept with --keep).

    .venv/bin/python bench/generation.py [--only tiny,small] [--skip-serve] [--skip-portal]
                                         [--no-profile] [--json PATH] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from harness import (
    PYTHON,
    ROOT,
    Processes,
    Server,
    base_env,
    children,
    cmdline,
    cpu_meter,
    embedded_redis,
    free_port,
    http_request,
    interrupts_as_keyboard,
    uvicorn_argv,
    wait_until,
    worker_argv,
)
from loadgen import Level, run_level

sys.path.insert(0, str(ROOT))

from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from inference.generation import Detokenizer, Engine, GenerationRequest, SamplingParams
from portal.text_models import GPT2_CORPUS, directory_zip, gpt2_save

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

SIZES = ("tiny", "small")
MAX_TOKENS = 64
PROMPTS = 32
CANDIDATES = 64
# Requests per level (a closed loop of `c` clients). A level is cut after 3x the time its
# tokens take at the in-process rate (batch 1 at c=1, else batch 32; at least 15 s); streams
# still running then count as unfinished (`cut`), their tokens so far as received.
REQUESTS = {"tiny": {1: 8, 8: 32, 32: 64}, "small": {1: 2, 8: 8, 32: 32}}
CAP_FACTOR, CAP_MIN_SECONDS = 3.0, 15.0
# transformers serve without continuous batching runs one request at a time: c=1 and c=32
# only, one request per client and a 15 s cap (its TTFT at c=32 is censored by the cap).
SERIAL = {"tiny": {1: 8, 32: 32}, "small": {1: 2, 32: 32}}
CAP_SECONDS_SERIAL = 15.0
# transformers serve's paged cache: 128 pages of 32 tokens = 4,096 positions, room for 32
# sequences of prompt + 64 tokens (the portal's own cap is GENERATION_MAX_CACHE_TOKENS).
CB_FLAGS = ["--cb-num-blocks", "128", "--cb-block-size", "32", "--cb-max-batch-tokens", "512"]
COMPLETIONS = "/v1/completions"
SERVE = "transformers serve"


@dataclass
class Row:
    server: str
    model: str
    level: Level
    server_cores: float  # cores the servers this benchmark started used during the level
    other_cores: float  # cores busy with processes outside the benchmark (noise)

    def figures(self) -> dict[str, Any]:
        return {"server": self.server, "model": self.model} | self.level.figures() | {
            "server_cores": round(self.server_cores, 2), "other_cores": round(self.other_cores, 2)}  # fmt: skip


@dataclass
class Bench:
    args: argparse.Namespace
    work: Path
    processes: Processes
    dirs: dict[str, Path] = field(default_factory=dict)
    prompts: dict[str, list[str]] = field(default_factory=dict)
    limits: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    profile_text: list[str] = field(default_factory=list)
    profile_figures: dict[str, Any] = field(default_factory=dict)
    portal_info: dict[str, Any] = field(default_factory=dict)
    portal_servers: list[Server] = field(default_factory=list)
    web: Server | None = None
    worker: Server | None = None
    port: int = 0
    token: str = ""

    # -- preparation and (a) in-process ---------------------------------------------------
    def prepare(self) -> None:
        torch.set_num_threads(1)
        for size in self.args.only:
            self.dirs[size] = gpt2_save(self.work / "models" / size, size=size)

    def in_process(self, size: str) -> None:
        print(f"\n== {size}\n(a) in-process, 1 torch thread (greedy, 64 new tokens)")
        directory = self.dirs[size]
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory).eval()
        params = sum(p.numel() for p in model.parameters())
        self.limits[size] = figures = {"parameters": params}
        candidates = _candidate_prompts(CANDIDATES)
        _generate(model, tokenizer, candidates[:2], 4, exact=True)  # warm-up
        # The prompts: those whose greedy continuation runs 64 tokens without EOS and
        # streams a piece of text at every token (a random byte-level model often emits
        # lone UTF-8 bytes; a server holds those until the character completes, and a
        # stream that shows no text for many tokens has no meaningful TTFT or inter-token
        # latency). Checked on one left-padded batch of every candidate.
        _, rows = _generate(model, tokenizer, candidates, MAX_TOKENS, exact=False)
        kept = [p for p, row in zip(candidates, rows, strict=True) if _streams_cleanly(tokenizer, row)][:PROMPTS]
        if len(kept) < 4:
            raise RuntimeError(f"{size}: only {len(kept)} of {len(candidates)} prompts stream {MAX_TOKENS} tokens")
        self.prompts[size] = kept
        # Batch 32 (the limit): one left-padded batch of 32 of those, exactly 64 new tokens.
        batch = list(itertools.islice(itertools.cycle(kept), PROMPTS))
        # The best of runs over about --batch1-seconds (one run of `small` takes longer): the
        # machine is shared, and a limit is what it can do, not what it did once.
        best, spent = float("inf"), 0.0
        while spent < self.args.batch1_seconds:
            seconds, _ = _generate(model, tokenizer, batch, MAX_TOKENS, exact=True)
            best, spent = min(best, seconds), spent + seconds
        figures["batch32_tokens_per_second"] = PROMPTS * MAX_TOKENS / best
        # Batch 1: one prompt at a time, exactly 64 new tokens.
        spent, produced = 0.0, 0
        for prompt in itertools.cycle(kept):
            took, _ = _generate(model, tokenizer, [prompt], MAX_TOKENS, exact=True)
            spent, produced = spent + took, produced + MAX_TOKENS
            if spent >= self.args.batch1_seconds and produced >= 2 * MAX_TOKENS:
                break
        figures["batch1_tokens_per_second"] = produced / spent
        figures["batch1_inter_token_ms"] = 1000 * spent / produced
        figures |= _engine_rate(model, tokenizer, kept, PROMPTS)
        lengths = [len(tokenizer(p)["input_ids"]) for p in kept]
        f = figures
        print(f"  {size}: {params / 1e6:.2f} M parameters; {len(kept)} prompts of {len(candidates)} stream "
              f"{MAX_TOKENS} tokens, text at each, no EOS ({min(lengths)}-{max(lengths)} prompt tokens);\n"
              f"    generate() batch 1 {f['batch1_tokens_per_second']:,.0f} tok/s, batch 32 "
              f"{f['batch32_tokens_per_second']:,.0f} tok/s; portal engine in-process x32 "
              f"{f['engine32_tokens_per_second']:,.0f} tok/s (step "
              f"{f['engine32_step_ms']:.2f} ms, of which forward {f['engine32_forward_ms']:.2f} ms)")  # fmt: skip

    def bodies(self, size: str, model: str, max_tokens: int = MAX_TOKENS) -> Iterator[dict[str, Any]]:
        for prompt in itertools.cycle(self.prompts[size]):
            yield {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}}  # fmt: skip

    # -- the load ------------------------------------------------------------------------------
    def load(
        self,
        server: str,
        size: str,
        port: int,
        model: str,
        token: str | None,
        groups: set[int],
        *,
        serial: bool = False,
    ) -> None:
        """Warm-up, then each level; `groups`: the process groups of the server under test (CPU meter)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Warm-up, unmeasured and the same for every server: two whole requests, then (with
        # continuous batching) a wave of 32 short ones, so that the first c=32 level does not
        # pay for first-time allocations and kernels of a batch of 32.
        for concurrency, requests, max_tokens in ((2, 2, MAX_TOKENS), (32, 0 if serial else 32, 16)):
            warm = asyncio.run(run_level("127.0.0.1", port, COMPLETIONS, self.bodies(size, model, max_tokens),
                                         concurrency=concurrency, requests=requests, headers=headers,
                                         cap_seconds=120))  # fmt: skip
            if warm.errors:
                raise RuntimeError(f"{server} {size}: warm-up failed: {warm.figures()['first_errors']}")
        plan = SERIAL[size] if serial else REQUESTS[size]
        for concurrency, planned in plan.items():
            requests = max(concurrency, round(planned * self.args.scale))
            limit = self.limits[size]["batch1_tokens_per_second" if concurrency == 1 else "batch32_tokens_per_second"]
            cap = CAP_SECONDS_SERIAL if serial else max(CAP_MIN_SECONDS, CAP_FACTOR * requests * MAX_TOKENS / limit)
            own = resource.getrusage(resource.RUSAGE_SELF)
            with cpu_meter(groups) as cpu:
                level = asyncio.run(run_level(
                    "127.0.0.1", port, COMPLETIONS, self.bodies(size, model), concurrency=concurrency,
                    requests=requests, headers=headers, cap_seconds=cap,
                ))  # fmt: skip
            after = resource.getrusage(resource.RUSAGE_SELF)
            client = after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime
            # Cores busy outside this benchmark's servers and its load generator: the noise.
            others = max(0.0, cpu["other"] - client) / max(cpu["seconds"], 1e-9)
            row = Row(server, size, level, cpu["servers"] / max(cpu["seconds"], 1e-9), others)
            self.rows.append(row)
            f = row.figures()
            print(f"  {server:<24} {size:<5} c={concurrency:<2} {f['tokens_per_second']:>8,.1f} tok/s  TTFT p50 "
                  f"{_fmt(f['ttft_p50_ms'])} p99 {_fmt(f['ttft_p99_ms'])} ms  ITL p50 {_fmt(f['inter_token_p50_ms'])}"
                  f" ms  {f['finished']}/{f['requests']} done, {f['errors']} errors, {f['unfinished']} cut"
                  f"  tokens/request {f['tokens_per_request_min']}-{f['tokens_per_request_max']}"
                  f" (text chunks >= {f['text_chunks_per_request_min']})")  # fmt: skip
            if f["errors"]:
                self.problems.append(f"{server} {size} c={concurrency}: {f['errors']} errors {f['first_errors']}")
            if f["finished"] and f["tokens_per_request_min"] != MAX_TOKENS:
                self.problems.append(f"{server} {size} c={concurrency}: a request generated "
                                     f"{f['tokens_per_request_min']} tokens, not {MAX_TOKENS}")  # fmt: skip

    # -- (b) transformers serve -------------------------------------------------------------
    def serve(self, size: str, continuous: bool) -> None:
        missing = [name for name in ("fastapi", "accelerate") if importlib.util.find_spec(name) is None]
        if missing:
            problem = f"{SERVE} needs {', '.join(missing)}: pip install -e '.[bench]' (make bench-gen does)"
            if problem not in self.problems:
                self.problems.append(problem)
            print(f"(b) skipped: {problem}")
            return
        label = f"{SERVE} " + ("--cb" if continuous else "(no cb)")
        print(f"(b) {label}" + (f" {' '.join(CB_FLAGS)}" if continuous else ""))
        port = free_port()
        argv = [str(Path(PYTHON).parent / "transformers"), "serve", str(self.dirs[size]), "--host", "127.0.0.1",
                "--port", str(port), "--device", "cpu"]  # fmt: skip
        argv += ["--continuous-batching", *CB_FLAGS] if continuous else []
        env = base_env() | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        server = self.processes.start(f"serve-{size}-{'cb' if continuous else 'plain'}", argv, env)
        try:
            wait_until(lambda: http_request(port, "GET", "/health")[0] == 200, server, label, timeout=180)
            self.load(label, size, port, str(self.dirs[size]), None, {server.process.pid}, serial=not continuous)
        finally:
            self.processes.stop([server])

    # -- (c) the portal -------------------------------------------------------------------------
    def portal_start(self) -> None:
        """The portal on the embedded default, both models uploaded, validated and answering."""
        print(f"(c) portal, embedded: uvicorn portal.asgi --workers 2 + celery worker --concurrency "
              f"{self.args.worker_concurrency}, started first and idle while the references run")  # fmt: skip
        data = self.work / "portal"
        data.mkdir()
        env = base_env() | {"PORTAL_DATA_DIR": str(data)}
        self.portal_servers = [embedded_redis(self.processes, env)]
        archives = {size: directory_zip(self.dirs[size], self.work / f"{size}.zip") for size in self.args.only}
        setup = subprocess.run(
            [PYTHON, str(ROOT / "bench" / "text_setup.py"),
             *(f"{size}=text-generation={archives[size]}" for size in self.args.only)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        (self.work / "logs" / "setup.log").write_text(setup.stdout + setup.stderr)
        if setup.returncode != 0:
            raise RuntimeError(f"portal setup failed:\n{setup.stderr[-3000:]}")
        info = self.portal_info = json.loads(setup.stdout.strip().splitlines()[-1])
        self.token = info["token"]
        for size, details in info["models"].items():
            checked = details["validation"]
            print(f"  {size} v{details['version']}: validated on {checked.get('device')}, context "
                  f"{checked.get('context_length')}, chat template {checked.get('chat_template')}")  # fmt: skip
        self.port = port = free_port()
        self.web = self.processes.start("web", uvicorn_argv("portal.asgi:application", port), env)
        self.portal_servers.append(self.web)
        wait_until(lambda: http_request(port, "GET", "/v2/health/live")[0] == 200, self.web, "portal web server")
        self.worker = self.processes.start(
            "worker",
            worker_argv(self.args.worker_concurrency, log_level="WARNING"),
            env,
        )  # fmt: skip
        self.portal_servers.append(self.worker)
        for size in self.args.only:
            wait_until(lambda s=size: self.ready(port, s, self.token), self.worker, f"worker serving {size}", 180)

    def portal_load(self, size: str) -> None:
        if self.worker is None:
            return
        print("(c) portal")
        self.load("portal", size, self.port, size, self.token, {s.process.pid for s in self.portal_servers})

    def portal_profile(self) -> None:
        if self.worker is None or self.web is None or not self.args.profile:
            return
        for size in self.args.only:
            self.profile(size, self.port, self.web, self.worker, self.token)

    def portal_stop(self) -> None:
        self.processes.stop([s for s in self.portal_servers if s in self.processes.running])
        self.portal_servers = []

    def ready(self, port: int, size: str, token: str) -> bool:
        """The worker answers a one-token completion."""
        body = json.dumps({"model": size, "prompt": "Paris", "max_tokens": 1, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        status, _, content = http_request(port, "POST", COMPLETIONS, body, headers)
        if status in (400, 401, 403, 404, 405):
            raise RuntimeError(f"portal {COMPLETIONS} answers {status}: {content[:300]!r}")
        return status == 200

    # -- profile --------------------------------------------------------------------------------
    def profile(self, size: str, port: int, web: Server, worker: Server, token: str) -> None:
        """py-spy on the worker's serving process and both gateways during an extra c=32 load."""
        spy = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
        if spy is None:
            self.profile_text.append("py-spy is not installed: .venv/bin/pip install py-spy")
            return
        pool = children(worker.process.pid) or [worker.process.pid]
        gateways = [pid for pid in children(web.process.pid) if "spawn_main" in cmdline(pid)]
        targets = {"worker": pool[:1], **{f"gateway {i + 1}": [pid] for i, pid in enumerate(gateways[:2])}}
        seconds = 10 if size == "tiny" else 14
        spies: dict[str, tuple[subprocess.Popen[str], Path, int]] = {}
        for label, pids in targets.items():
            if not pids:
                continue
            output = self.work / f"profile-{size}-{label.replace(' ', '')}.txt"
            argv = [spy, "record", "--pid", str(pids[0]), "--duration", str(seconds), "--rate", "100", "--format",
                    "raw", "--threads", "--nonblocking", "--output", str(output)]  # fmt: skip
            spies[label] = (subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                            output, pids[0])  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"}
        time.sleep(0.5)
        level = asyncio.run(run_level("127.0.0.1", port, COMPLETIONS, self.bodies(size, size), concurrency=32,
                                      requests=10_000, headers=headers, cap_seconds=seconds - 1))  # fmt: skip
        self.profile_text.append(f"{size}, c=32 while sampling (perturbed by py-spy): "
                                 f"{level.tokens_per_second:,.0f} tok/s over {level.seconds:.1f} s")  # fmt: skip
        figures: dict[str, Any] = {"tokens_per_second": level.tokens_per_second}
        for label, (process, output, pid) in spies.items():
            try:
                log, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                log, _ = process.communicate()
            if process.returncode != 0 or not output.exists():
                self.profile_text.append(f"  {label} pid {pid}: py-spy could not sample it (exit "
                                         f"{process.returncode}): {log.strip()[-300:]}")  # fmt: skip
                continue
            breakdown = categorize(output.read_text())
            figures[label] = breakdown
            self.profile_text += _breakdown_lines(label, pid, breakdown, seconds * 100)
        self.profile_figures[size] = figures

    # -- report ---------------------------------------------------------------------------------
    def find(self, server: str, size: str, concurrency: int) -> dict[str, Any] | None:
        for row in self.rows:
            if row.server == server and row.model == size and row.level.concurrency == concurrency:
                return row.figures()
        return None

    def report(self) -> int:
        print(f"\n== generation, streaming {COMPLETIONS}, temperature 0, {MAX_TOKENS} tokens per request, 1 torch "
              f"thread, {os.cpu_count()} cores (tok/s = output tokens received / wall time of the level)")  # fmt: skip
        for size in self.args.only:
            limit = self.limits[size]
            print(f"\n{size.upper()} ({limit['parameters'] / 1e6:.2f} M parameters): in-process generate() batch 1 "
                  f"{limit['batch1_tokens_per_second']:,.0f} tok/s ({limit['batch1_inter_token_ms']:.2f} ms/token), "
                  f"batch 32 {limit['batch32_tokens_per_second']:,.0f} tok/s (the limit); the portal's engine "
                  f"in-process x32 {limit['engine32_tokens_per_second']:,.0f} tok/s")  # fmt: skip
            print(f"  {'server':<28} {'c':>3} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'errors':>6}"
                  f" {'cut':>4} {'done':>7} {'% limit':>8} {'cores':>6} {'others':>6}")  # fmt: skip
            for row in self.rows:
                if row.model != size:
                    continue
                f = row.figures()
                reference = limit["batch1_tokens_per_second" if f["concurrency"] == 1 else "batch32_tokens_per_second"]
                share = f"{f['tokens_per_second'] / reference:.0%}" if f["concurrency"] in (1, 32) else ""
                print(f"  {row.server:<28} {f['concurrency']:>3} {f['tokens_per_second']:>9,.1f} "
                      f"{_fmt(f['ttft_p50_ms']):>9} {_fmt(f['ttft_p99_ms']):>9} {_fmt(f['inter_token_p50_ms']):>8} "
                      f"{f['errors']:>6} {f['unfinished']:>4} {f['finished']:>3}/{f['requests']:<3} "
                      f"{share:>8} {f['server_cores']:>6.2f} {f['other_cores']:>6.2f}")  # fmt: skip
        print(
            "  (ms; ITL = inter-token latency, (last - first token) / (tokens - 1) per request; % limit: of "
            "generate() batch 1 at c=1, batch 32 at c=32; cut: streams still running at the level's cap;\n"
            "   cores: CPU of the servers under test (all their processes); others: cores busy outside this "
            f"benchmark (of {os.cpu_count()}), the noise)"
        )
        checks = self.checks()
        print("\nTarget checks (ratios measured in this run)")
        for name, passed, detail in checks:
            verdict = "n/a " if passed is None else ("PASS" if passed else "FAIL")
            print(f"  {verdict}  {name}: {detail}")
        if self.profile_text:
            print(
                "\nProfile (py-spy samples at 100 Hz during an extra c=32 load; a sample is charged to the first"
                " category found from the innermost frame out; C code counts to its Python caller)"
            )
            for line in self.profile_text:
                print(f"  {line}")
            self.profile_steps()
        for problem in self.problems:
            print(f"  PROBLEM: {problem}")
        self.write_json(checks)
        return 1 if self.problems else 0

    def checks(self) -> list[tuple[str, bool | None, str]]:
        checks: list[tuple[str, bool | None, str]] = []
        cb, plain = f"{SERVE} --cb", f"{SERVE} (no cb)"

        def ratio(
            name: str, size: str, got: dict[str, Any] | None, ref: float | None, target: float, what: str
        ) -> None:
            if got is None or not ref:
                checks.append((name, None, "not measured"))
                return
            value = got["tokens_per_second"] / ref
            checks.append((name, value >= target, f"{value:.2f}x ({got['tokens_per_second']:,.1f} vs {what} "
                                                 f"{ref:,.1f} tok/s)"))  # fmt: skip

        if "small" in self.args.only:
            portal32, serve32 = self.find("portal", "small", 32), self.find(cb, "small", 32)
            limit = self.limits["small"]
            ratio("small c=32 >= 1.2x transformers serve --cb", "small", portal32,
                  serve32["tokens_per_second"] if serve32 else None, 1.2, "serve --cb")  # fmt: skip
            ratio("small c=32 >= 85% of in-process batch-32 limit", "small", portal32,
                  limit["batch32_tokens_per_second"], 0.85, "generate() batch 32")  # fmt: skip
            name = "small c=32 TTFT p50 <= transformers serve --cb TTFT p50"
            if portal32 and serve32 and portal32["ttft_p50_ms"] is not None and serve32["ttft_p50_ms"] is not None:
                checks.append((name, portal32["ttft_p50_ms"] <= serve32["ttft_p50_ms"],
                               f"{portal32['ttft_p50_ms']:,.0f} vs {serve32['ttft_p50_ms']:,.0f} ms"))  # fmt: skip
            else:
                checks.append((name, None, "not measured"))
            ratio("small c=1 >= 0.9x in-process batch 1", "small", self.find("portal", "small", 1),
                  limit["batch1_tokens_per_second"], 0.9, "generate() batch 1")  # fmt: skip
        if "tiny" in self.args.only:
            serve32 = self.find(cb, "tiny", 32)
            ratio("tiny c=32 >= 2x transformers serve --cb", "tiny", self.find("portal", "tiny", 32),
                  serve32["tokens_per_second"] if serve32 else None, 2.0, "serve --cb")  # fmt: skip
            portal1 = self.find("portal", "tiny", 1)
            name = "tiny c=1 inter-token p50 <= transformers serve's (no cb / cb)"
            refs = [r for r in (self.find(plain, "tiny", 1), self.find(cb, "tiny", 1)) if r and r["inter_token_p50_ms"]]
            if portal1 and portal1["inter_token_p50_ms"] is not None and refs:
                best = min(r["inter_token_p50_ms"] for r in refs)
                checks.append((name, portal1["inter_token_p50_ms"] <= best,
                               f"{portal1['inter_token_p50_ms']:.2f} ms vs " +
                               " / ".join(f"{r['inter_token_p50_ms']:.2f}" for r in refs) + " ms"))  # fmt: skip
            else:
                checks.append((name, None, "not measured"))
        return checks

    def profile_steps(self) -> None:
        """Time per decoding step with 32 sequences: the engine in-process against the portal at c=32."""
        print("  per decoding step with 32 sequences (ms): in-process = the portal's engine stepping 32 sequences "
              "(forward + engine work);\n  portal steady = its inter-token p50 at c=32 (a step per token); portal "
              "overall = 32 / its c=32 tok/s (with the prefills of newcomers and the ramps)")  # fmt: skip
        for size in self.args.only:
            portal32 = self.find("portal", size, 32)
            limit = self.limits.get(size)
            if portal32 is None or limit is None or not portal32["tokens_per_second"]:
                continue
            overall = 1000 * 32 / portal32["tokens_per_second"]
            steady = portal32["inter_token_p50_ms"] or 0.0
            step, forward = limit["engine32_step_ms"], limit["engine32_forward_ms"]
            print(f"    {size}: in-process step {step:.2f} (forward {forward:.2f}, engine work {step - forward:.2f}: "
                  f"sampling, detokenizing, cache); portal steady {steady:.2f} => the hop (Redis round trip, events) "
                  f"and noise {steady - step:+.2f} per step ({(steady - step) / steady:.0%}); portal overall "
                  f"{overall:.2f}")  # fmt: skip

    def write_json(self, checks: list[tuple[str, bool | None, str]]) -> None:
        path = Path(self.args.json) if self.args.json else self.work / "bench-generation.json"
        document = {
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cores": os.cpu_count(),
            "torch_threads": 1,
            "max_tokens": MAX_TOKENS,
            "in_process": self.limits,
            "prompts": {size: len(prompts) for size, prompts in self.prompts.items()},
            "rows": [row.figures() for row in self.rows],
            "checks": [{"name": n, "passed": p, "detail": d} for n, p, d in checks],
            "profile": self.profile_figures,
            "problems": self.problems,
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nfigures written to {path}")


# --- in-process --------------------------------------------------------------------------------


def _candidate_prompts(count: int) -> list[str]:
    """`count` prompts of 3-12 words cut from the corpus the tokenizers were trained on."""
    words = " ".join(GPT2_CORPUS).split()
    return [" ".join(words[(i * 5 + j) % len(words)] for j in range(3 + i % 10)) for i in range(count)]


def _generate(
    model: Any, tokenizer: Any, prompts: list[str], tokens: int, *, exact: bool
) -> tuple[float, list[list[int]]]:
    """Seconds of one greedy generate() over the left-padded batch, and each row's new tokens."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id or 0
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    extra = {"min_new_tokens": tokens} if exact else {}
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=tokens, **extra)
    return time.perf_counter() - start, out[:, width:].tolist()


def _streams_cleanly(tokenizer: Any, tokens: list[int]) -> bool:
    """Whether a continuation has MAX_TOKENS tokens, no end-of-sequence, and text at every token."""
    detokenizer = Detokenizer(tokenizer)
    eos = tokenizer.eos_token_id
    return len(tokens) == MAX_TOKENS and eos not in tokens and all(detokenizer.push(t) for t in tokens)


class _ForwardTimer:
    """Wraps a model's forward (an instance attribute: nn.Module.__call__ finds it) and adds up its time."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.inner = model.forward
        self.seconds = 0.0
        model.forward = self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def remove(self) -> None:
        del self.model.forward


def _engine_rate(model: Any, tokenizer: Any, prompts: list[str], batch: int) -> dict[str, float]:
    """The portal's engine stepping `batch` sequences submitted at once: tok/s and ms per step (with forward)."""
    timed = _ForwardTimer(model)
    engine = Engine(model, tokenizer, max_sequences=batch, max_tokens=batch * 1024)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    for prompt in itertools.islice(itertools.cycle(prompts), batch):
        engine.submit(GenerationRequest(prompt, params))
    produced, steps, decode_seconds, decode_forward = 0, 0, 0.0, 0.0
    start = time.perf_counter()
    first = True
    while engine.has_work():
        before, forward_before = time.perf_counter(), timed.seconds
        outputs = engine.step()
        produced += sum(len(o.token_ids) for o in outputs)
        # Steps after the prefill, while all `batch` sequences decode.
        if not first and len(outputs) == batch:
            steps += 1
            decode_seconds += time.perf_counter() - before
            decode_forward += timed.seconds - forward_before
        first = False
    total = time.perf_counter() - start
    timed.remove()
    return {
        "engine32_tokens_per_second": produced / total,
        "engine32_step_ms": 1000 * decode_seconds / max(steps, 1),
        "engine32_forward_ms": 1000 * decode_forward / max(steps, 1),
    }


# --- profile -----------------------------------------------------------------------------------

# The first rule matched from the innermost frame outwards names a sample's category.
# py-spy names frames `function (path:line)`, the path relative to site-packages, the
# standard library or the working directory.
CATEGORIES = (
    ("Redis client (round trips, pipelines)", re.compile(r"[(/]redis/")),
    ("detokenize / tokenize", re.compile(r"generation/detokenizer\.py|[(/]tokenizers/|tokenization_utils")),
    ("messages encode/decode", re.compile(r"generation/messages\.py|[(/]msgpack/|[(/]orjson")),
    ("model forward (torch, transformers)", re.compile(r"[(/]torch/|[(/]transformers/")),
    ("engine (sampling, cache, bookkeeping)", re.compile(r"generation/engine\.py|generation/sampling\.py")),
    ("generation loop (worker)", re.compile(r"generation/worker\.py")),
    ("gateway: generation client, OpenAI shaping, SSE",
     re.compile(r"inference/openai|generation/client\.py|inference/gateway\.py")),
    ("ASGI server (uvicorn, starlette)", re.compile(r"[(/]uvicorn/|[(/]starlette/|httptools|[(/]h11/")),
    ("Django (auth, views, ORM)", re.compile(r"[(/]django/|[(/]rest_framework/|[(]accounts/|[(]registry/")),
    ("monitoring, telemetry", re.compile(r"[(]monitoring/|inference/telemetry|prometheus_client")),
    ("asyncio event loop", re.compile(r"[(/]asyncio/|uvloop")),
    ("Celery, kombu", re.compile(r"[(/]celery/|[(/]kombu/|[(/]billiard/")),
)  # fmt: skip


def categorize(raw: str) -> dict[str, Any]:
    """Busy samples per category and per thread, from py-spy's raw output (recorded with --threads)."""
    categories: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames.pop(0) if frames[0].startswith("thread (") else "?"
        threads[re.sub(r"^thread \(0x[0-9a-fA-F]+\)|^thread \(\d+\)", "", thread).strip(" :") or thread] += int(count)
        name = "other"
        for frame in reversed(frames):
            found = next((label for label, pattern in CATEGORIES if pattern.search(frame)), None)
            if found:
                name = found
                break
        categories[name] += int(count)
    return {"samples": sum(categories.values()), "categories": dict(categories.most_common()),
            "threads": dict(threads.most_common(4))}  # fmt: skip


def _breakdown_lines(label: str, pid: int, breakdown: dict[str, Any], expected: int) -> list[str]:
    total = breakdown["samples"]
    lines = [f"  {label} (pid {pid}): busy {100 * total / expected:.0f}% of one core"]
    if total:
        lines.append(
            "    " + ", ".join(f"{name} {100 * n / total:.0f}%" for name, n in breakdown["categories"].items())
        )
        lines.append("    threads: " + ", ".join(f"{name or '?'} {100 * n / expected:.0f}%"
                                                 for name, n in breakdown["threads"].items()))  # fmt: skip
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SIZES), help="tiny,small")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the requests per level")
    parser.add_argument("--batch1-seconds", type=float, default=3.0, help="in-process batch-1 measuring time")
    parser.add_argument("--worker-concurrency", type=int, default=1, help="serving processes of the portal worker")
    parser.add_argument("--skip-serve", action="store_true", help="no transformers serve references")
    parser.add_argument("--skip-portal", action="store_true", help="references only (checks the harness)")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy profile")
    parser.add_argument("--json", default="", help="where to write the figures (default: the work directory)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    args.only = [name for name in args.only.split(",") if name]
    if set(args.only) - set(SIZES):
        parser.error(f"unknown model size(s) {sorted(set(args.only) - set(SIZES))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="maas-generation-bench-"))
    (work / "logs").mkdir()
    processes = Processes(work / "logs")
    bench = Bench(args, work, processes)
    started = time.monotonic()
    try:
        with interrupts_as_keyboard():
            bench.prepare()
            if not args.skip_portal:
                try:
                    bench.portal_start()
                except RuntimeError as error:
                    bench.problems.append(f"portal: {error}")
                    print(f"  PORTAL FAILED: {error}")
                    bench.portal_stop()
                    bench.worker = None
            # Per model, the references and the portal one after the other, so that the
            # ratios compare figures measured minutes apart at most on a shared machine.
            for size in args.only:
                bench.in_process(size)
                if not args.skip_serve:
                    bench.serve(size, continuous=True)
                bench.portal_load(size)
                if not args.skip_serve:
                    bench.serve(size, continuous=False)
            bench.portal_profile()
            bench.portal_stop()
            return bench.report()
    finally:
        processes.stop()
        print(f"whole run: {time.monotonic() - started:.0f} s")
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

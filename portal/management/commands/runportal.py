"""manage.py runportal: everything a single machine needs, in one command.

Starts the embedded Redis (unless a broker is configured), migrates, seeds the demo,
then runs a Celery worker, Celery beat (housekeeping), the web server and the gRPC
server (Open Inference Protocol v2 on GRPC_BIND, unless turned off) as child processes
until Ctrl-C.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.embedded import embedded_redis_start
from monitoring import metrics
from portal.demo_monitoring import demo_traffic


def uses_embedded_broker() -> bool:
    return f"redis+socket://{settings.EMBEDDED_REDIS_SOCKET}" == settings.CELERY_BROKER_URL


def static_collect(python: str) -> dict[str, str]:
    """Collect the static files (hashed names, gzip/brotli copies) and return the web server's environment.

    Only what changed since the last start is copied and compressed again. A deployment that
    already collects (STATIC_COLLECTED) is left as it is.
    """
    env = dict(os.environ)
    if settings.STATIC_COLLECTED:
        return env
    env["STATIC_COLLECTED"] = "1"
    # Compressing takes tens of seconds: skipped while the sources are those collected last time.
    stamp = Path(settings.STATIC_ROOT) / ".sources"
    sources = static_sources_fingerprint()
    if stamp.is_file() and stamp.read_text() == sources:
        return env
    command = [python, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"]
    subprocess.run(command, env=env, check=True, cwd=settings.BASE_DIR)
    stamp.write_text(sources)
    return env


def static_sources_fingerprint() -> str:
    """A digest of every static source file's path, size and modification time (what the finders see)."""
    digest = hashlib.sha256()
    for finder in finders.get_finders():
        for path, storage in sorted(finder.list([]), key=lambda item: item[0]):
            info = os.stat(storage.path(path))
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Run the portal (web server, worker, beat and, by default, an embedded Redis) with demo data."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("PORTAL_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORTAL_PORT", "8000")))
        parser.add_argument("--concurrency", type=int, default=1, help="Worker processes for Celery.")
        parser.add_argument("--web-workers", type=int, default=2, help="Web (uvicorn) worker processes.")
        parser.add_argument("--no-seed", action="store_true", help="Skip the demo user and model.")
        parser.add_argument("--grpc-bind", default=settings.GRPC_BIND,
                            help="host:port of the gRPC server (default GRPC_BIND); '' or 0 for none.")  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        # Stop the children on SIGTERM too (systemd, `timeout`, a container stop), not only Ctrl-C.
        signal.signal(signal.SIGTERM, _interrupt)
        children: list[subprocess.Popen[bytes]] = []
        if uses_embedded_broker():
            redis = embedded_redis_start(settings.EMBEDDED_REDIS_SOCKET)
            if redis is not None:
                children.append(redis)
            self.stdout.write(f"Embedded Redis on {settings.EMBEDDED_REDIS_SOCKET}")
        try:
            call_command("migrate", interactive=False, verbosity=0)
            if not options["no_seed"]:
                call_command("seed_demo", stdout=self.stdout)
            # Prometheus value files of an earlier run would be summed with this one's.
            metrics.multiprocess_dir_reset()
            python = sys.executable
            worker = [python, "-m", "celery", "-A", "portal", "worker", "--queues", "default,inference"]
            worker += ["--concurrency", str(options["concurrency"]), "--loglevel", "INFO", "--hostname", "portal@%h"]
            children.append(subprocess.Popen(worker))
            # Housekeeping (stale-run sweeps, metric retention) on Celery beat: its own process,
            # as in production (one beat per deployment, workers scale on their own), with its
            # schedule state under the data directory rather than the working directory.
            schedule = Path(settings.DATA_DIR) / "celerybeat-schedule"
            beat = [python, "-m", "celery", "-A", "portal", "beat", "--schedule", str(schedule), "--loglevel", "INFO"]
            children.append(subprocess.Popen(beat))
            # One ASGI app serves both planes: Django (pages, REST API) and the prediction
            # gateway under /v2 (portal/asgi.py), with static files collected: hashed,
            # compressed, cached for a year.
            web_env = static_collect(python)
            web = subprocess.Popen([
                python, "-m", "uvicorn", "portal.asgi:application", "--host", options["host"],
                "--port", str(options["port"]), "--workers", str(options["web_workers"]),
                "--no-access-log", "--lifespan", "off",
            ], env=web_env)  # fmt: skip
            children.append(web)
            grpc_bind = "" if options["grpc_bind"] in ("", "0") else options["grpc_bind"]
            grpc_server = None
            if grpc_bind:
                # Its own processes (as many as the web server's), one port between them.
                grpc_server = subprocess.Popen([
                    python, "manage.py", "grpcserve", "--bind", grpc_bind, "--processes", str(options["web_workers"]),
                ], env=web_env, cwd=settings.BASE_DIR)  # fmt: skip
                children.append(grpc_server)
            url = f"http://{options['host']}:{options['port']}/"
            self._wait_for(url + "healthz", web)
            if grpc_server is not None:
                self._wait_for_port(grpc_bind, grpc_server)
            if not options["no_seed"]:
                admin = get_user_model().objects.get(username=settings.DEMO_USERNAME)
                threading.Thread(target=demo_traffic, args=(url, admin), daemon=True).start()
            self.stdout.write(self.style.SUCCESS(f"\nMaaS Portal is running at {url}"))
            if not options["no_seed"]:
                self.stdout.write(f"  Log in as {settings.DEMO_USERNAME} / {settings.DEMO_PASSWORD}")
            if grpc_bind:
                self.stdout.write(f"  gRPC (Open Inference Protocol v2): {grpc_bind}")
            self.stdout.write(f"  API docs: {url}api/v1/docs/   Admin: {url}admin/\n  Press Ctrl-C to stop.\n")
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            failed = next(child for child in children if child.poll() is not None)
            raise CommandError(
                f"{failed.args[0] if isinstance(failed.args, list) else failed.args!r} exited with {failed.returncode}"
            )
        except KeyboardInterrupt:
            self.stdout.write("Stopping…")
        finally:
            for child in reversed(children):
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in reversed(children):
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()

    def _wait_for_port(self, bind: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        """Wait until something accepts connections on `bind` (host:port)."""
        host, _, port = bind.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
            host = "127.0.0.1"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise CommandError(f"The gRPC server exited with {process.returncode} (is {bind} in use?)")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"The gRPC server did not listen on {bind} within {timeout:.0f}s")

    def _wait_for(self, url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise CommandError(f"The web server exited with {process.returncode} (is the port in use?)")
            try:
                with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own http:// URL
                    return
            except OSError:
                time.sleep(0.2)
        raise CommandError(f"The web server did not answer on {url} within {timeout:.0f}s")

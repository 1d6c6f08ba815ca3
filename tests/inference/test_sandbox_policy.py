"""The sandbox's pieces, each proven in a real child process that restricts itself and then tries."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import redis

from core.embedded import redis_server_binary
from inference.sandbox import policy
from inference.sandbox.spawn import host_environment, host_policy, host_settings, host_start, redis_socket_fd
from tests.worker import until

ROOT = Path(__file__).resolve().parents[2]

needs_landlock = pytest.mark.skipif(
    policy.landlock_abi() < 1 or policy.arch() is None,
    reason="the kernel has no Landlock (or no seccomp table for this machine)",
)


def _restricted(tmp_path: Path, attempt: str, **extra: Any) -> dict[str, Any]:
    """Run `attempt` (Python that fills `found`) in a child after sandbox_apply; returns `found`."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    rules = host_policy([], scratch)
    script = (
        textwrap.dedent(f"""
        import json, os, socket, sys
        from pathlib import Path
        from inference.sandbox import policy
        rules = json.loads({json.dumps(json.dumps(rules))})
        policy.sandbox_apply(policy.Policy(read=[Path(p) for p in rules["read"]],
            write=[Path(p) for p in rules["write"]], list_only=[Path(p) for p in rules["list_only"]]))
        found = {{}}
        def attempt(name, action):
            try:
                found[name] = repr(action())
            except Exception as exc:
                found[name] = "refused: " + type(exc).__name__ + ": " + str(exc)
    """)
        + textwrap.dedent(attempt)
        + "\nprint(json.dumps(found))\n"
    )
    environment = {**host_environment(scratch), **extra}
    result = subprocess.run([sys.executable, "-c", script], env=environment, cwd=scratch, capture_output=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def test_environment_holds_only_allowed_names(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRET_KEY", "portal-secret")
    monkeypatch.setenv("DATABASE_URL", "postgres://user:pw@db/portal")
    monkeypatch.setenv("ARTIFACT_S3_SECRET_ACCESS_KEY", "s3-secret")
    environment = host_environment(tmp_path)
    assert not {"SECRET_KEY", "DATABASE_URL", "ARTIFACT_S3_SECRET_ACCESS_KEY"} & set(environment)
    assert "secret" not in json.dumps(environment)
    assert environment["HOME"] == environment["TMPDIR"] == str(tmp_path) and environment["HF_HUB_OFFLINE"] == "1"


def test_settings_given_to_a_host_hold_no_secret_and_no_redis_password(settings, tmp_path):
    settings.INFERENCE_REDIS_URL = "redis://:hunter2@10.1.2.3:6390/5"
    values = host_settings(tmp_path)
    text = json.dumps(values)
    assert settings.SECRET_KEY not in text and "hunter2" not in text and "10.1.2.3" not in text
    assert values["INFERENCE_REDIS_URL"] == "redis://sandbox:6379/5"
    assert "DATABASES" not in values and "STORAGES" not in values


@needs_landlock
def test_files_outside_the_allowed_directories_cannot_be_read(tmp_path, settings):
    canary = tmp_path / "canary.txt"
    canary.write_text("canary-7f3a")
    secret = Path(settings.DATA_DIR) / "secret_key"
    secret.write_text("portal-secret-key")
    found = _restricted(tmp_path, f"""
        attempt("canary", lambda: open({str(canary)!r}).read())
        attempt("secret", lambda: open({str(secret)!r}).read())
        attempt("environ", lambda: open("/proc/self/environ", "rb").read())
        attempt("parent_environ", lambda: open(f"/proc/{{os.getppid()}}/environ", "rb").read())
        attempt("settings", lambda: open({str(ROOT / "portal" / "settings.py")!r}).read())
        attempt("passwd", lambda: open("/etc/passwd").read())
        attempt("scratch", lambda: (Path("x").write_text("ok"), Path("x").read_text()))
        attempt("package", lambda: len(open({str(ROOT / "inference" / "wire.py")!r}).read()) > 0)
    """, SECRET_KEY="in-the-environment")  # fmt: skip
    for name in ("canary", "secret", "environ", "parent_environ", "settings", "passwd"):
        assert found[name].startswith("refused: PermissionError"), (name, found[name])
    assert found["scratch"] == "(2, 'ok')" and found["package"] == "True"


@needs_landlock
def test_no_socket_can_be_opened_and_nothing_executed(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        found = _restricted(tmp_path, f"""
            for family in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"):
                attempt(family, lambda: socket.socket(getattr(socket, family)).close())
            attempt("connect", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
            attempt("pair", lambda: socket.socketpair())
            attempt("exec", lambda: os.execv("/bin/true", ["true"]))
            attempt("signal_parent", lambda: os.kill(os.getppid(), 0))
        """)  # fmt: skip
    for name in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET", "connect", "pair", "exec",
                 "signal_parent"):  # fmt: skip
        assert found[name].startswith("refused:"), (name, found[name])
    assert "Operation not permitted" in found["AF_INET"]


def test_the_seccomp_program_refuses_each_denied_call_and_foreign_architectures():
    table = policy.ARCHES["x86_64"]
    code = policy._seccomp_program(table)
    instructions = [code[i : i + 8] for i in range(0, len(code), 8)]
    # arch check, nr load, x32 check, one jump per refused call, allow, refuse
    assert len(instructions) == 4 + 1 + len(set(table.denied.values())) + 2


def test_a_host_that_cannot_sandbox_itself_says_why(monkeypatch, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    # An impossible requirement stands in for a kernel without Landlock.
    monkeypatch.setattr("inference.sandbox.spawn.MINIMUM_ABI", 99)
    with pytest.raises(Exception, match="Landlock ABI is"):
        host_start("task", [])


def test_a_handed_redis_socket_is_authenticated_and_selected(settings, tmp_path):
    """The parent connects with the password; the host gets a socket that needs none (and never sees it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = shutil.which("redis-server") or str(redis_server_binary())
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--requirepass", "pw-123", "--dir", str(tmp_path)]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        settings.INFERENCE_REDIS_URL = f"redis://:pw-123@127.0.0.1:{port}/2"
        until(lambda: redis.Redis(port=port, password="pw-123").ping(), 10, "the private Redis answered")
        fd = redis_socket_fd()
        with socket.socket(fileno=fd) as handed:
            handed.settimeout(10)  # the handed socket may come non-blocking: wait for the reply
            handed.sendall(b"*2\r\n$6\r\nCLIENT\r\n$4\r\nINFO\r\n")
            reply = handed.recv(4096).decode()
        assert " db=2 " in reply and "NOAUTH" not in reply, reply
    finally:
        server.terminate()
        server.wait()

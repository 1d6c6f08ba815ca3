"""A model host's memory: its cap, and telling an out-of-memory kill from any other death.

A host that allocates past MODEL_HOST_MEMORY_MB gets an allocation error (torch and numpy
raise "can't allocate memory"), which runs report as out of memory. A host the kernel's
out-of-memory killer stops gets SIGKILL and says nothing; the parent then reads its memory
cgroup's `oom_kill` counter (cgroup v2 `memory.events`, v1 `memory.oom_control`) and, if it
rose while the host ran, names the death. The counter counts the whole cgroup, so another
process killed in that cgroup at the same moment would be named too: the kill is real, the
attribution is the likely one.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import subprocess
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# How long a dead host's exit status may take to arrive after its channel closed.
EXIT_WAIT_SECONDS = 2.0


class HostOutOfMemory(MemoryError):
    """The kernel's out-of-memory killer stopped a model host."""


def memory_cap_apply(megabytes: int) -> None:
    """In a host before exec: cap its private writable memory (RLIMIT_DATA); 0 leaves it uncapped."""
    if megabytes > 0:
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _mounts() -> dict[str, tuple[str, Path]]:
    """cgroup mounts by controller ("" for v2): the cgroup path at the mount's root and where it is mounted."""
    mounts: dict[str, tuple[str, Path]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            separator = fields.index("-")
            kind, options = fields[separator + 1], fields[separator + 3].split(",")
            if kind == "cgroup2":
                mounts.setdefault("", (fields[3], Path(fields[4])))
            elif kind == "cgroup" and "memory" in options:
                mounts.setdefault("memory", (fields[3], Path(fields[4])))
    return mounts


def memory_cgroup(pid: int | str = "self") -> Path | None:
    """The directory of a process's memory cgroup, where this process can see it."""
    mounts = _mounts()
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        key = "" if controllers == "" else ("memory" if "memory" in controllers.split(",") else None)
        if key is None or key not in mounts:
            continue
        root, mounted_at = mounts[key]
        relative = path[len(root) :] if path.startswith(root) else path
        directory = mounted_at / relative.lstrip("/")
        if (directory / "memory.events").exists() or (directory / "memory.oom_control").exists():
            return directory
    return None


def oom_kills(cgroup: Path | None) -> int | None:
    """The cgroup's count of processes the out-of-memory killer stopped; None where unreadable."""
    if cgroup is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError, ValueError):
            for line in (cgroup / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return None


class DeathWatch:
    """Taken when a host starts; after it dies, says whether the out-of-memory killer did it."""

    def __init__(self, pid: int) -> None:
        self.cgroup = memory_cgroup(pid)
        self.kills_at_start = oom_kills(self.cgroup)

    def cause(self, process: subprocess.Popen[bytes]) -> str:
        """Why the host ended, in words; raises nothing. Waits briefly for its exit status."""
        return self.verdict(process)[0]

    def verdict(self, process: subprocess.Popen[bytes]) -> tuple[str, bool]:
        """Why the host ended, in words, and whether the out-of-memory killer did it (the
        cgroup's counter read once, so the two always agree)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=EXIT_WAIT_SECONDS)
        status = process.returncode
        if status is None:
            return "the model host stopped answering", False
        if status == -signal.SIGKILL and self.out_of_memory_kill():
            return "the kernel's out-of-memory killer stopped the model host (signal 9)", True
        if status < 0:
            with contextlib.suppress(ValueError):
                return f"the model host was killed by signal {-status} ({signal.Signals(-status).name})", False
            return f"the model host was killed by signal {-status}", False
        return f"the model host exited with status {status}", False

    def out_of_memory_kill(self) -> bool:
        now = oom_kills(self.cgroup)
        return now is not None and self.kills_at_start is not None and now > self.kills_at_start

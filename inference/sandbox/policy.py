"""The restrictions a model host puts on itself before it loads any model (Linux only).

Three layers, each applied with plain syscalls through ctypes (no dependency, no privilege):

- capabilities: a host started as root drops every capability (bounding, effective,
  permitted, inheritable), so uid 0 keeps no power beyond a normal user's;
- Landlock (LSM, unprivileged, also binds root): the file system is read-only beneath the
  directories the host needs (the Python install, the project's packages, the model
  cache) and writable only beneath a private scratch directory; no file may be executed;
  TCP bind/connect is refused on every port (ABI >= 4); abstract unix sockets and signals
  are scoped to the sandbox (ABI >= 6); a sandboxed process cannot ptrace or read the
  memory or /proc files of a process outside its domain (every ABI);
- seccomp (a BPF filter, after PR_SET_NO_NEW_PRIVS): socket() and socketpair() of every
  family fail, so the only connections the host has are those handed to it by its parent;
  exec, io_uring (which can open sockets without socket()), ptrace, process_vm_*, bpf,
  perf, module and kexec calls, mount/namespace changes, keyrings and userfaultfd fail.

Pathname unix sockets are not governed by Landlock at the ABIs of today's kernels (connect()
is not a file open): that is why socket() itself is refused rather than trusting Landlock
with the embedded Redis's socket path. `sandbox_apply` raises SandboxUnavailable when the
kernel lacks what the caller requires.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# --- syscall numbers (Landlock's are the same on every architecture) -----------------------
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446

LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

# Rights that make sense on a file (a rule on a file may carry only these).
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ = FS_READ_FILE | FS_READ_DIR
WRITE = (
    READ | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SYM
    | FS_REFER | FS_TRUNCATE
)  # fmt: skip
DEVICE = FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_KILL_PROCESS = 0x80000000
# BPF opcodes: ld/w/abs, jmp/jeq/k, jmp/jge/k, ret/k.
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_RET_K = 0x06
CAP_LAST = 63
LINUX_CAPABILITY_VERSION_3 = 0x20080522


@dataclass(frozen=True)
class Arch:
    """An architecture's audit id and the numbers of the calls the filter refuses."""

    audit: int
    prctl: int
    capset: int
    denied: Mapping[str, int]
    # x32 calls on x86_64 carry this bit; they are refused outright.
    x32_bit: int = 0


ARCHES = {
    "x86_64": Arch(
        audit=0xC000003E,
        prctl=157,
        capset=126,
        x32_bit=0x40000000,
        denied={
            "socket": 41,
            "socketpair": 53,
            "execve": 59,
            "execveat": 322,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "bpf": 321,
            "perf_event_open": 298,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "unshare": 272,
            "setns": 308,
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "userfaultfd": 323,
            "open_by_handle_at": 304,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "fsopen": 430,
            "fsmount": 432,
            "move_mount": 429,
            "open_tree": 428,
        },
    ),
    "aarch64": Arch(
        audit=0xC00000B7,
        prctl=167,
        capset=91,
        denied={
            "socket": 198,
            "socketpair": 199,
            "execve": 221,
            "execveat": 281,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "bpf": 280,
            "perf_event_open": 241,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "unshare": 97,
            "setns": 268,
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "userfaultfd": 282,
            "open_by_handle_at": 265,
            "io_uring_setup": 425,
            "io_uring_enter": 426,
            "io_uring_register": 427,
            "fsopen": 430,
            "fsmount": 432,
            "move_mount": 429,
            "open_tree": 428,
        },
    ),
}


class SandboxUnavailable(RuntimeError):
    """The kernel cannot enforce what the sandbox requires (no Landlock, no seccomp, another OS)."""


@dataclass
class Policy:
    """What a model host may touch: directories to read, directories to write, devices."""

    read: list[Path] = field(default_factory=list)
    write: list[Path] = field(default_factory=list)
    devices: list[Path] = field(default_factory=list)
    # Directories whose entries may be listed (not read): the project root on sys.path.
    list_only: list[Path] = field(default_factory=list)


@dataclass
class Applied:
    """What was enforced, for the host's log line and for tests."""

    landlock_abi: int
    rules: int
    seccomp_denied: int
    capabilities_dropped: bool


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    if sys.platform != "linux":
        return 0
    try:
        return _syscall(
            SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION)
        )
    except OSError:
        return 0


def arch() -> Arch | None:
    """The seccomp table of this machine's architecture (None where the filter is not written)."""
    return ARCHES.get(platform.machine()) if sys.platform == "linux" else None


def _handled_fs(abi: int) -> int:
    handled = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
    if abi >= 2:
        handled |= FS_REFER
    if abi >= 3:
        handled |= FS_TRUNCATE
    if abi >= 5:
        handled |= FS_IOCTL_DEV
    return handled


def _landlock(policy: Policy, abi: int) -> int:
    """Create the ruleset, add the rules, restrict this process (and its future threads and children)."""
    handled_fs = _handled_fs(abi)
    handled_net = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    attr = struct.pack("QQQ", handled_fs, handled_net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    buffer = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _syscall(SYS_LANDLOCK_CREATE_RULESET, buffer, ctypes.c_size_t(size), ctypes.c_uint32(0))
    rules = 0
    try:
        wanted = [(p, READ) for p in policy.read] + [(p, WRITE) for p in policy.write]
        wanted += [(p, DEVICE) for p in policy.devices] + [(p, FS_READ_DIR) for p in policy.list_only]
        for path, access in wanted:
            rules += _path_rule(ruleset, path, access & handled_fs)
        # No TCP rule at all: with handled_net set, every bind and connect is refused.
        _syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return rules


def _path_rule(ruleset: int, path: Path, access: int) -> int:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0  # an optional path (a library directory this distribution lacks)
    try:
        if not os.path.isdir(path):
            access &= FILE_RIGHTS
        attr = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
        _syscall(
            SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset),
            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
            attr,
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)
    return 1


def _capabilities_drop(table: Arch) -> bool:
    """Root keeps no capability: bounding set emptied, then effective/permitted/inheritable zeroed."""
    if os.geteuid() != 0:
        return False
    for cap in range(CAP_LAST + 1):
        try:
            _syscall(table.prctl, PR_CAPBSET_DROP, cap, 0, 0, 0)
        except OSError:
            break  # past the kernel's last capability (EINVAL)
    header = ctypes.create_string_buffer(struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0), 8)
    data = ctypes.create_string_buffer(bytes(24), 24)
    _syscall(table.capset, header, data)
    return True


def _seccomp_program(table: Arch) -> bytes:
    """A filter that refuses the table's calls with EPERM, kills on a foreign architecture, allows the rest."""
    eperm = SECCOMP_RET_ERRNO | 1
    numbers = sorted(set(table.denied.values()))
    program = [
        (BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        (BPF_JEQ_K, 1, 0, table.audit),
        (BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),
        (BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if table.x32_bit:
        program.append((BPF_JGE_K, len(numbers) + 1, 0, table.x32_bit))  # x32: to the EPERM return
    for index, number in enumerate(numbers):
        program.append((BPF_JEQ_K, len(numbers) - index, 0, number))
    program += [(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW), (BPF_RET_K, 0, 0, eperm)]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


def _seccomp(table: Arch) -> int:
    code = _seccomp_program(table)
    filters = ctypes.create_string_buffer(code, len(code))
    prog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(filters))
    prog_buffer = ctypes.create_string_buffer(prog, len(prog))
    _syscall(table.prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog_buffer, 0, 0)
    return len(table.denied)


def sandbox_apply(policy: Policy, *, minimum_abi: int = 1) -> Applied:
    """Restrict this process for good (no way back); SandboxUnavailable when the kernel cannot.

    Call it from the process that will run model code, before any model is read, with
    every thread that matters not yet started (Landlock and seccomp bind the calling
    thread and the threads and children it creates afterwards).
    """
    table = arch()
    abi = landlock_abi()
    if table is None:
        raise SandboxUnavailable(f"no seccomp filter for {sys.platform}/{platform.machine()}")
    if abi < minimum_abi:
        raise SandboxUnavailable(
            f"the kernel's Landlock ABI is {abi} (need >= {minimum_abi}): Landlock is missing or disabled "
            "(boot with lsm=...,landlock)"
        )
    _syscall(table.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    dropped = _capabilities_drop(table)
    rules = _landlock(policy, abi)
    denied = _seccomp(table)
    return Applied(landlock_abi=abi, rules=rules, seccomp_denied=denied, capabilities_dropped=dropped)


def python_paths() -> list[Path]:
    """The directories Python itself reads from: the interpreter's install and its site-packages.

    Not `sys.path` as a whole: the project's own root is on it, and beneath it may lie the
    data directory (the embedded secret key, the SQLite database); callers add the
    project's packages one by one.
    """
    found = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix)}
    found |= {Path(sysconfig.get_path(name)) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted(path.resolve() for path in found)


# Shared libraries, the dynamic loader's cache, time zones, and the few device files any
# process uses; nothing here holds a secret of the portal.
SYSTEM_READ = ["/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache",
               "/etc/localtime", "/usr/share/zoneinfo", "/sys/devices/system/cpu", "/proc/cpuinfo", "/dev/urandom",
               "/dev/random"]  # fmt: skip
SYSTEM_WRITE = ["/dev/null"]


def pci_read() -> list[Path]:
    """The PCI device listing (sysfs, read-only) onnxruntime walks at start to find accelerators:
    hardware facts, no secret. Without it every ONNX host logs "GPU device discovery failed"."""
    listing = Path("/sys/bus/pci")
    return [listing, *sorted(Path("/sys/devices").glob("pci*"))] if listing.exists() else []


def devices_gpu() -> list[Path]:
    """The NVIDIA device files present (the driver's ioctl interface needs them read-write)."""
    return [*sorted(Path("/dev").glob("nvidia*")), Path("/dev/dri")] if Path("/dev/nvidiactl").exists() else []


def paths(values: Iterable[str | Path]) -> list[Path]:
    return [Path(value) for value in values]

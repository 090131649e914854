"""Prove that an attach left nothing behind, in the host or in the container.

``snapshot(container)`` records what an attach could leak; ``check(before, after)`` raises an
AssertionError that lists every difference. What is compared:

- host mounts: /proc/self/mountinfo as a multiset of (mountpoint, fstype, source, options);
  mount IDs are left out since they are never reused. Mounts under the runtimes' own state
  directories (overlay roots, netns files, shm of *other* containers started meanwhile) are
  ignored: crashcart never mounts there, and other tests or engineers start containers on the
  same machine.
- bound loop devices: /sys/block/loop*/loop/backing_file.
- the container's mounts: /proc/PID/mountinfo, the same multiset.
- the container's files: every path under its root, read through /proc/PID/root with lstat
  (never following a symlink): type, mode, owner, size of files and symlink targets.
  Pseudo filesystems (proc, sysfs, cgroup ...) are not walked.
- processes: new processes in the container's pid namespace, and new processes whose command
  line contains "crashcart" that descend from the test runner or were orphaned (parent PID 1):
  not the runner itself, and not another person's crashcart in another terminal.
- the target itself: its main process must still run (same PID, same start time).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.testbed.runtimes import Container

PROC = Path("/proc")
SYS_BLOCK = Path("/sys/block")
IGNORED_HOST_PREFIXES = (
    "/var/lib/docker/",
    "/run/docker/",
    "/var/run/docker/",
    "/var/lib/containers/",
    "/run/containers/",
    "/var/run/containers/",
    "/var/lib/containerd/",
    "/run/containerd/",
    "/run/netns/",
    "/var/run/netns/",
    "/run/user/",
)
PSEUDO_FS = frozenset(
    "proc sysfs cgroup cgroup2 mqueue debugfs tracefs securityfs bpf pstore configfs "
    "fusectl binfmt_misc hugetlbfs nsfs".split()
)
MAX_FILES = 100_000


@dataclass(frozen=True, order=True)
class Mount:
    mountpoint: str
    fstype: str
    source: str
    options: str

    def __str__(self) -> str:
        return f"{self.mountpoint} {self.fstype} {self.source} {self.options}"


@dataclass(frozen=True)
class FileInfo:
    kind: str  # d, f, l, c, b, p, s
    mode: int
    uid: int
    gid: int
    size: int  # 0 for directories: their size is the filesystem's business
    target: str = ""  # of a symlink

    def __str__(self) -> str:
        s = f"{self.kind} {self.mode:04o} {self.uid}:{self.gid}"
        if self.kind == "f":
            s += f" {self.size} bytes"
        if self.kind == "l":
            s += f" -> {self.target}"
        return s


@dataclass(frozen=True, order=True)
class Proc:
    pid: int
    starttime: int
    cmdline: str

    def __str__(self) -> str:
        return f"pid {self.pid}: {self.cmdline}"


@dataclass(frozen=True)
class Snapshot:
    container: Container
    target: Proc | None
    host_mounts: Counter[Mount]
    loops: frozenset[tuple[str, str]]
    container_mounts: Counter[Mount]
    files: dict[str, FileInfo]
    container_procs: frozenset[Proc]
    crashcart_procs: frozenset[Proc]


# ---------------------------------------------------------------------------------------------
# Readers (each takes its root so unit tests can hand it a fake tree)

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Lines of proc(5) mountinfo, reduced to what identifies a mount across snapshots.

    Lines end at "\n" and fields are separated by one space: the kernel escapes only space,
    tab, newline and backslash, so a mount source of "\f" or "\x1c" (which str.splitlines()
    and str.split() take for line and field breaks) is kept as it is."""
    mounts = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        pre, sep, post = line.partition(" - ")
        if not sep:
            raise ValueError(f"mountinfo line without separator: {line!r}")
        left, right = pre.split(" "), post.split(" ")
        fstype, source = right[0], _unescape(right[1]) if len(right) > 1 else ""
        options = left[5] + ("|" + right[2] if len(right) > 2 else "")
        mounts.append(Mount(_unescape(left[4]), fstype, source, options))
    return mounts


def loop_devices(sys_block: Path = SYS_BLOCK) -> frozenset[tuple[str, str]]:
    """(device, backing file) of every bound loop device."""
    found = set()
    for dev in sys_block.glob("loop*"):
        with contextlib.suppress(FileNotFoundError):
            found.add((dev.name, (dev / "loop" / "backing_file").read_text().strip()))
    return frozenset(found)


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "d"),
        (stat.S_ISREG, "f"),
        (stat.S_ISLNK, "l"),
        (stat.S_ISCHR, "c"),
        (stat.S_ISBLK, "b"),
        (stat.S_ISFIFO, "p"),
        (stat.S_ISSOCK, "s"),
    ):
        if test(mode):
            return kind
    return "?"


def list_tree(root: Path, skip: frozenset[str] = frozenset()) -> dict[str, FileInfo]:
    """lstat of every path under ``root``, keyed by "/"-rooted path; ``skip`` holds such paths
    whose contents are not walked. Symlinks are recorded, never followed."""
    out: dict[str, FileInfo] = {}
    stack = [(root, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            path = f"{rel}/{e.name}"
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            kind = _kind(st.st_mode)
            target = os.readlink(e.path) if kind == "l" else ""
            size = st.st_size if kind in "fl" else 0
            out[path] = FileInfo(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, target)
            if kind == "d" and path not in skip:
                stack.append((Path(e.path), path))
        if len(out) > MAX_FILES:
            raise AssertionError(f"{root}: more than {MAX_FILES} files, refusing to compare them")
    return out


def _read_proc(pid: int, proc: Path) -> Proc | None:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
        stat_line = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    starttime = int(stat_line.rsplit(")", 1)[1].split()[19])
    return Proc(pid, starttime, raw.replace(b"\0", b" ").decode(errors="replace").strip())


def _ppid(pid: int, proc: Path) -> int:
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0


def _pids(proc: Path) -> list[int]:
    return [int(p.name) for p in proc.iterdir() if p.name.isdigit()]


def _ancestors(pid: int, proc: Path) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        pid = _ppid(pid, proc)
    return seen


def crashcart_procs(proc: Path = PROC, runner: int | None = None) -> frozenset[Proc]:
    """Processes whose command line mentions crashcart and that are ours to answer for:
    descendants of ``runner`` (default: this process) or orphans, never ``runner`` or one of
    its ancestors."""
    runner = os.getpid() if runner is None else runner
    mine = _ancestors(runner, proc)
    found = set()
    for pid in _pids(proc):
        if pid in mine:
            continue
        p = _read_proc(pid, proc)
        if p is None or "crashcart" not in p.cmdline:
            continue
        if _ppid(pid, proc) == 1 or runner in _ancestors(pid, proc):
            found.add(p)
    return frozenset(found)


def pidns_procs(pid: int, proc: Path = PROC) -> frozenset[Proc]:
    """Every process in the pid namespace of ``pid``, seen from the host."""
    try:
        ns = os.stat(proc / str(pid) / "ns" / "pid")
    except FileNotFoundError:
        return frozenset()
    found = set()
    for other in _pids(proc):
        try:
            st = os.stat(proc / str(other) / "ns" / "pid")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino) and (p := _read_proc(other, proc)):
            found.add(p)
    return frozenset(found)


# ---------------------------------------------------------------------------------------------
# Snapshots


def _host_mounts(text: str) -> Counter[Mount]:
    return Counter(
        m for m in parse_mountinfo(text) if not m.mountpoint.startswith(IGNORED_HOST_PREFIXES)
    )


def snapshot(container: Container, proc: Path = PROC) -> Snapshot:
    """Record everything :func:`check` compares, for ``container`` (which must be running)."""
    pid = container.pid
    base = proc / str(pid)
    ct_mounts = parse_mountinfo((base / "mountinfo").read_text())
    skip = frozenset(m.mountpoint for m in ct_mounts if m.fstype in PSEUDO_FS)
    return Snapshot(
        container=container,
        target=_read_proc(pid, proc),
        host_mounts=_host_mounts((proc / "self" / "mountinfo").read_text()),
        loops=loop_devices(),
        container_mounts=Counter(ct_mounts),
        files=list_tree(base / "root", skip),
        container_procs=pidns_procs(pid, proc),
        crashcart_procs=crashcart_procs(proc),
    )


def _multiset_diff(title: str, before: Counter[Mount], after: Counter[Mount]) -> list[str]:
    lines = [f"  + {m}" for m in sorted((after - before).elements())]
    lines += [f"  - {m}" for m in sorted((before - after).elements())]
    return [f"{title}:", *lines] if lines else []


def _set_diff(title: str, before: frozenset[Proc], after: frozenset[Proc]) -> list[str]:
    lines = [f"  + {p}" for p in sorted(after - before)]
    return [f"{title}:", *lines] if lines else []


def _files_diff(before: dict[str, FileInfo], after: dict[str, FileInfo]) -> list[str]:
    lines = [f"  + {p} ({after[p]})" for p in sorted(after.keys() - before.keys())]
    lines += [f"  - {p} ({before[p]})" for p in sorted(before.keys() - after.keys())]
    lines += [
        f"  ~ {p}: {before[p]} -> {after[p]}"
        for p in sorted(before.keys() & after.keys())
        if before[p] != after[p]
    ]
    return ["container files (via /proc/PID/root):", *lines] if lines else []


def diff(before: Snapshot, after: Snapshot) -> list[str]:
    """Every difference between two snapshots, as readable lines; empty when none."""
    out = []
    # The same process: PID and start time (its cmdline may read empty while a just-started
    # container's process is still exec'ing its command, measured once with podman).
    same = before.target and after.target and (before.target.pid, before.target.starttime) == (
        after.target.pid, after.target.starttime)  # fmt: skip
    if not same:
        out += ["target:", f"  main process {before.target} is gone (now {after.target})"]
    out += _multiset_diff("host mounts", before.host_mounts, after.host_mounts)
    loops = [f"  + {d} -> {f}" for d, f in sorted(after.loops - before.loops)]
    loops += [f"  - {d} -> {f}" for d, f in sorted(before.loops - after.loops)]
    out += ["host loop devices:", *loops] if loops else []
    out += _multiset_diff("container mounts", before.container_mounts, after.container_mounts)
    out += _files_diff(before.files, after.files)
    out += _set_diff(
        "new processes in the container", before.container_procs, after.container_procs
    )
    out += _set_diff("new crashcart processes", before.crashcart_procs, after.crashcart_procs)
    return out


def check(before: Snapshot, after: Snapshot) -> None:
    """Raise AssertionError listing what changed between ``before`` and ``after``."""
    lines = diff(before, after)
    if lines:
        c = before.container
        head = f"leak check failed for {c.runtime} container {c.name} (pid {c.pid}, {c.image}):"
        raise AssertionError("\n".join([head, *lines]))


@contextlib.contextmanager
def leakcheck(container: Container, *, settle: float = 2.0) -> Iterator[Snapshot]:
    """``with leakcheck(c): attach(...)`` fails if the block left anything behind.

    Teardown that finishes asynchronously (a loop device's autoclear, a child that is being
    reaped) gets up to ``settle`` seconds before a difference counts."""
    before = snapshot(container)
    yield before
    deadline = time.monotonic() + settle
    while True:
        after = snapshot(container)
        if not diff(before, after) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    check(before, after)


class LeakCheckFn(Protocol):
    """The type of the ``leakcheck`` fixture: :func:`leakcheck`."""

    def __call__(
        self, container: Container, *, settle: float = ...
    ) -> AbstractContextManager[Snapshot]: ...

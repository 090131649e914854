"""What a batch of attaches may leave behind, for many containers at once.

Built on tests/testbed/leakcheck.py's readers, but cheap enough for 100 containers: one pass
over /proc indexes every process by pid namespace. Compared, per container: its mountinfo (a
multiset, mount IDs left out), its files seen through /proc/PID/root (pseudo filesystems not
walked), the processes in its pid namespace, and that its main process still runs. On the
host: mounts outside the runtimes' own directories, bound loop devices, crashcart's records in
/run/crashcart, and crashcart processes that are ours (descendants of this process) or orphans.

The machine is shared: host-level changes that cannot be ours (a loop device on another
image, records of another mount namespace) are reported apart, as "foreign", not as leaks.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.testbed.leakcheck import (
    IGNORED_HOST_PREFIXES,
    PSEUDO_FS,
    Mount,
    Proc,
    list_tree,
    loop_devices,
    parse_mountinfo,
)
from tests.testbed.runtimes import Container

PROC = Path("/proc")
STATE_DIR = Path(os.environ.get("CRASHCART_STATE_DIR", "/run/crashcart"))
# A host mount that crashcart could leak is its toolbox (or something under its own paths).
TOOLBOX_FS = frozenset({"erofs", "squashfs", "ext4"})


def _read_proc(pid: int) -> Proc | None:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
        stat_line = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat_line.rsplit(")", 1)[1].split()
    return Proc(pid, int(fields[19]), raw.replace(b"\0", b" ").decode(errors="replace").strip())


def _ppid(pid: int) -> int:
    try:
        return int((PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return 0


def _pids() -> list[int]:
    return [int(p.name) for p in PROC.iterdir() if p.name.isdigit()]


def pidns_index() -> dict[tuple[int, int], set[Proc]]:
    """Every process, grouped by its pid namespace (dev, inode)."""
    out: dict[tuple[int, int], set[Proc]] = {}
    for pid in _pids():
        try:
            st = os.stat(PROC / str(pid) / "ns" / "pid")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        p = _read_proc(pid)
        if p is not None:
            out.setdefault((st.st_dev, st.st_ino), set()).add(p)
    return out


def _is_crashcart(cmdline: str) -> bool:
    argv = cmdline.split()
    if not argv:
        return False
    if argv[0].startswith("crashcart:"):  # a session supervisor's title
        return True
    return any(os.path.basename(a) == "crashcart" for a in argv[:2])


def crashcart_procs(runner: int) -> frozenset[Proc]:
    """crashcart processes that descend from ``runner`` or were orphaned."""
    found = set()
    for pid in _pids():
        if pid == runner:
            continue
        p = _read_proc(pid)
        if p is None or not _is_crashcart(p.cmdline):
            continue
        ancestor, seen = _ppid(pid), 0
        while ancestor > 1 and ancestor != runner and seen < 64:
            ancestor, seen = _ppid(ancestor), seen + 1
        if ancestor in (runner, 1) or _ppid(pid) == 1:
            found.add(p)
    return frozenset(found)


@dataclass(frozen=True)
class HostState:
    mounts: Counter[Mount]
    loops: frozenset[tuple[str, str]]
    records: frozenset[str]
    procs: frozenset[Proc]


@dataclass(frozen=True)
class CtrState:
    main: Proc | None
    mounts: Counter[Mount]
    files: dict[str, object]
    procs: frozenset[Proc]
    mntns: int


def host_state(runner: int) -> HostState:
    mounts = Counter(
        m
        for m in parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        if not m.mountpoint.startswith(IGNORED_HOST_PREFIXES)
    )
    try:
        records = frozenset(os.listdir(STATE_DIR))
    except FileNotFoundError:
        records = frozenset()
    return HostState(mounts, loop_devices(), records, crashcart_procs(runner))


def container_state(c: Container, index: dict[tuple[int, int], set[Proc]]) -> CtrState:
    base = PROC / str(c.pid)
    try:
        mounts = parse_mountinfo((base / "mountinfo").read_text())
        ns = os.stat(base / "ns" / "pid")
        mntns = os.stat(base / "ns" / "mnt").st_ino
    except (FileNotFoundError, ProcessLookupError):
        return CtrState(None, Counter(), {}, frozenset(), 0)
    skip = frozenset(m.mountpoint for m in mounts if m.fstype in PSEUDO_FS)
    files = list_tree(base / "root", skip)
    return CtrState(
        _read_proc(c.pid),
        Counter(mounts),
        dict(files),
        frozenset(index.get((ns.st_dev, ns.st_ino), set())),
        mntns,
    )


def states(containers: list[Container]) -> dict[str, CtrState]:
    index = pidns_index()
    return {c.name: container_state(c, index) for c in containers}


def diff_container(before: CtrState, after: CtrState) -> list[str]:
    out = []
    if after.main is None or after.main != before.main:
        out.append(f"main process {before.main} gone (now {after.main})")
    out += [f"+ mount {m}" for m in sorted((after.mounts - before.mounts).elements())]
    out += [f"- mount {m}" for m in sorted((before.mounts - after.mounts).elements())]
    out += [f"+ file {p}" for p in sorted(after.files.keys() - before.files.keys())]
    out += [f"- file {p}" for p in sorted(before.files.keys() - after.files.keys())]
    out += [
        f"~ file {p}"
        for p in sorted(before.files.keys() & after.files.keys())
        if before.files[p] != after.files[p]
    ]
    out += [f"+ process {p}" for p in sorted(after.procs - before.procs)]
    return out


def diff_host(
    before: HostState, after: HostState, toolbox: str, our_mntns: set[int]
) -> tuple[list[str], list[str]]:
    """(ours, foreign): leaks, and changes that another user of the machine made."""
    ours: list[str] = []
    foreign: list[str] = []
    for sign, ms in (("+", after.mounts - before.mounts), ("-", before.mounts - after.mounts)):
        for m in sorted(ms.elements()):
            mine = m.fstype in TOOLBOX_FS or "crashcart" in f"{m.mountpoint} {m.source}"
            (ours if mine else foreign).append(f"{sign} host mount {m}")
    for dev, backing in sorted(after.loops - before.loops):
        (ours if os.path.realpath(backing) == os.path.realpath(toolbox) else foreign).append(
            f"+ loop {dev} -> {backing}"
        )
    for rec in sorted(after.records - before.records):
        ino = rec.removeprefix("mnt-").split(".")[0]
        mine = ino.isdigit() and int(ino) in our_mntns
        (ours if mine else foreign).append(f"+ record {STATE_DIR}/{rec}")
    ours += [f"+ crashcart process {p}" for p in sorted(after.procs - before.procs)]
    return ours, foreign


def toolbox_mounted(c: Container) -> bool:
    try:
        text = (PROC / str(c.pid) / "mountinfo").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(m.mountpoint == "/dev/crashcart" for m in parse_mountinfo(text))


class ForeignCleanupWatch:
    """Notices another user's `crashcart cleanup` (or `-u`) while a sideload batch runs: on a
    shared machine a test suite's cleanup unmounts every toolbox in every container, ours
    included, which would pass for a failed -m (or hide a failed -u). A thread scans /proc
    every ``interval`` seconds for crashcart commands that do not descend from ``runner``."""

    def __init__(self, runner: int, interval: float = 0.1) -> None:
        self.runner = runner
        self.interval = interval
        self.seen: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ForeignCleanupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _ours(self, pid: int) -> bool:
        for _ in range(64):
            pid = _ppid(pid)
            if pid == self.runner:
                return True
            if pid <= 1:
                return False
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in _pids():
                try:
                    raw = (PROC / str(pid) / "cmdline").read_bytes()
                except OSError:
                    continue
                argv = raw.decode(errors="replace").split("\0")
                if not any(os.path.basename(a) == "crashcart" for a in argv[:2]):
                    continue
                if not ({"cleanup", "-u", "--unmount"} & set(argv)) or self._ours(pid):
                    continue
                p = _read_proc(pid)
                if p is not None:
                    self.seen.setdefault((p.pid, p.starttime), f"{time.strftime('%T')} {p.cmdline}")
            self._stop.wait(self.interval)

    def report(self) -> list[str]:
        return sorted(self.seen.values())

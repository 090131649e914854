"""What crashcart knows about sideloaded toolboxes: the containers' mountinfo (the truth),
plus host-side records (which image, since when, whether crashcart created the mount
point, which `-e` runs use it) and a lock per target mount namespace.

Records live in /run/crashcart (root only, gone at reboot, like the mounts themselves).
They are written *before* the container is touched, so a run killed at any point leaves
enough behind for `crashcart cleanup` to finish the job.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from crashcart.linux import mountinfo, ns, procfs

STATE_DIR = os.environ.get("CRASHCART_STATE_DIR", "/run/crashcart")
MOUNT_POINT = "/dev/crashcart"
TOOLBOX_TYPES = ("erofs", "squashfs", "ext4")


MountEntry = mountinfo.Mount


def is_toolbox(m: mountinfo.Mount) -> bool:
    """A crashcart toolbox, by what it is rather than where it sits (a container may have
    moved it): a read-only erofs mounted from crashcart's /proc/self/fd/N source, or a
    read-only squashfs/ext4/erofs on a loop device."""
    if m.fstype not in TOOLBOX_TYPES or not m.read_only:
        return False
    return m.source.startswith("/proc/self/fd/") or m.source.startswith("/dev/loop")


def mountinfo_of(pid: int) -> list[mountinfo.Mount]:
    """The mount table as the process sees it (mount points relative to its root)."""
    return mountinfo.read(pid)


def toolbox_mounts(entries: list[MountEntry], anywhere: bool = False) -> list[MountEntry]:
    """Toolbox mounts at /dev/crashcart (or, with anywhere, wherever they are)."""
    return [m for m in entries if is_toolbox(m) and (anywhere or m.point == MOUNT_POINT)]


def is_session(entries: list[MountEntry]) -> bool:
    """A crashcart session's private mount namespace (the toolbox is its root, the target
    at /target): its /dev/crashcart is the session's own and goes away with it. Neither
    `status` nor `cleanup` counts it as a container's; cleanup must never touch a live
    session (crashcart-ng's cleanup detached other sessions' toolboxes)."""
    root = next((m for m in entries if m.point == "/"), None)
    return (
        root is not None
        and root.fstype in TOOLBOX_TYPES
        and root.read_only
        and any(m.point == "/target" for m in entries)
    )


mount_of = mountinfo.mount_of


def mounted_in(pid: int) -> bool:
    try:
        return bool(toolbox_mounts(mountinfo_of(pid)))
    except (OSError, ValueError):
        return False


def mnt_ns_key(pid: int) -> str:
    """Locks and records are per mount namespace: the same container reached as
    docker://NAME, pid://N or by ID prefix is one key."""
    return f"mnt-{ns.ns_ino(pid, 'mnt')}"


def _dir() -> str:
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    return STATE_DIR


@contextmanager
def locked(key: str) -> Iterator[None]:
    """An exclusive lock per target, so concurrent -m/-u/-e runs serialise.

    drop_record() unlinks the lock file while holding it: a run that was waiting on the
    unlinked file would hold a lock nobody else sees, so it retries on the current one."""
    path = os.path.join(_dir(), f"{key}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _record_path(key: str) -> str:
    return os.path.join(_dir(), f"{key}.json")


class Record:
    """What crashcart remembers about a toolbox it mounted in one mount namespace."""

    __slots__ = ("target", "runtime", "name", "pid", "pid_start", "image", "since",
                 "created_dir", "by_exec", "leases", "dev_times")  # fmt: skip

    def __init__(self, target: str = "?", runtime: str = "?", name: str = "?", pid: int = 0,
                 pid_start: int = -1, image: str = "?", since: str = "?") -> None:  # fmt: skip
        self.target = target
        self.runtime = runtime
        self.name = name
        self.pid = pid  # a process of the namespace, and its start time: see is_current
        self.pid_start = pid_start
        self.image = image
        self.since = since
        # True: crashcart made /dev/crashcart; "pending": it is about to (a run killed
        # after the mkdir leaves this, which tells cleanup the directory is ours).
        self.created_dir: bool | str = False
        self.by_exec = False  # mounted by an -e: the last -e out removes it
        self.leases: list[list[int]] = []  # [pid, start time] of -e runs using it
        self.dev_times: list[int] | None = None  # /dev's atime, mtime, mtime after mkdir

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, data: object) -> Record | None:
        """A record read back, every field checked (anything malformed: no record)."""
        if not isinstance(data, dict):
            return None
        r = cls()
        for name in ("target", "runtime", "name", "image", "since"):
            if isinstance(data.get(name), str):
                setattr(r, name, data[name])
        for name in ("pid", "pid_start"):
            if isinstance(data.get(name), int) and not isinstance(data.get(name), bool):
                setattr(r, name, data[name])
        created = data.get("created_dir")
        r.created_dir = created if created in (True, False, "pending") else False
        r.by_exec = data.get("by_exec") is True
        leases = data.get("leases")
        r.leases = [
            [int(x[0]), int(x[1])] for x in (leases if isinstance(leases, list) else [])
            if isinstance(x, list) and len(x) == 2 and all(isinstance(v, int) for v in x)
        ]  # fmt: skip
        times = data.get("dev_times")
        if isinstance(times, list) and len(times) == 3 and all(isinstance(v, int) for v in times):
            r.dev_times = list(times)
        return r


def read_record(key: str) -> Record | None:
    try:
        with open(_record_path(key)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return Record.from_json(data)


def write_record(key: str, record: Record) -> None:
    path = _record_path(key)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record.to_json(), f)
    os.replace(tmp, path)


def drop_record(key: str) -> None:
    for suffix in (".json", ".lock"):
        try:
            os.unlink(os.path.join(_dir(), key + suffix))
        except FileNotFoundError:
            pass


def records() -> dict[str, Record | None]:
    out = {}
    try:
        names = os.listdir(STATE_DIR)
    except FileNotFoundError:
        return {}
    for name in names:
        if name.startswith("mnt-") and name.endswith(".json"):
            out[name[: -len(".json")]] = read_record(name[: -len(".json")])
    return out


def live_leases(record: Record | None) -> list[int]:
    """PIDs of `crashcart -e` runs registered as users that are still alive (same start
    time as when they registered, so a recycled PID does not count)."""
    alive = []
    for pid, start in record.leases if record else []:
        try:
            stat = procfs.read_text(f"{procfs.PROC}/{pid}/stat")
        except OSError:
            continue
        if procfs.start_time(stat) == start:
            alive.append(pid)
    return alive


def record_is_current(record: Record, key: str) -> bool:
    """The process the record names still runs (same start time) in namespace `key`."""
    try:
        stat = procfs.read_text(f"{procfs.PROC}/{record.pid}/stat")
        current = mnt_ns_key(record.pid)
    except OSError:
        return False
    return procfs.start_time(stat) == record.pid_start and current == key


def lease_for_self() -> list[int]:
    pid = os.getpid()
    return [pid, procfs.start_time(procfs.read_text(f"{procfs.PROC}/{pid}/stat"))]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

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

from crashcart.linux import mountinfo, procfs

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
    return f"mnt-{os.stat(f'{procfs.PROC}/{pid}/ns/mnt').st_ino}"


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


def read_record(key: str) -> dict[str, object]:
    try:
        with open(_record_path(key)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(key: str, record: dict[str, object]) -> None:
    path = _record_path(key)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def drop_record(key: str) -> None:
    for suffix in (".json", ".lock"):
        try:
            os.unlink(os.path.join(_dir(), key + suffix))
        except FileNotFoundError:
            pass


def records() -> dict[str, dict[str, object]]:
    out = {}
    try:
        names = os.listdir(STATE_DIR)
    except FileNotFoundError:
        return {}
    for name in names:
        if name.startswith("mnt-") and name.endswith(".json"):
            out[name[: -len(".json")]] = read_record(name[: -len(".json")])
    return out


def live_leases(record: dict[str, object]) -> list[int]:
    """PIDs of `crashcart -e` runs registered as users that are still alive (same start
    time as when they registered, so a recycled PID does not count)."""
    alive = []
    leases = record.get("leases")
    for lease in leases if isinstance(leases, list) else []:
        if not isinstance(lease, list) or len(lease) != 2:
            continue
        pid, start = lease
        try:
            stat = procfs.read_text(f"{procfs.PROC}/{pid}/stat")
        except OSError:
            continue
        if procfs.start_time(stat) == start:
            alive.append(int(pid))
    return alive


def record_is_current(record: dict[str, object], key: str) -> bool:
    """The process the record names still runs (same start time) in namespace `key`."""
    pid, start = record.get("pid"), record.get("pid_start")
    if not isinstance(pid, int) or not isinstance(start, int):
        return False
    try:
        stat = procfs.read_text(f"{procfs.PROC}/{pid}/stat")
        current = mnt_ns_key(pid)
    except OSError:
        return False
    return procfs.start_time(stat) == start and current == key


def lease_for_self() -> list[int]:
    pid = os.getpid()
    return [pid, procfs.start_time(procfs.read_text(f"{procfs.PROC}/{pid}/stat"))]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

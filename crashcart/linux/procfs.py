"""Reading /proc, and pinning a process so a recycled PID is never entered.

The root of procfs can be overridden with $CRASHCART_PROC so the parsers can be tested on
a fake tree. Everything read from a container process's /proc entries is data the
container controls: parse defensively, never follow it as a path on the host.
"""

from __future__ import annotations

import os

from crashcart.linux import libc, sig
from crashcart.linux.fd import Fd, closing

PROC = os.environ.get("CRASHCART_PROC", "/proc")
PF_EXITING = 0x4  # <linux/sched.h>, field 9 (flags) of /proc/PID/stat


class ProcessGone(Exception):
    """The process exited (or its PID was recycled) while we looked at it."""


class Pinned:
    """A process held by pidfd, with a dirfd on its /proc entry that is known to match."""

    __slots__ = ("pid", "pidfd", "proc_fd")

    def __init__(self, pid: int, pidfd: int, proc_fd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.proc_fd = proc_fd

    def alive(self) -> bool:
        """Running: not gone, not exiting, not a zombie its parent has yet to reap."""
        try:
            libc.pidfd_send_signal(self.pidfd, 0)
            stat = read_text("stat", self.proc_fd)
        except (ProcessLookupError, FileNotFoundError):
            return False
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) < 7 or fields[0] in ("Z", "X"):
            return False
        return not int(fields[6]) & PF_EXITING

    def close(self) -> None:
        os.close(self.proc_fd)
        os.close(self.pidfd)


def pin(pid: int) -> Pinned:
    """pidfd first, then /proc/PID, then check the pidfd still names a live process.

    If the process had died and its PID been reused between the two opens, the pidfd would
    report it dead (the pidfd refers to the original process, never to a successor).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessGone(pid) from None
    with Fd(pidfd) as owned:  # any failure to open /proc/PID must not leak the pidfd
        try:
            proc_fd = os.open(f"{PROC}/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ProcessGone(pid) from None
        pinned = Pinned(pid, owned.take(), proc_fd)
    if not pinned.alive():
        pinned.close()
        raise ProcessGone(pid)
    return pinned


def read_text(name: str, dir_fd: int | None = None, limit: int = 1 << 20) -> str:
    """The whole file, up to `limit` bytes. Read to EOF: seq_file /proc files (mountinfo,
    maps) hand out at most about a page per read()."""
    with closing(os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=dir_fd)) as fd:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks).decode(errors="replace")


def status_field(status: str, key: str) -> str | None:
    for line in status.splitlines():
        name, sep, value = line.partition(":")
        if sep and name == key:
            return value.strip()
    return None


def ns_pids(status: str) -> list[int]:
    """NSpid from /proc/PID/status: the PID in each pid namespace, outermost first."""
    value = status_field(status, "NSpid")
    if not value:
        return []
    return [int(x) for x in value.split()]


def cap_bounding(status: str) -> int:
    value = status_field(status, "CapBnd")
    return int(value, 16) if value else 0


def parse_cgroup(text: str) -> list[tuple[str, str, str]]:
    """Lines of /proc/PID/cgroup as (hierarchy id, controllers, path)."""
    out = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            out.append((parts[0], parts[1], parts[2]))
    return out


def parse_id_map(text: str) -> list[tuple[int, int, int]]:
    """uid_map/gid_map lines as (inside, outside, count)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3:
            out.append((int(fields[0]), int(fields[1]), int(fields[2])))
    return out


def start_time(stat: str) -> int:
    """Field 22 of /proc/PID/stat (starttime), parsed after the last ')' of comm."""
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[19])


def pids() -> list[int]:
    return [int(name) for name in os.listdir(PROC) if name.isdigit()]


def cmdline(pid: int) -> list[str]:
    try:
        raw = read_text(f"{PROC}/{pid}/cmdline")
    except OSError:
        return []
    return raw.rstrip("\0").split("\0") if raw else []


def kill_quietly(pid: int, signum: int = sig.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def close_fds_except(keep: set[int]) -> None:
    """Close every fd of this process but `keep` (close_range under the hood)."""
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)

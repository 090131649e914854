"""Namespaces of a process: open them, compare them with our own, join them."""

from __future__ import annotations

import os

from crashcart.linux import libc, procfs

# One table for every namespace kind: name, clone flag. The order is the join order of a
# session: cgroup, ipc, uts, net first (they need host privilege over the target's
# namespaces and change nothing about how paths resolve), then mnt (followed by the
# session's private copy of it), then pid (setns(pid) only affects children: the fork
# comes after), and user last: once in a child user namespace every capability is that
# namespace's, and the setns calls above would fail. "time" is never joined (a debugger
# wants the host's clocks).
TABLE: tuple[tuple[str, int], ...] = (
    ("cgroup", libc.CLONE_NEWCGROUP),
    ("ipc", libc.CLONE_NEWIPC),
    ("uts", libc.CLONE_NEWUTS),
    ("net", libc.CLONE_NEWNET),
    ("mnt", libc.CLONE_NEWNS),
    ("pid", libc.CLONE_NEWPID),
    ("time", libc.CLONE_NEWTIME),
    ("user", libc.CLONE_NEWUSER),
)
KINDS: tuple[str, ...] = tuple(name for name, _ in TABLE)
FLAGS: dict[str, int] = dict(TABLE)
BEFORE_MOUNT = ("cgroup", "ipc", "uts", "net")


def ns_id(pid: int | str, kind: str) -> tuple[int, int]:
    """(st_dev, st_ino) of /proc/PID/ns/KIND: equal ids are the same namespace."""
    st = os.stat(f"{procfs.PROC}/{pid}/ns/{kind}")
    return st.st_dev, st.st_ino


def ns_ino(pid: int | str, kind: str) -> int:
    """The inode alone: every namespace lives on the one nsfs superblock, so it names the
    namespace too (sideload's locks and records are keyed by it)."""
    return ns_id(pid, kind)[1]


class Namespaces:
    """Open fds on a process's namespaces, and which of them differ from ours."""

    __slots__ = ("fds", "foreign")

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.foreign: set[str] = set()

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def is_host(self) -> bool:
        """True when the process shares every namespace with us (it is not in a container)."""
        return not (self.foreign & {"mnt", "pid", "net", "user", "uts", "ipc"})


def open_namespaces(proc_fd: int, kinds: tuple[str, ...] = KINDS) -> Namespaces:
    """Open /proc/PID/ns/* through a dirfd on /proc/PID (opened and pinned by the caller).

    /proc/1/ns is unreadable on some hosts, so "ours" is /proc/self/ns, read now, before any
    setns: afterwards /proc/self may point into another pid namespace's procfs.
    """
    nss = Namespaces()
    try:
        for kind in kinds:
            try:
                fd = os.open(f"ns/{kind}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
            except FileNotFoundError:
                continue  # kernel without this namespace kind (time before 5.6)
            nss.fds[kind] = fd
            theirs = os.fstat(fd)
            if (theirs.st_dev, theirs.st_ino) != ns_id("self", kind):
                nss.foreign.add(kind)
    except BaseException:
        nss.close()
        raise
    return nss


def join(nss: Namespaces, kinds: tuple[str, ...]) -> list[str]:
    """setns into each foreign namespace among `kinds`, in the given order."""
    joined = []
    for kind in kinds:
        if kind in nss.foreign:
            try:
                libc.setns(nss.fds[kind], FLAGS[kind])
            except OSError as e:
                raise OSError(e.errno, f"setns into the {kind} namespace: {e.strerror}") from e
            joined.append(kind)
    return joined

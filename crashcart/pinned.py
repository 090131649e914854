"""A target held still for the whole of an attach: every mode (session, sideload, and what
comes next) starts from one PinnedTarget.

Pinning: pidfd first, then a dirfd on /proc/PID, then the pidfd checked again (a PID that
died and was reused in between reports dead), then the identity check: the pinned process
must still be in the container's cgroup. Everything about the target is read once through
the pinned dirfd; its namespace fds and its root are opened here, while we still see the
host, because setns(mnt) takes /proc/self away.
"""

from __future__ import annotations

import errno
import os

from crashcart.errors import TargetError, TargetGone
from crashcart.linux import ns, procfs
from crashcart.targets.model import Target


class TargetInfo:
    """What /proc says about the target, read once through the pinned /proc/PID dirfd."""

    __slots__ = ("pid_inside", "cap_bounding", "cgroups", "setgroups_allowed", "label", "cwd",
                 "uid", "gid", "start_time")  # fmt: skip

    def __init__(self, status: str, cgroups: list[tuple[str, str, str]], *, setgroups: bool,
                 label: str | None, cwd: str, start_time: int, pid: int) -> None:  # fmt: skip
        nspids = procfs.ns_pids(status)
        self.pid_inside = nspids[-1] if nspids else pid  # its PID in its own pid namespace
        self.cap_bounding = procfs.cap_bounding(status)
        self.cgroups = cgroups
        self.setgroups_allowed = setgroups
        self.label = label
        self.cwd = cwd
        self.uid = _first_id(procfs.status_field(status, "Uid"))
        self.gid = _first_id(procfs.status_field(status, "Gid"))
        self.start_time = start_time


def _first_id(value: str | None) -> int | None:
    fields = (value or "").split()
    return int(fields[0]) if fields and fields[0].isdigit() else None


def check_identity(target: Target, cgroup_paths: list[str], start_time: int | None = None) -> None:
    """After pinning: the pinned process must still be the container's. A runtime names the
    PID at one moment and crashcart pins it the next; if the container exited in between and
    the PID was reused, the new process is not in the container's cgroup, whose path names
    the container's ID under every runtime's default cgroup layout. Where it does not (an
    nspawn container without machined, rootless Podman on cgroup v1), the runtime module
    recorded the process's start time instead, which a reused PID does not have."""
    if target.runtime == "pid":
        return
    if target.started is not None:
        if start_time == target.started:
            return
    elif any(target.id in path for path in cgroup_paths):
        return
    raise TargetGone(
        f"PID {target.pid} no longer belongs to {target.describe()} (it exited, and the PID "
        "was reused?)",
        hint=f"if its cgroup path just does not name the container, use pid://{target.pid}",
    )


class PinnedTarget:
    """Pinned process, its namespaces (fds), its root (O_PATH fd) and what /proc says about
    it. A context manager: every fd it opened is closed on exit."""

    def __init__(self, target: Target, *, allow_host: bool = False,
                 kinds: tuple[str, ...] = ns.KINDS) -> None:  # fmt: skip
        self.target = target
        try:
            self.pinned = procfs.pin(target.pid)
        except procfs.ProcessGone:
            raise TargetGone(f"{target.describe()} is not running any more") from None
        self.nss = ns.Namespaces()
        self.root_fd = -1
        try:
            self._open(kinds, allow_host)
        except BaseException:
            self.close()
            raise

    def _open(self, kinds: tuple[str, ...], allow_host: bool) -> None:
        t = self.target
        try:
            self.nss = ns.open_namespaces(self.proc_fd, kinds)
        except PermissionError:
            raise TargetError(
                f"cannot open the namespaces of PID {t.pid}: permission denied"
                + (" (PID 1 is the host's init, not a container)" if t.pid == 1 else ""),
            ) from None
        except (FileNotFoundError, ProcessLookupError):
            raise TargetGone(f"{t.describe()} exited while crashcart attached") from None
        if self.nss.is_host() and not allow_host:
            raise TargetError(
                f"PID {t.pid} is not in a container (it shares every namespace with the host)",
                hint="pass --allow-host to debug a host process anyway",
            )
        try:
            flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            self.root_fd = os.open("root", flags, dir_fd=self.proc_fd)
            self.info = self._read()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ESRCH):
                raise TargetGone(f"{t.describe()} exited while crashcart attached") from None
            raise
        check_identity(t, [path for _, _, path in self.info.cgroups], self.info.start_time)

    def _read(self) -> TargetInfo:
        fd = self.proc_fd
        status = procfs.read_text("status", fd)
        cgroups = procfs.parse_cgroup(procfs.read_text("cgroup", fd))
        setgroups = procfs.read_text("setgroups", fd).strip() != "deny"
        cwd = inside(os.readlink("cwd", dir_fd=fd), os.readlink("root", dir_fd=fd))
        start = procfs.start_time(procfs.read_text("stat", fd))
        return TargetInfo(status, cgroups, setgroups=setgroups, label=_lsm_label(fd), cwd=cwd,
                          start_time=start, pid=self.pid)  # fmt: skip

    @property
    def pid(self) -> int:
        return self.pinned.pid

    @property
    def proc_fd(self) -> int:
        return self.pinned.proc_fd

    def alive(self) -> bool:
        return self.pinned.alive()

    def ns_key(self) -> str:
        """Locks and records of sideload are per mount namespace: the same container reached
        as docker://NAME, pid://N or by ID prefix is one key."""
        fd = self.nss.fds.get("mnt")
        st = os.fstat(fd) if fd is not None else os.stat("ns/mnt", dir_fd=self.proc_fd)
        return f"mnt-{st.st_ino}"

    def close(self) -> None:
        self.nss.close()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1
        if self.pinned.proc_fd >= 0:
            self.pinned.close()
            self.pinned.proc_fd = -1

    def __enter__(self) -> PinnedTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def inside(path: str, root: str) -> str:
    """A path as the target sees it: /proc/PID/cwd reads relative to *our* root, so for a
    chroot-based container it carries the host path of the container's root first."""
    if root in ("", "/"):
        return path
    if path == root:
        return "/"
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) :]
    return "/"  # outside its root (or unreachable): start at the top


def _lsm_label(proc_fd: int) -> str | None:
    try:
        label = procfs.read_text("attr/current", proc_fd).strip("\0\n ")
    except OSError:
        return None  # EINVAL: no LSM on this host
    label = label.removesuffix(" (enforce)").removesuffix(" (complain)")
    return None if label in ("", "unconfined", "kernel") else label

"""Mounting the toolbox at /dev/crashcart inside a container, and removing it: the host
side (locks, records, checks of the container's mount table, who uses the toolbox).

The detached toolbox mount is made on the host; the helper (sideload/helper.py) joins the
container's mount namespace and root and runs the steps of sideload/incontainer.py there.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from crashcart import faults
from crashcart.errors import SideloadError, TargetError, TargetGone
from crashcart.linux import libc, mountinfo, ns, procfs
from crashcart.pinned import PinnedTarget
from crashcart.sideload import incontainer, state
from crashcart.sideload.helper import ChildFn, HelperDied, run_in_child
from crashcart.targets.model import Target
from crashcart.text import printable
from crashcart.toolbox import open_toolbox

DEV_TYPES = ("tmpfs",)


class TargetMountNs:
    """A pinned target with the fds a child needs to act in its mount namespace."""

    def __init__(self, target: Target, *, allow_host: bool = False) -> None:
        self.pinned = PinnedTarget(target, allow_host=True, kinds=("mnt", "pid", "net", "user"))
        self.target = target
        self.nss = self.pinned.nss
        if "mnt" not in self.nss.foreign and not allow_host:
            self.close()
            raise TargetError(
                f"PID {target.pid} shares the host's mount namespace: /dev/crashcart would "
                "appear on the host",
                hint="use session mode (crashcart TARGET) for this process",
            )
        self.root_fd = self.pinned.root_fd
        self.key = self.pinned.ns_key()
        self.start_time = self.pinned.info.start_time

    def close(self) -> None:
        self.pinned.close()

    def entries(self) -> list[state.MountEntry]:
        try:
            return mountinfo.read(dir_fd=self.pinned.proc_fd)
        except (FileNotFoundError, ProcessLookupError):
            raise TargetGone(f"{self.target.describe()} exited") from None

    def root_ids(self) -> tuple[int, int]:
        """Host uid/gid of the container's root (its user namespace's 0), for the mount
        point's owner, so it shows as root:root inside rather than as nobody."""
        ids = []
        for name in ("uid_map", "gid_map"):
            mapping = procfs.parse_id_map(procfs.read_text(name, self.pinned.proc_fd))
            ids.append(next((out for inside, out, _ in mapping if inside == 0), 0))
        return ids[0], ids[1]

    def run(self, fn: ChildFn) -> list[int]:
        """fn() in a child inside the target's mount namespace and root; its result."""

        def entered() -> list[int]:
            _enter(self)
            return fn()

        return run_in_child(entered)


def _enter(mns: TargetMountNs) -> None:
    if "mnt" in mns.nss.foreign:
        libc.setns(mns.nss.fds["mnt"], libc.CLONE_NEWNS)
    os.fchdir(mns.root_fd)
    libc.chroot(".")


def check_dev(entries: list[state.MountEntry], own_ns: int = 0) -> None:
    dev = state.mount_of(entries, "/dev")
    if dev is None or dev.point != "/dev":
        raise SideloadError(
            "the container's /dev is not a mount of its own (it is part of its root "
            "filesystem): crashcart will not create /dev/crashcart in the container's files",
            hint="use session mode (crashcart TARGET), which writes nothing into the container",
        )
    if dev.fstype == "devtmpfs":
        raise SideloadError(
            "the container's /dev is a devtmpfs (the host's /dev, bound in?): /dev/crashcart "
            "would appear on the host",
            hint="use session mode (crashcart TARGET), which writes nothing",
        )
    if dev.fstype not in DEV_TYPES:
        raise SideloadError(f"the container's /dev is {printable(dev.fstype)}, not a tmpfs")
    if dev.read_only:
        raise SideloadError(
            "the container's /dev is read-only, and crashcart never remounts the container's "
            "filesystems read-write",
            hint="use session mode (crashcart TARGET), which needs no mount point",
        )
    if dev.shared and _peers_elsewhere(dev, own_ns):
        raise SideloadError(
            "the container's /dev is a shared mount with peers in other mount namespaces: a "
            "mount there would propagate to them (possibly the host's)",
            hint="use session mode (crashcart TARGET)",
        )


def _peers_elsewhere(dev: state.MountEntry, own_ns: int) -> bool:
    """Whether /dev's peer group has a member outside the target's mount namespace. LXC and
    nspawn make every mount of a container shared, in peer groups of its own: a mount
    there propagates nowhere else, and is fine."""
    groups = {f for f in dev.optional if f.startswith("shared:")}
    seen = {own_ns}
    for pid in procfs.pids():
        try:
            ino = ns.ns_ino(pid, "mnt")
            if ino in seen:
                continue
            seen.add(ino)
            mounts = mountinfo.read(pid)
        except (OSError, ValueError):
            continue
        if any(groups & set(m.optional) for m in mounts):
            return True
    return False


def mount(target: Target, image: str, *, allow_host: bool = False) -> bool:
    """Mount the toolbox at /dev/crashcart. False if one was already there (no-op)."""
    mns = TargetMountNs(target, allow_host=allow_host)
    try:
        with state.locked(mns.key):
            try:
                return _mount_locked(mns, image)
            except BaseException:
                if not state.read_record(mns.key):
                    state.drop_record(mns.key)  # its lock file too: nothing to remember
                raise
    finally:
        mns.close()


def _mount_locked(mns: TargetMountNs, image: str, *, lease: bool = False) -> bool:
    entries = mns.entries()
    if state.toolbox_mounts(entries):
        record = trusted_record(mns, mounted=True) or _new_record(mns, "?", created=False)
        if lease:
            record.leases.append(state.lease_for_self())
        else:
            record.by_exec = False  # -m: it stays until -u, whoever mounted it
        state.write_record(mns.key, record)
        return False
    check_dev(entries, int(mns.key.removeprefix("mnt-")))
    toolbox = open_toolbox(image)
    try:
        uid, gid = mns.root_ids()
        # Written before the container is touched: a run killed after the mkdir leaves
        # "pending", which tells `crashcart cleanup` the directory is ours to remove.
        record = _new_record(mns, os.path.realpath(image), created="pending")
        record.by_exec = lease
        if lease:
            record.leases = [state.lease_for_self()]
        state.write_record(mns.key, record)
        faults.point("mount:after-record")
        try:
            times = mns.run(lambda: incontainer.attach(toolbox.fd, uid, gid, mns.pinned.proc_fd))
        except HelperDied:
            raise  # it may have made the mount point: the record stays for cleanup
        except SideloadError:
            state.drop_record(mns.key)  # the helper failed cleanly and undid its mkdir
            raise
        faults.point("mount:after-attach")
    finally:
        toolbox.close()
    record.created_dir = bool(times)
    if times:
        record.dev_times = times
    state.write_record(mns.key, record)
    return True


def _new_record(mns: TargetMountNs, image: str, *, created: bool | str) -> state.Record:
    t = mns.target
    record = state.Record(t.ref, t.runtime, t.name, t.pid, mns.start_time, image, state.now())
    record.created_dir = created
    return record


def trusted_record(mns: TargetMountNs, *, mounted: bool) -> state.Record | None:
    """The record of the target's mount namespace, if it is about *this* namespace.

    Records are keyed by the namespace's inode number, which the kernel reuses once a
    namespace is gone: a record is trusted while the process it names still lives in the
    namespace, or while a toolbox is mounted there. Anything else is a stale record of
    another container; it is dropped, never acted upon (it could name a directory that is
    not ours)."""
    record = state.read_record(mns.key)
    if record and not (mounted or state.record_is_current(record, mns.key)):
        state.drop_record(mns.key)
        return None
    return record


def exec_with_toolbox(
    target: Target, image: str, run: Callable[[], int], *, allow_host: bool = False
) -> tuple[int, str | None]:
    """-e: mount (or reuse) the toolbox, run the runtime's exec, then unmount if an -e
    mounted it (this one or another) and no other user remains: the last -e out removes
    it. (status, note about what was left)."""
    mns = TargetMountNs(target, allow_host=allow_host)
    try:
        with state.locked(mns.key):
            mounted_here = _mount_locked(mns, image, lease=True)
            try:
                check_in_place(mns.entries())
            except SideloadError:
                _leave(mns, mounted_here=mounted_here)
                raise
        note = None
        faults.point("exec:after-mount")
        try:
            status = run()
        finally:
            with state.locked(mns.key):
                note = _leave(mns, mounted_here=mounted_here)
        return status, note
    finally:
        mns.close()


def check_in_place(entries: list[state.MountEntry]) -> None:
    """Before -e runs anything from /dev/crashcart: what is there is a toolbox mount, on
    top (nothing mounted over it or under it), not a directory the container filled."""
    here = [m for m in entries if m.point == state.MOUNT_POINT]
    parents = {m.parent_id for m in here}
    top = [m for m in here if m.mount_id not in parents]
    below = [m for m in entries if m.point.startswith(state.MOUNT_POINT + "/")]
    if len(top) != 1 or not state.is_toolbox(top[0]) or below:
        raise SideloadError(
            "/dev/crashcart in the container is not (only) the toolbox crashcart mounted: "
            "crashcart will not run anything from it",
            hint="crashcart -u TARGET, then try again; or use session mode",
        )


def _leave(mns: TargetMountNs, *, mounted_here: bool) -> str | None:
    me = os.getpid()
    record = state.read_record(mns.key)
    if record:
        record.leases = [x for x in record.leases if x[0] != me]
        state.write_record(mns.key, record)
    if not (record.by_exec if record else mounted_here):
        return None
    try:
        _unmount_locked(mns, force=False, exclude_lease=me)
    except SideloadError as e:
        return f"toolbox left mounted: {e}"
    return None


def users(mns: TargetMountNs, entries: list[state.MountEntry]) -> list[str]:
    """Processes of the container that run from, or hold files of, the toolbox."""
    devs = {m.device for m in state.toolbox_mounts(entries, anywhere=True)}
    if not devs:
        return []
    pidns = ns.ns_ino(mns.pinned.pid, "pid")
    out = []
    for pid in procfs.pids():
        try:
            if ns.ns_ino(pid, "pid") != pidns:
                continue
            if _uses(pid, devs):
                comm = procfs.read_text(f"{procfs.PROC}/{pid}/comm").strip()
                out.append(f"{comm} (pid {pid})")
        except OSError:
            continue
    return out


def _on(path: str, devs: set[int]) -> bool:
    """Whether what path names (followed, as /proc's magic links are) is on one of devs."""
    try:
        return os.stat(path).st_dev in devs
    except OSError:
        return False


def _uses(pid: int, devs: set[int]) -> bool:
    base = f"{procfs.PROC}/{pid}"
    if any(_on(f"{base}/{link}", devs) for link in ("exe", "cwd", "root")):
        return True
    try:
        fds = os.listdir(f"{base}/fd")
    except OSError:
        fds = []
    if any(_on(f"{base}/fd/{fd}", devs) for fd in fds):
        return True
    wanted = {f"{os.major(d):02x}:{os.minor(d):02x}" for d in devs}
    try:
        maps = procfs.read_text(f"{base}/maps", limit=64 << 20)
    except OSError:
        return False
    return any(len(f := line.split()) > 3 and f[3] in wanted for line in maps.splitlines())


def unmount(target: Target, *, force: bool = False, allow_host: bool = False) -> str:
    """Remove the toolbox (and the mount point crashcart made). Idempotent."""
    mns = TargetMountNs(target, allow_host=allow_host)
    try:
        with state.locked(mns.key):
            return _unmount_locked(mns, force=force)
    finally:
        mns.close()


def _unmount_locked(mns: TargetMountNs, *, force: bool, exclude_lease: int | None = None) -> str:
    entries = mns.entries()
    mounted = state.toolbox_mounts(entries, anywhere=True)
    record = trusted_record(mns, mounted=bool(mounted))
    message = "not mounted"
    if mounted:
        seen = users(mns, entries)
        leases = [p for p in state.live_leases(record) if p != exclude_lease]
        holders = seen + [f"crashcart -e (pid {p})" for p in leases]
        if holders and not force:
            raise SideloadError(
                f"the toolbox is in use by {', '.join(holders)}",
                hint="wait for them, or pass --force to detach it lazily (running tools keep "
                "working; new ones cannot start from /dev/crashcart)",
            )
        lazy = bool(holders)
        here = [m for m in mounted if m.point == state.MOUNT_POINT]
        moved = [(m.mount_id, m.point) for m in mounted if m.point != state.MOUNT_POINT]
        busy = mns.run(lambda: incontainer.detach(len(here), lazy=lazy, force=force, moved=moved))
        faults.point("unmount:after-detach")
        message = "unmounted" + (f" lazily; still in use by {', '.join(holders)}" if lazy else "")
        message = printable(message)
        if busy == [1]:
            message = "unmounted lazily; still in use by a process crashcart cannot see"
    if record and record.created_dir in (True, "pending"):
        times = record.dev_times
        mns.run(lambda: incontainer.remove_point(times))
    state.drop_record(mns.key)
    return message

"""Mounting the toolbox at /dev/crashcart inside a container, and removing it.

The detached toolbox mount is made on the host; a forked child joins the container's
mount namespace (and its root, for chroot-based runtimes), opens /dev and the mount point
without following any symlink the container controls, and move_mount()s the toolbox onto
the very directory fd it checked. Nothing but that directory is created in the container,
and only in a /dev that is a writable, unshared tmpfs.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from crashcart import faults
from crashcart.errors import SideloadError, TargetError, TargetGone
from crashcart.linux import libc, mountapi, mountinfo, procfs
from crashcart.pinned import PinnedTarget
from crashcart.sideload import state
from crashcart.targets.model import Target
from crashcart.text import printable
from crashcart.toolbox import open_toolbox

RESOLVE_SAFE = libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS
DEV_TYPES = ("tmpfs",)
ChildFn = Callable[[], str]


class Opened:
    """A pinned target with the fds a child needs to act in its mount namespace."""

    def __init__(self, target: Target, allow_host: bool = False) -> None:
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

    def run(self, fn: ChildFn) -> str:
        """fn() in a child inside the target's mount namespace and root; its result."""

        def entered() -> str:
            _enter(self)
            return fn()

        return run_in_child(entered)


def _enter(o: Opened) -> None:
    if "mnt" in o.nss.foreign:
        libc.setns(o.nss.fds["mnt"], libc.CLONE_NEWNS)
    os.fchdir(o.root_fd)
    libc.chroot(".")


class HelperDied(SideloadError):
    """The helper in the container's mount namespace died without a word (killed)."""


def run_in_child(fn: ChildFn) -> str:
    """Fork, run fn in the child, return its string result; its SideloadError re-raised.

    setns(mnt) is refused to multi-threaded processes and would change the caller's view
    for good: a short-lived child does it instead."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            _open_self()
            os.write(w, b"K" + fn().encode())
            code = 0
        except SideloadError as e:
            os.write(w, b"E" + str(e).encode() + b"\0" + (e.hint or "").encode())
        except OSError as e:
            os.write(w, b"E" + f"{e.strerror or e}".encode() + _name(e))
        except BaseException as e:  # noqa: BLE001 - never unwind into the parent's code
            os.write(w, b"E" + repr(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    data = b"".join(chunks).decode(errors="replace")
    if data.startswith("K"):
        return data[1:]
    if not data:
        raise HelperDied("the helper process died")
    message, _, hint = data[1:].partition("\0")
    raise SideloadError(message, hint=hint or None)


# The helper's own /proc/self/fd and fdinfo, opened before it joins the container: after its
# chroot, /proc is the container's procfs, where the helper (in the host's pid namespace)
# has no entry.
_SELF: dict[str, int] = {}


def _open_self() -> None:
    for name in ("fd", "fdinfo"):
        _SELF[name] = os.open(f"/proc/self/{name}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def mount_id(fd: int) -> int:
    """The mount an fd is on (mnt_id in /proc/self/fdinfo)."""
    info = procfs.read_text(str(fd), _SELF["fdinfo"])
    for line in info.split("\n"):
        key, _, value = line.partition(":")
        if key == "mnt_id":
            return int(value)
    raise OSError(errno.EINVAL, "no mnt_id in fdinfo")


def detach_fd_mount(fd: int) -> None:
    """Lazily unmount the mount whose root `fd` is, wherever it now sits (through the fd's
    magic link: no path the container controls)."""
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(_SELF["fd"])
        libc.umount2(str(fd), libc.MNT_DETACH)
    finally:
        os.fchdir(here)
        os.close(here)


def _name(e: OSError) -> bytes:
    return f" ({e.filename})".encode() if e.filename else b""


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
            ino = os.stat(f"{procfs.PROC}/{pid}/ns/mnt").st_ino
            if ino in seen:
                continue
            seen.add(ino)
            mounts = mountinfo.read(pid)
        except (OSError, ValueError):
            continue
        if any(groups & set(m.optional) for m in mounts):
            return True
    return False


def mount(target: Target, image: str, allow_host: bool = False) -> bool:
    """Mount the toolbox at /dev/crashcart. False if one was already there (no-op)."""
    o = Opened(target, allow_host)
    try:
        with state.locked(o.key):
            try:
                return _mount_locked(o, image)
            except BaseException:
                if not state.read_record(o.key):
                    state.drop_record(o.key)  # its lock file too: nothing to remember
                raise
    finally:
        o.close()


def _mount_locked(o: Opened, image: str, lease: bool = False) -> bool:
    entries = o.entries()
    if state.toolbox_mounts(entries):
        record = trusted_record(o, mounted=True) or _new_record(o, "?", False)
        if lease:
            record["leases"] = [*_leases(record), state.lease_for_self()]
        else:
            record["by_exec"] = False  # -m: it stays until -u, whoever mounted it
        state.write_record(o.key, record)
        return False
    check_dev(entries, int(o.key.removeprefix("mnt-")))
    toolbox = open_toolbox(image)
    try:
        uid, gid = o.root_ids()
        # Written before the container is touched: a run killed after the mkdir leaves
        # "pending", which tells `crashcart cleanup` the directory is ours to remove.
        record = _new_record(o, os.path.realpath(image), "pending")
        record["by_exec"] = lease
        if lease:
            record["leases"] = [state.lease_for_self()]
        state.write_record(o.key, record)
        faults.point("mount:after-record")
        try:
            created = o.run(lambda: _attach(toolbox.fd, uid, gid, o.pinned.proc_fd))
        except HelperDied:
            raise  # it may have made the mount point: the record stays for cleanup
        except SideloadError:
            state.drop_record(o.key)  # the helper failed cleanly and undid its mkdir
            raise
        faults.point("mount:after-attach")
    finally:
        toolbox.close()
    record["created_dir"] = created.startswith("created")
    if created.startswith("created:"):
        record["dev_times"] = [int(x) for x in created.split(":")[1:]]
    state.write_record(o.key, record)
    return True


def _new_record(o: Opened, image: str, created: bool | str) -> dict[str, object]:
    t = o.target
    return {
        "target": t.ref, "runtime": t.runtime, "name": t.name, "pid": t.pid,
        "pid_start": o.start_time, "image": image, "since": state.now(),
        "created_dir": created, "leases": [],
    }  # fmt: skip


def trusted_record(o: Opened, mounted: bool) -> dict[str, object]:
    """The record of the target's mount namespace, if it is about *this* namespace.

    Records are keyed by the namespace's inode number, which the kernel reuses once a
    namespace is gone: a record is trusted while the process it names still lives in the
    namespace, or while a toolbox is mounted there. Anything else is a stale record of
    another container; it is dropped, never acted upon (it could name a directory that is
    not ours)."""
    record = state.read_record(o.key)
    if record and not (mounted or state.record_is_current(record, o.key)):
        state.drop_record(o.key)
        return {}
    return record


def _leases(record: dict[str, object]) -> list[object]:
    leases = record.get("leases")
    return list(leases) if isinstance(leases, list) else []


def exec_with_toolbox(
    target: Target, image: str, run: Callable[[], int], allow_host: bool = False
) -> tuple[int, str | None]:
    """-e: mount (or reuse) the toolbox, run the runtime's exec, then unmount if an -e
    mounted it (this one or another) and no other user remains: the last -e out removes
    it. (status, note about what was left)."""
    o = Opened(target, allow_host)
    try:
        with state.locked(o.key):
            mounted_here = _mount_locked(o, image, lease=True)
            try:
                check_in_place(o.entries())
            except SideloadError:
                _leave(o, mounted_here)
                raise
        note = None
        faults.point("exec:after-mount")
        try:
            status = run()
        finally:
            with state.locked(o.key):
                note = _leave(o, mounted_here)
        return status, note
    finally:
        o.close()


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


def _leave(o: Opened, mounted_here: bool) -> str | None:
    me = os.getpid()
    record = state.read_record(o.key)
    if record:
        record["leases"] = [
            x for x in _leases(record) if not (isinstance(x, list) and x[:1] == [me])
        ]
        state.write_record(o.key, record)
    if not record.get("by_exec", mounted_here):
        return None
    try:
        _unmount_locked(o, force=False, exclude_lease=me)
    except SideloadError as e:
        return f"toolbox left mounted: {e}"
    return None


def _open_dev() -> int:
    try:
        return libc.openat2(libc.AT_FDCWD, "/dev", os.O_PATH | os.O_DIRECTORY, RESOLVE_SAFE)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SideloadError(
                "the container's /dev is a symlink: crashcart will not follow it"
            ) from None
        raise


def _check_landed(toolbox_fd: int, proc_fd: int) -> None:
    """The directory checked a moment ago may have been renamed since (a process with no
    capability can swap /dev/crashcart with another directory of its /dev): find where the
    mount really is, in the target's own mount table, and undo it if it is not at
    /dev/crashcart."""
    mid = mount_id(toolbox_fd)
    where = next((m.point for m in mountinfo.read(dir_fd=proc_fd) if m.mount_id == mid), None)
    if where == state.MOUNT_POINT:
        return
    detach_fd_mount(toolbox_fd)
    raise SideloadError(
        "the container moved /dev/crashcart while crashcart mounted the toolbox on it "
        f"(it landed at {printable(where or '?')}; undone)",
        hint="a process in the container renames directories of its /dev: use session mode",
    )


def _attach(toolbox_fd: int, uid: int, gid: int, proc_fd: int) -> str:
    """In the container: make (or check) the mount point, attach the toolbox onto it.
    Returns "existing", or "created:ATIME:MTIME:MTIME_AFTER" (nanoseconds) so -u can put
    /dev's times back as they were when nothing else changed /dev meanwhile."""
    dev = _open_dev()
    created = ""
    try:
        st = os.stat("crashcart", dir_fd=dev, follow_symlinks=False)
    except FileNotFoundError:
        before = os.fstat(dev)
        try:
            _as_container_root(uid, gid, lambda: os.mkdir("crashcart", 0o755, dir_fd=dev))
        except OSError as e:
            raise SideloadError(
                f"cannot create /dev/crashcart in the container: {e.strerror}"
            ) from None
        os.chown("crashcart", uid, gid, dir_fd=dev, follow_symlinks=False)
        after = os.fstat(dev).st_mtime_ns
        created = f"created:{before.st_atime_ns}:{before.st_mtime_ns}:{after}"
        faults.point("mount:after-mkdir", parent_too=True)
    else:
        refuse_existing(st, dev)
    try:
        point = libc.openat2(
            dev, "crashcart", os.O_RDONLY | os.O_DIRECTORY, RESOLVE_SAFE | libc.RESOLVE_BENEATH
        )
        try:
            if os.listdir(point):
                raise SideloadError("/dev/crashcart in the container is not empty")
            if os.fstat(point).st_dev != os.fstat(dev).st_dev:
                raise SideloadError("something is already mounted at /dev/crashcart")
            mountapi.attach(toolbox_fd, point)
        finally:
            os.close(point)
        _check_landed(toolbox_fd, proc_fd)
    except BaseException:
        if created:
            _rmdir_quietly(dev)
        raise
    finally:
        os.close(dev)
    return created or "existing"


def _as_container_root(uid: int, gid: int, fn: Callable[[], None]) -> None:
    """fn() with the container root's host ids as filesystem ids: a /dev tmpfs mounted in
    the container's user namespace refuses (EOVERFLOW) to create a file for an owner it
    cannot map, host root included."""
    old_uid, old_gid = libc.setfsids(uid, gid)
    try:
        fn()
    finally:
        libc.setfsids(old_uid, old_gid)


def refuse_existing(st: os.stat_result, dev: int) -> None:
    """/dev/crashcart exists and is not ours: never follow or mount over it."""
    if stat.S_ISLNK(st.st_mode):
        link = os.readlink("crashcart", dir_fd=dev)
        raise SideloadError(
            f"/dev/crashcart in the container is a symlink (to {printable(link)}): crashcart "
            "does not "
            "follow it, and will not mount over what the container made",
            hint="remove it inside the container, or use session mode",
        )
    if not stat.S_ISDIR(st.st_mode):
        raise SideloadError(
            "/dev/crashcart in the container exists and is not a directory: crashcart will "
            "not replace it",
            hint="remove it inside the container, or use session mode",
        )


def _rmdir_quietly(dev: int) -> None:
    try:
        os.rmdir("crashcart", dir_fd=dev)
    except OSError:
        pass


def users(o: Opened, entries: list[state.MountEntry]) -> list[str]:
    """Processes of the container that run from, or hold files of, the toolbox."""
    devs = {m.device for m in state.toolbox_mounts(entries, anywhere=True)}
    if not devs:
        return []
    pidns = os.stat(f"{procfs.PROC}/{o.pinned.pid}/ns/pid").st_ino
    out = []
    for pid in procfs.pids():
        try:
            if os.stat(f"{procfs.PROC}/{pid}/ns/pid").st_ino != pidns:
                continue
            if _uses(pid, devs):
                comm = procfs.read_text(f"{procfs.PROC}/{pid}/comm").strip()
                out.append(f"{comm} (pid {pid})")
        except OSError:
            continue
    return out


def _uses(pid: int, devs: set[int]) -> bool:
    base = f"{procfs.PROC}/{pid}"
    for link in ("exe", "cwd", "root"):
        try:
            if os.stat(f"{base}/{link}").st_dev in devs:
                return True
        except OSError:
            pass
    try:
        for fd in os.listdir(f"{base}/fd"):
            try:
                if os.stat(f"{base}/fd/{fd}").st_dev in devs:
                    return True
            except OSError:
                continue
    except OSError:
        pass
    wanted = {f"{os.major(d):02x}:{os.minor(d):02x}" for d in devs}
    try:
        maps = procfs.read_text(f"{base}/maps", limit=64 << 20)
    except OSError:
        return False
    return any(len(f := line.split()) > 3 and f[3] in wanted for line in maps.splitlines())


def unmount(target: Target, force: bool = False, allow_host: bool = False) -> str:
    """Remove the toolbox (and the mount point crashcart made). Idempotent."""
    o = Opened(target, allow_host)
    try:
        with state.locked(o.key):
            return _unmount_locked(o, force)
    finally:
        o.close()


def _unmount_locked(o: Opened, force: bool, exclude_lease: int | None = None) -> str:
    entries = o.entries()
    mounted = state.toolbox_mounts(entries, anywhere=True)
    record = trusted_record(o, bool(mounted))
    message = "not mounted"
    if mounted:
        busy = users(o, entries)
        leases = [p for p in state.live_leases(record) if p != exclude_lease]
        holders = busy + [f"crashcart -e (pid {p})" for p in leases]
        if holders and not force:
            raise SideloadError(
                f"the toolbox is in use by {', '.join(holders)}",
                hint="wait for them, or pass --force to detach it lazily (running tools keep "
                "working; new ones cannot start from /dev/crashcart)",
            )
        lazy = bool(holders)
        here = [m for m in mounted if m.point == state.MOUNT_POINT]
        moved = [(m.mount_id, m.point) for m in mounted if m.point != state.MOUNT_POINT]
        how = o.run(lambda: _detach(len(here), lazy, force, moved))
        faults.point("unmount:after-detach")
        message = "unmounted" + (f" lazily; still in use by {', '.join(holders)}" if lazy else "")
        if how == "busy":
            message = "unmounted lazily; still in use by a process crashcart cannot see"
    if record.get("created_dir") in (True, "pending"):
        times = record.get("dev_times")
        o.run(lambda: _remove_point(times if isinstance(times, list) else None))
    state.drop_record(o.key)
    return message


def _detach_moved(moved: list[tuple[int, str]]) -> None:
    """Toolboxes the container moved away from /dev/crashcart: each is detached through an
    fd on its root, checked to be that very mount (never a path followed blindly)."""
    flags = libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS
    for mid, point in moved:
        try:
            fd = libc.openat2(libc.AT_FDCWD, point, os.O_PATH | os.O_DIRECTORY, flags)
        except OSError:
            continue
        try:
            if mount_id(fd) == mid:
                detach_fd_mount(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _detach(count: int, lazy: bool, force: bool = False,
            moved: list[tuple[int, str]] | None = None) -> str:  # fmt: skip
    """Unmount the toolbox ("ok"). A user that users() did not see (in another pid
    namespace, say) makes umount EBUSY: with force, detach lazily then ("busy")."""
    _detach_moved(moved or [])
    if not count:
        return "ok"
    dev = _open_dev()
    how = "ok"
    try:
        os.fchdir(dev)
        flags = libc.UMOUNT_NOFOLLOW | (libc.MNT_DETACH if lazy else 0)
        for _ in range(count):
            try:
                libc.umount2("crashcart", flags)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                if not force:
                    raise SideloadError(  # from the helper only the message crosses
                        "the toolbox is in use by a process crashcart cannot see "
                        "(--force detaches it lazily)"
                    ) from None
                libc.umount2("crashcart", flags | libc.MNT_DETACH)
                how = "busy"
    finally:
        os.close(dev)
    return how


def _remove_point(times: list[int] | None) -> str:
    """rmdir the mount point crashcart created, if it is still an empty directory, and put
    /dev's atime/mtime back if nothing but crashcart changed /dev since."""
    dev = _open_dev()
    try:
        st = os.stat("crashcart", dir_fd=dev, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode) and st.st_dev == os.fstat(dev).st_dev:
            untouched = times is not None and os.fstat(dev).st_mtime_ns == times[2]
            _rmdir_quietly(dev)
            if untouched and times is not None:
                os.fchdir(dev)
                os.utime(".", ns=(times[0], times[1]), follow_symlinks=False)
    except FileNotFoundError:
        pass
    finally:
        os.close(dev)
    return "ok"

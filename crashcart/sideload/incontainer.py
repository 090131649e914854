"""What the sideload helper does inside the container's mount namespace and root: make (or
check) /dev/crashcart, attach the toolbox onto the very directory fd it checked and verify
where it landed, and undo all of it. Only /dev/crashcart is ever created in the container,
and only in a /dev that is a writable, unshared tmpfs.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from crashcart import faults
from crashcart.errors import SideloadError
from crashcart.linux import libc, mountapi, mountinfo
from crashcart.linux.fd import closing
from crashcart.sideload import state
from crashcart.sideload.helper import detach_fd_mount, mount_id
from crashcart.text import printable

RESOLVE_SAFE = libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS


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


def attach(toolbox_fd: int, uid: int, gid: int, proc_fd: int) -> list[int]:
    """In the container: make (or check) the mount point, attach the toolbox onto it.
    Returns [] (it existed), or [ATIME, MTIME, MTIME_AFTER] of /dev (nanoseconds) so -u can put
    /dev's times back as they were when nothing else changed /dev meanwhile."""
    dev = _open_dev()
    created: list[int] = []
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
        created = [before.st_atime_ns, before.st_mtime_ns, after]
        faults.point("mount:after-mkdir", parent_too=True)
    else:
        refuse_existing(st, dev)
    try:
        point = libc.openat2(
            dev, "crashcart", os.O_RDONLY | os.O_DIRECTORY, RESOLVE_SAFE | libc.RESOLVE_BENEATH
        )
        with closing(point):
            if os.listdir(point):
                raise SideloadError("/dev/crashcart in the container is not empty")
            if os.fstat(point).st_dev != os.fstat(dev).st_dev:
                raise SideloadError("something is already mounted at /dev/crashcart")
            mountapi.attach(toolbox_fd, point)
        _check_landed(toolbox_fd, proc_fd)
    except BaseException:
        if created:
            _rmdir_quietly(dev)
        raise
    finally:
        os.close(dev)
    return created


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


O_DIR_PATH = os.O_PATH | os.O_DIRECTORY


def _detach_moved(moved: list[tuple[int, str]]) -> None:
    """Toolboxes the container moved away from /dev/crashcart: each is detached through an
    fd on its root, checked to be that very mount (never a path followed blindly)."""
    flags = libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS
    for mid, point in moved:
        try:
            with closing(libc.openat2(libc.AT_FDCWD, point, O_DIR_PATH, flags)) as fd:
                if mount_id(fd) == mid:
                    detach_fd_mount(fd)
        except OSError:
            continue  # gone, or not that mount any more: nothing of ours to detach


def detach(count: int, *, lazy: bool, force: bool = False,
           moved: list[tuple[int, str]] | None = None) -> list[int]:  # fmt: skip
    """Unmount the toolbox: [0], or [1] when a user that users() did not see (in another
    pid namespace, say) made umount EBUSY and, with force, it was detached lazily."""
    _detach_moved(moved or [])
    if not count:
        return [0]
    busy = 0
    with closing(_open_dev()) as dev:
        os.fchdir(dev)
        flags = libc.UMOUNT_NOFOLLOW | (libc.MNT_DETACH if lazy else 0)
        for _ in range(count):
            try:
                libc.umount2("crashcart", flags)
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                if not force:
                    raise SideloadError(
                        "the toolbox is in use by a process crashcart cannot see",
                        hint="--force detaches it lazily",
                    ) from None
                libc.umount2("crashcart", flags | libc.MNT_DETACH)
                busy = 1
    return [busy]


def remove_point(times: list[int] | None) -> list[int]:
    """rmdir the mount point crashcart created, if it is still an empty directory, and put
    /dev's atime/mtime back if nothing but crashcart changed /dev since."""
    with closing(_open_dev()) as dev:
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
    return []

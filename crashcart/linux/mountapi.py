"""Detached mounts with the new mount API (fsopen/fsmount/open_tree/move_mount).

A detached mount is an fd: nothing is visible in any namespace until move_mount attaches
it, and if the process dies first the kernel drops it. That is what lets crashcart build
the toolbox mount on the host and attach it inside a container without leaving anything.
"""

from __future__ import annotations

import errno
import os

from crashcart.linux import libc, loop
from crashcart.linux.fd import Fd, closing

EROFS_MAGIC = 0xE0F5E1E2
SQUASHFS_MAGIC = b"hsqs"
EXT4_MAGIC = 0xEF53

TOOLBOX_ATTRS = libc.MOUNT_ATTR_RDONLY | libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV


def detect_format(fd: int) -> str | None:
    """erofs, squashfs or ext4 from the superblock magic; None when it is none of them."""
    head = os.pread(fd, 1024 + 128, 0)
    if head[:4] == SQUASHFS_MAGIC:
        return "squashfs"
    if len(head) >= 1028 and int.from_bytes(head[1024:1028], "little") == EROFS_MAGIC:
        return "erofs"
    if len(head) >= 1082 and int.from_bytes(head[1080:1082], "little") == EXT4_MAGIC:
        return "ext4"
    return None


class ImageMount:
    __slots__ = ("fd", "fmt", "loop_device")

    def __init__(self, fd: int, fmt: str, loop_device: str | None) -> None:
        self.fd = fd  # detached mount (O_CLOEXEC): attach with move_mount, clone with open_tree
        self.fmt = fmt
        self.loop_device = loop_device  # None for file-backed erofs

    def close(self) -> None:
        os.close(self.fd)


def _fs_create(
    fstype: str,
    options: dict[str, str],
    flags: tuple[str, ...] = (),
    fds: dict[str, int] | None = None,
) -> int:
    with closing(libc.fsopen(fstype)) as fsfd:
        for key, value in options.items():
            libc.fsconfig_string(fsfd, key, value)
        for key, fd in (fds or {}).items():
            libc.fsconfig_fd(fsfd, key, fd)
        for key in flags:
            libc.fsconfig_flag(fsfd, key)
        libc.fsconfig_create(fsfd)
        return libc.fsmount(fsfd)


def fs_mount(
    fstype: str, options: dict[str, str], attrs: int = 0, fds: dict[str, int] | None = None
) -> int:
    """A new detached superblock mount of a virtual filesystem (tmpfs, proc, devpts); `fds`
    are fd-valued parameters (procfs's pidns=, Linux >= 6.18)."""
    with Fd(_fs_create(fstype, options, fds=fds)) as mount:
        if attrs:
            libc.mount_setattr(mount.fd, "", libc.AT_EMPTY_PATH, attrs)
        return mount.take()


def mount_image(image_fd: int, fmt: str) -> ImageMount:
    """Mount an open image file read-only, nosuid, nodev as a detached mount.

    erofs goes file-backed (no loop device) when the kernel can; otherwise, and for squashfs
    and ext4, through an autoclear loop device that disappears with the last unmount.
    The source is /proc/self/fd/N so the kernel opens the very file we checked.
    """
    source = f"/proc/self/fd/{image_fd}"
    if fmt == "erofs":
        try:
            fd = _fs_create("erofs", {"source": source})
            return _finish(fd, fmt, None)
        except OSError as e:
            if e.errno not in (errno.ENOTBLK, errno.EINVAL):
                raise
    loop_fd, loop_path = loop.attach(image_fd)
    # The mount holds the device once made, so the loop fd goes either way; autoclear frees
    # the device on the last unmount. "ro" on the superblock too: without it the block
    # device is opened for writing, which a read-only loop device refuses (EACCES).
    with closing(loop_fd):
        fd = _fs_create(fmt, {"source": loop_path}, ("ro",))
    return _finish(fd, fmt, loop_path)


def _finish(fd: int, fmt: str, loop_device: str | None) -> ImageMount:
    with Fd(fd) as mount:
        libc.mount_setattr(fd, "", libc.AT_EMPTY_PATH, TOOLBOX_ATTRS)
        return ImageMount(mount.take(), fmt, loop_device)


def clone_tree(dirfd: int, path: str, *, recursive: bool = True) -> int:
    """A detached copy of the mount tree at dirfd/path (a bind mount, not yet attached)."""
    flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_SYMLINK_NOFOLLOW
    if recursive:
        flags |= libc.AT_RECURSIVE
    if not path:
        flags |= libc.AT_EMPTY_PATH
    return libc.open_tree(dirfd, path, flags)


def attach(mount_fd: int, target_dirfd: int, target_path: str = "") -> None:
    """Attach a detached mount at target_dirfd/target_path (the fd itself when path is "").

    Without MOVE_MOUNT_T_SYMLINKS the last component is not followed, and with an empty path
    the mount lands exactly on the inode the caller opened and checked.
    """
    flags = libc.MOVE_MOUNT_F_EMPTY_PATH
    if not target_path:
        flags |= libc.MOVE_MOUNT_T_EMPTY_PATH
    libc.move_mount(mount_fd, "", target_dirfd, target_path, flags)


def attach_and_close(mount_fd: int, target_dirfd: int, target_path: str = "") -> None:
    """attach() that consumes the mount fd: closed whether or not the attach worked (the
    attached mount lives on in the namespace; a failed one dies with its fd)."""
    with closing(mount_fd):
        attach(mount_fd, target_dirfd, target_path)

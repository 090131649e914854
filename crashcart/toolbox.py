"""The toolbox image, mounted read-only, nosuid, nodev as a detached mount."""

from __future__ import annotations

import errno
import os
import stat

from crashcart.errors import ImageError, KernelError
from crashcart.linux import mountapi
from crashcart.linux.fd import closing


def open_toolbox(path: str) -> mountapi.ImageMount:
    try:
        # O_NONBLOCK: a FIFO passed as --image must not hang the open.
        image_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        raise ImageError(
            f"toolbox image {path} does not exist",
            hint="build one with `crashcart image build`, or pass --image PATH",
        ) from None
    except OSError as e:
        raise ImageError(f"cannot open toolbox image {path}: {e.strerror}") from None
    with closing(image_fd):
        _check_file(image_fd, path)
        return _mount_toolbox(image_fd, path)


def _check_file(image_fd: int, path: str) -> None:
    """A regular file (or block device) that only root can change: the toolbox's programs
    run as root in the target, so whoever can write the image can run code there."""
    st = os.fstat(image_fd)
    if stat.S_ISBLK(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"toolbox image {path} is not a regular file")
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ImageError(
            f"toolbox image {path} is writable by users other than root, and its programs "
            "run as root in the target",
            hint=f"chown root {path} && chmod go-w {path}",
        )


def _mount_toolbox(image_fd: int, path: str) -> mountapi.ImageMount:
    fmt = mountapi.detect_format(image_fd)
    if fmt is None:
        raise ImageError(f"{path} is not a toolbox image (no erofs, squashfs or ext4 superblock)")
    try:
        image = mountapi.mount_image(image_fd, fmt)
    except OSError as e:
        if e.errno == errno.ENOSYS:
            raise KernelError(
                "this kernel lacks the new mount API (fsopen/fsmount, Linux >= 5.2)"
            ) from None
        if e.errno == errno.ENODEV:
            raise ImageError(f"this kernel cannot mount {fmt} ({path})") from None
        raise ImageError(f"cannot mount {path} ({fmt}): {e.strerror}; corrupt image?") from None
    try:
        os.stat("target", dir_fd=image.fd, follow_symlinks=False)
    except OSError:
        image.close()
        raise ImageError(
            f"{path} is a {fmt} image but not a crashcart toolbox (no /target)"
        ) from None
    return image

"""The toolbox image, mounted read-only, nosuid, nodev as a detached mount."""

from __future__ import annotations

import errno
import os

from crashcart.errors import ImageError, KernelError
from crashcart.linux import mountapi


def open_toolbox(path: str) -> mountapi.ImageMount:
    try:
        image_fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(
            f"toolbox image {path} does not exist",
            hint="build one with `crashcart image build`, or pass --image PATH",
        ) from None
    except OSError as e:
        raise ImageError(f"cannot open toolbox image {path}: {e.strerror}") from None
    try:
        return _mount_toolbox(image_fd, path)
    finally:
        os.close(image_fd)


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

"""Loop devices that free themselves: LOOP_CONFIGURE with LO_FLAGS_AUTOCLEAR.

Only needed for filesystems that cannot be mounted from a file (squashfs, ext4); erofs on
kernels >= 6.12 mounts straight from the file. The caller must keep the returned fd open
until the mount exists: with autoclear, closing the last fd of an unmounted device tears
it down (the mount then fails with EIO). After that the device goes away by itself on the
last unmount, so a SIGKILL at any step leaks nothing.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from crashcart.linux.fd import Fd, closing

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_DIRECT_IO = 16
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32


class LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("reserved", ctypes.c_uint64 * 8),
    ]


def attach(image_fd: int, tries: int = 20) -> tuple[int, str]:
    """Bind a free loop device read-only with autoclear to image_fd: (loop fd, /dev path)."""
    config = LoopConfig()
    config.fd = image_fd
    config.info.lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR
    with closing(os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)) as ctl:
        for _ in range(tries):
            path = f"/dev/loop{fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)}"
            with Fd(os.open(path, os.O_RDONLY | os.O_CLOEXEC)) as loop_fd:
                try:
                    fcntl.ioctl(loop_fd.fd, LOOP_CONFIGURE, bytes(config))
                except OSError as e:
                    if e.errno == errno.EBUSY:  # another process took it after GET_FREE
                        continue
                    raise
                return loop_fd.take(), path
    raise OSError(errno.EBUSY, "no free loop device after retries")


def bound_devices() -> dict[str, str]:
    """Every bound loop device and its backing file, from sysfs."""
    out: dict[str, str] = {}
    try:
        names = os.listdir("/sys/block")
    except FileNotFoundError:
        return out
    for name in names:
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                out[name] = f.read().strip()
        except OSError:
            continue
    return out

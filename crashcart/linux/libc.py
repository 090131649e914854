"""Thin ctypes wrappers over the libc calls and raw syscalls crashcart needs.

Python 3.11 has no os.setns/os.unshare and nothing for the new mount API, so these go
through libc. Every wrapper raises a normal OSError(errno, strerror, filename) on failure,
so callers catch PermissionError or FileNotFoundError as usual. No policy lives here.
"""

from __future__ import annotations

import ctypes
import os

libc = ctypes.CDLL(None, use_errno=True)

# <sched.h> clone flags, used by setns/unshare.
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

# <linux/mount.h>: the new mount API.
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_NOSYMFOLLOW = 0x200000
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40

# <fcntl.h> AT_* flags
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_SET_CHILD_SUBREAPER = 36

# x86_64 (and every architecture but alpha for numbers >= 424) syscall numbers.
NR_PIDFD_SEND_SIGNAL = 424
NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
NR_FSOPEN = 430
NR_FSCONFIG = 431
NR_FSMOUNT = 432
NR_OPENAT2 = 437
NR_MOUNT_SETATTR = 442
# pivot_root predates the unified numbering and glibc has no wrapper for it.
NR_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(
    os.uname().machine, -1
)

_c_int, _c_uint, _c_char_p, _c_ulong = ctypes.c_int, ctypes.c_uint, ctypes.c_char_p, ctypes.c_ulong
libc.syscall.restype = ctypes.c_long
libc.setns.argtypes = (_c_int, _c_int)
libc.unshare.argtypes = (_c_int,)
libc.mount.argtypes = (_c_char_p, _c_char_p, _c_char_p, _c_ulong, _c_char_p)
libc.umount2.argtypes = (_c_char_p, _c_int)
libc.chroot.argtypes = (_c_char_p,)
libc.prctl.argtypes = (_c_int, _c_ulong, _c_ulong, _c_ulong, _c_ulong)
libc.capset.argtypes = (ctypes.c_void_p, ctypes.c_void_p)
libc.capget.argtypes = (ctypes.c_void_p, ctypes.c_void_p)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


class OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def oserror(call: str, filename: object = None) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}", filename)


def _path(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _check(ret: int, call: str, filename: object = None) -> int:
    if ret < 0:
        raise oserror(call, filename)
    return ret


def setfsids(uid: int, gid: int) -> tuple[int, int]:
    """setfsgid + setfsuid: the ids file operations run as; returns the previous ones.
    (These calls report no error: they return the previous id either way.)"""
    old_gid = libc.setfsgid(_c_uint(gid))
    old_uid = libc.setfsuid(_c_uint(uid))
    return old_uid, old_gid


def setns(fd: int, nstype: int = 0) -> None:
    _check(libc.setns(fd, nstype), "setns")


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    ret = libc.mount(_path(source), _path(target), _path(fstype), flags, _path(data))
    _check(ret, "mount", target)


def umount2(target: str, flags: int = 0) -> None:
    _check(libc.umount2(_path(target), flags), "umount2", target)


def chroot(path: str) -> None:
    _check(libc.chroot(_path(path)), "chroot", path)


def pivot_root(new_root: str, put_old: str) -> None:
    ret = libc.syscall(
        NR_PIVOT_ROOT, _c_char_p(os.fsencode(new_root)), _c_char_p(os.fsencode(put_old))
    )
    _check(ret, "pivot_root", new_root)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(libc.prctl(option, arg2, arg3, arg4, arg5), "prctl")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    ret = libc.syscall(NR_PIDFD_SEND_SIGNAL, _c_int(pidfd), _c_int(sig), None, _c_uint(0))
    _check(ret, "pidfd_send_signal")


def fsopen(fstype: str) -> int:
    ret = libc.syscall(NR_FSOPEN, _c_char_p(fstype.encode()), _c_uint(FSOPEN_CLOEXEC))
    return _check(ret, "fsopen", fstype)


def fsconfig_string(fsfd: int, key: str, value: str) -> None:
    ret = libc.syscall(
        NR_FSCONFIG,
        _c_int(fsfd),
        _c_uint(FSCONFIG_SET_STRING),
        _c_char_p(key.encode()),
        _c_char_p(os.fsencode(value)),
        _c_int(0),
    )
    _check(ret, "fsconfig", f"{key}={value}")


def fsconfig_flag(fsfd: int, key: str) -> None:
    ret = libc.syscall(
        NR_FSCONFIG, _c_int(fsfd), _c_uint(FSCONFIG_SET_FLAG), _c_char_p(key.encode()), None,
        _c_int(0),
    )  # fmt: skip
    _check(ret, "fsconfig", key)


def fsconfig_fd(fsfd: int, key: str, fd: int) -> None:
    ret = libc.syscall(
        NR_FSCONFIG, _c_int(fsfd), _c_uint(FSCONFIG_SET_FD), _c_char_p(key.encode()), None,
        _c_int(fd),
    )  # fmt: skip
    _check(ret, "fsconfig", key)


def fsconfig_create(fsfd: int) -> None:
    ret = libc.syscall(
        NR_FSCONFIG, _c_int(fsfd), _c_uint(FSCONFIG_CMD_CREATE), None, None, _c_int(0)
    )
    _check(ret, "fsconfig(create)")


def fsmount(fsfd: int, attr_flags: int = 0) -> int:
    ret = libc.syscall(NR_FSMOUNT, _c_int(fsfd), _c_uint(FSMOUNT_CLOEXEC), _c_uint(attr_flags))
    return _check(ret, "fsmount")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    ret = libc.syscall(NR_OPEN_TREE, _c_int(dirfd), _c_char_p(os.fsencode(path)), _c_uint(flags))
    return _check(ret, "open_tree", path)


def move_mount(from_dfd: int, from_path: str, to_dfd: int, to_path: str, flags: int) -> None:
    ret = libc.syscall(
        NR_MOVE_MOUNT,
        _c_int(from_dfd),
        _c_char_p(os.fsencode(from_path)),
        _c_int(to_dfd),
        _c_char_p(os.fsencode(to_path)),
        _c_uint(flags),
    )
    _check(ret, "move_mount", to_path)


def mount_setattr(
    dfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, propagation: int = 0
) -> None:
    attr = MountAttr(attr_set, attr_clr, propagation, 0)
    ret = libc.syscall(
        NR_MOUNT_SETATTR,
        _c_int(dfd),
        _c_char_p(os.fsencode(path)),
        _c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(ret, "mount_setattr", path)


def fstatfs_type(fd: int) -> int:
    """f_type of the filesystem an fd is on (its magic number, <linux/magic.h>)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is the first long
    _check(libc.fstatfs(_c_int(fd), buf), "fstatfs")
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], "little", signed=True)


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = libc.syscall(
        NR_OPENAT2,
        _c_int(dirfd),
        _c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    return _check(ret, "openat2", path)

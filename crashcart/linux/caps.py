"""Capability sets: names, masks, and dropping the bounding set before exec.

For a root process, execve gives permitted = effective = the bounding set, so dropping
capabilities from the bounding set right before exec is what limits the command.
"""

from __future__ import annotations

import ctypes

from crashcart.linux import libc

NAMES: tuple[str, ...] = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin",
    "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace",
    "sys_pacct", "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time",
    "sys_tty_config", "mknod", "lease", "audit_write", "audit_control", "setfcap",
    "mac_override", "mac_admin", "syslog", "wake_alarm", "block_suspend", "audit_read",
    "perfmon", "bpf", "checkpoint_restore",
)  # fmt: skip

NUMBERS = {name: i for i, name in enumerate(NAMES)}


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return len(NAMES) - 1


def mask(names: list[str] | tuple[str, ...]) -> int:
    out = 0
    for name in names:
        out |= 1 << NUMBERS[name.lower().removeprefix("cap_")]
    return out


def names(value: int) -> list[str]:
    return [name for i, name in enumerate(NAMES) if value >> i & 1]


def drop_bounding(keep: int) -> None:
    """Drop every capability not in `keep` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if not keep >> cap & 1 and libc.prctl(libc.PR_CAPBSET_READ, cap) == 1:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)


# <linux/capability.h>: capget/capset with version 3 (two 32-bit words per set).
_CAPABILITY_VERSION_3 = 0x20080522


def _sets() -> tuple[ctypes.Array[ctypes.c_uint32], ctypes.Array[ctypes.c_uint32]]:
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # {effective, permitted, inheritable} x 2 words
    return header, data


def current() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread."""
    header, data = _sets()
    if libc.libc.capget(header, data) < 0:
        raise libc.oserror("capget")
    return tuple(data[i] | data[i + 3] << 32 for i in range(3))  # type: ignore[return-value]


def set_current(effective: int, permitted: int, inheritable: int) -> None:
    header, data = _sets()
    for i, value in enumerate((effective, permitted, inheritable)):
        data[i], data[i + 3] = value & 0xFFFFFFFF, value >> 32
    if libc.libc.capset(header, data) < 0:
        raise libc.oserror("capset")


def clear_inheritable() -> None:
    """An inheritable capability survives a root execve whatever the bounding set says
    (P' = P(inheritable) | bounding for uid 0): the profile must clear it too."""
    effective, permitted, _ = current()
    set_current(effective, permitted, 0)


def limit_to(keep: int) -> None:
    """Keep only `keep` in every set of this process, bounding set included, and set
    no_new_privs: nothing this process or what it execs does can regain the rest."""
    drop_bounding(keep)
    effective, permitted, _ = current()
    set_current(effective & keep, permitted & keep, 0)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)


def reduce_to(keep: int) -> None:
    """Keep only `keep` in the effective, permitted and inheritable sets, and set
    no_new_privs (lowering needs no capability; the bounding set stays as it is, which
    matters only to a process that execs)."""
    effective, permitted, _ = current()
    set_current(effective & keep, permitted & keep, 0)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)

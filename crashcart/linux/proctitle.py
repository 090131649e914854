"""Rewrite what /proc/PID/cmdline and /proc/PID/environ show for this process.

The kernel reads both straight from the argument and environment areas at the top of the
process's stack (fields 48-51 of /proc/self/stat); overwriting that memory in place is
how setproctitle works. crashcart uses it before anything of its own becomes visible
inside a container, so neither the host's command line nor its environment can be read
there.
"""

from __future__ import annotations

import ctypes

from crashcart.linux import libc

PR_SET_NAME = libc.PR_SET_NAME
PR_GET_NAME = libc.PR_GET_NAME


def areas() -> tuple[int, int, int, int]:
    """Where the argument and environment areas are (read /proc/self while it is ours:
    a forked child has the same addresses, and may not see its own /proc entry)."""
    return _areas()


def _areas() -> tuple[int, int, int, int]:
    with open("/proc/self/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): arg_start is field 48.
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    return arg_start, arg_end, env_start, env_end


def scrub(title: str, where: tuple[int, int, int, int] | None = None) -> None:
    """Replace the command line by `title`, blank the environment, set comm."""
    arg_start, arg_end, env_start, env_end = where or _areas()
    if arg_end > arg_start:
        data = title.encode()[: arg_end - arg_start - 1]
        ctypes.memset(arg_start, 0, arg_end - arg_start)
        ctypes.memmove(arg_start, data, len(data))
    if env_end > env_start:
        ctypes.memset(env_start, 0, env_end - env_start)
    name = ctypes.create_string_buffer(title.encode()[:15])
    libc.prctl(PR_SET_NAME, ctypes.addressof(name))


def save() -> tuple[bytes, bytes, bytes]:
    """What scrub() overwrites (command line, environment, comm), for restore()."""
    arg_start, arg_end, env_start, env_end = _areas()
    name = ctypes.create_string_buffer(16)
    libc.prctl(PR_GET_NAME, ctypes.addressof(name))
    return (
        ctypes.string_at(arg_start, max(arg_end - arg_start, 0)),
        ctypes.string_at(env_start, max(env_end - env_start, 0)),
        name.value,
    )


def restore(saved: tuple[bytes, bytes, bytes]) -> None:
    arg_start, _, env_start, _ = _areas()
    args, env, name = saved
    ctypes.memmove(arg_start, args, len(args))
    ctypes.memmove(env_start, env, len(env))
    buf = ctypes.create_string_buffer(name[:15])
    libc.prctl(PR_SET_NAME, ctypes.addressof(buf))

"""cgroup hierarchies: where they are mounted, and hiding the cost of joining one.

On cgroup v1 (and v2 without favordynmods) every write to cgroup.procs takes
cgroup_threadgroup_rwsem for writing, and the first writer after a quiet spell waits for
an RCU grace period: measured 6-28 ms here, more than the rest of an attach. A writer that
arrives while the previous one is still within its exit grace period waits for nothing.
So crashcart starts a no-op migration (itself, into the cgroup it is already in) in a
thread as soon as it knows it will attach; the grace period then passes while Python
imports and looks the target up, and the real join in the session is free.
"""

from __future__ import annotations

import _thread
import os

from crashcart.linux import procfs
from crashcart.linux.fd import closing

Mounts = list[tuple[frozenset[str], str]]


def mounts() -> Mounts:
    return parse_mounts(procfs.read_text("/proc/self/mountinfo"))


def parse_mounts(mountinfo: str) -> Mounts:
    """(super options, mount point) of each cgroup hierarchy; cgroup2 has the option set
    {"cgroup2"}. v1 super options name the controllers (cpu, cpuacct, name=systemd...)
    among other flags (rw, xattr, nsdelegate...)."""
    out = []
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        if tail[0] == "cgroup2":
            out.append((frozenset({"cgroup2"}), fields[4]))
        elif tail[0] == "cgroup":
            out.append((frozenset(tail[2].split(",")), fields[4]))
    return out


def find(found: Mounts, controllers: str) -> str | None:
    """Mount point of the hierarchy that /proc/PID/cgroup names by `controllers`
    ("cpu,cpuacct", "name=systemd", or "" for the unified hierarchy)."""
    wanted = frozenset(controllers.split(",")) if controllers else frozenset({"cgroup2"})
    for options, point in found:
        if wanted <= options:
            return point
    return None


def warm_up() -> None:
    """Start a no-op self-migration in a thread; nothing waits for it."""
    _thread.start_new_thread(_self_migrate, ())


def _self_migrate() -> None:
    try:
        found = mounts()
        for _, ctrls, path in procfs.parse_cgroup(procfs.read_text("/proc/self/cgroup")):
            base = find(found, ctrls)
            if base:
                procs = f"{base}{path}/cgroup.procs"
                with closing(os.open(procs, os.O_WRONLY | os.O_CLOEXEC)) as fd:
                    os.write(fd, str(os.getpid()).encode())
                return
    except OSError:
        pass  # only an optimisation


def frozen(controllers: str, base: str, path: str) -> bool:
    """Whether the cgroup is frozen (the container is paused): cgroup v1's freezer.state,
    or cgroup v2's `frozen 1` in cgroup.events."""
    name = "cgroup.events" if not controllers else "freezer.state"
    if controllers and "freezer" not in controllers.split(","):
        return False
    try:
        text = procfs.read_text(f"{base}{path}/{name}", limit=4096)
    except OSError:
        return False
    if controllers:
        return text.strip() in ("FROZEN", "FREEZING")
    return "frozen 1" in text.split("\n")

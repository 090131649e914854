"""LXC: the containers under the lxcpath (default /var/lib/lxc, one directory with a
`config` per container) and, for a running one, its monitor process. LXC 5 runs each
container's monitor (`[lxc monitor] LXCPATH NAME`) in the cgroup `lxc.monitor.NAME` and the
container in `lxc.payload.NAME`; the monitor's child is the container's init. No lxc-info
on the attach path (its command socket speaks a binary protocol of LXC's own)."""

from __future__ import annotations

import os

from crashcart.targets import procs
from crashcart.targets.model import Target

NAME = "lxc"
# Where the monitor's cgroup is looked for first: v2 (unified or hybrid), then v1 controllers.
CGROUP_DIRS = ("", "unified", "pids", "systemd", "memory")


def lxcpath() -> str:
    return os.environ.get("CRASHCART_LXC_PATH", "/var/lib/lxc")


def available() -> bool:
    return os.path.isdir(lxcpath())


def _valid(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


def _monitor(name: str) -> int:
    """The PID of NAME's monitor: from its cgroup, else by its command line."""
    for sub in CGROUP_DIRS:
        base = os.path.join(procs.CGROUP_ROOT, sub) if sub else procs.CGROUP_ROOT
        try:
            with open(f"{base}/lxc.monitor.{name}/cgroup.procs") as f:
                pids = [int(p) for p in f.read().split()]
        except (OSError, ValueError):
            continue
        if pids:
            return pids[0]
    # LXC rewrites the monitor's argv into one string: "[lxc monitor] LXCPATH NAME".
    want = f"[lxc monitor] {lxcpath()} {name}"
    for pid in procs.by_comm("lxc-start"):
        if " ".join(procs.cmdline(pid)).strip("\0 ") == want:
            return pid
    return 0


def _init(name: str) -> int:
    """The container's init: the monitor's child whose cgroup is lxc.payload.NAME."""
    monitor = _monitor(name)
    for child in procs.children(monitor) if monitor else []:
        if f"/lxc.payload.{name}" in (procs.cgroups(child) or ""):
            return child
    return 0


def _target(name: str) -> Target:
    pid = _init(name)
    if not pid:
        return Target(NAME, name, name, 0, state="stopped")
    return Target(NAME, name, name, pid, state=procs.running_state(pid),
                  started=procs.start_time(pid))  # fmt: skip


def find(query: str) -> list[Target]:
    """Names are the IDs: matched exactly."""
    if not _valid(query) or not os.path.isfile(os.path.join(lxcpath(), query, "config")):
        return []
    return [_target(query)]


def list_running() -> list[Target]:
    try:
        names = sorted(os.listdir(lxcpath()))
    except OSError:
        return []
    out = []
    for name in names:
        if os.path.isfile(os.path.join(lxcpath(), name, "config")):
            t = _target(name)
            if t.pid:
                out.append(t)
    return out


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["lxc-attach", "-P", lxcpath(), "-n", target.id, "--clear-env"]
    for key, value in env.items():
        cmd += ["-v", f"{key}={value}"]
    return [*cmd, "--", *argv]

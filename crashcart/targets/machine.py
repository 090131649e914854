"""systemd-nspawn containers, registered with machined or not.

With machined (PID 1 is systemd): /run/systemd/machines/NAME, a KEY=VALUE file whose
LEADER= is the container's PID 1. Without it (`--register=no`, or no systemd on the host):
nspawn's own process. nspawn keeps /run/systemd/nspawn/propagate/NAME for each machine it
runs (a stat tells a bare name apart cheaply; the directory outlives nspawn where /run is
not a tmpfs, so it is only a hint), and nspawn's child, in a new pid namespace, is the
container's leader. The machine name is `-M/--machine`, else the basename of `-D`."""

from __future__ import annotations

import os

from crashcart.linux import ns
from crashcart.targets import procs
from crashcart.targets.model import Target

NAME = "machine"


def machines_dir() -> str:
    return os.environ.get("CRASHCART_MACHINES_DIR", "/run/systemd/machines")


def propagate_dir() -> str:
    return os.environ.get("CRASHCART_NSPAWN_PROPAGATE", "/run/systemd/nspawn/propagate")


def available() -> bool:
    return os.path.isdir(machines_dir()) or os.path.isdir(propagate_dir())


def _valid(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in name


def _registered(name: str) -> int:
    """LEADER= of a machine machined knows (a container, not a VM), else 0."""
    try:
        with open(os.path.join(machines_dir(), name)) as f:
            fields = dict(line.partition("=")[::2] for line in f.read(65536).splitlines())
    except OSError:
        return 0
    if fields.get("CLASS", "container") != "container" or not fields.get("LEADER", "").isdigit():
        return 0
    return int(fields["LEADER"])


def machine_name(argv: list[str]) -> str:
    """The machine name an nspawn command line gives its container."""
    name = directory = ""
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            break
        if arg in ("-M", "--machine", "-D", "--directory", "-i", "--image"):
            value = next(args, "")
        elif arg.startswith(("--machine=", "--directory=", "--image=")):
            arg, _, value = arg.partition("=")
        elif arg.startswith(("-M", "-D", "-i")) and len(arg) > 2:
            arg, value = arg[:2], arg[2:]
        elif not arg.startswith("-"):
            break  # the container's command begins
        else:
            continue
        if arg in ("-M", "--machine"):
            name = value
        elif arg in ("-D", "--directory", "-i", "--image"):
            directory = value
    base = os.path.basename(directory.rstrip("/"))
    return name or base.removesuffix(".raw")


def _nspawn_leaders() -> dict[str, int]:
    """machine name -> leader PID of every nspawn process running here."""
    out = {}
    for pid in procs.by_comm("systemd-nspawn"):
        name = machine_name(procs.cmdline(pid))
        own_ns = _pidns(pid)
        for child in procs.children(pid):
            if name and _pidns(child) not in (None, own_ns):
                out[name] = child
    return out


def _pidns(pid: int) -> tuple[int, int] | None:
    try:
        return ns.ns_id(pid, "pid")
    except OSError:
        return None


def _target(name: str, pid: int) -> Target:
    return Target(NAME, name, name, pid, state=procs.running_state(pid),
                  started=procs.start_time(pid))  # fmt: skip


def find(query: str) -> list[Target]:
    """Machine names are IDs: matched exactly."""
    if not _valid(query):
        return []
    pid = _registered(query)
    if not pid and os.path.isdir(os.path.join(propagate_dir(), query)):
        pid = _nspawn_leaders().get(query, 0)
    return [_target(query, pid)] if pid and procs.start_time(pid) is not None else []


def list_running() -> list[Target]:
    found: dict[str, int] = {}
    try:
        for name in os.listdir(machines_dir()):
            if pid := _registered(name):
                found[name] = pid
    except OSError:
        pass
    if os.path.isdir(propagate_dir()) and os.listdir(propagate_dir()):
        for name, pid in _nspawn_leaders().items():
            found.setdefault(name, pid)
    return [_target(n, p) for n, p in sorted(found.items()) if procs.start_time(p) is not None]


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    # No machined to ask for a shell (`machinectl shell` needs it): enter the leader's
    # namespaces the way pid:// targets are entered.
    envs = [f"{key}={value}" for key, value in env.items()]
    return ["nsenter", "-a", "-t", str(target.pid), "/dev/crashcart/usr/bin/env", *envs, *argv]

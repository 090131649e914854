"""crun: its state directory, /run/crun/ID/status (JSON: pid, process-start-time,
cgroup-path, bundle), read like runc's state.json. IDs are names: matched exactly, only a
hex ID by prefix. The PID is trusted only if that process started when the file says."""

from __future__ import annotations

import os

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError
from crashcart.targets import procs
from crashcart.targets.model import Target, field, matches

NAME = "crun"


def root() -> str:
    return os.environ.get("CRASHCART_CRUN_ROOT", "/run/crun")


def available() -> bool:
    return os.path.isdir(root())


def read_status(cid: str) -> Target | None:
    """The container `cid` from its status file, with its state; None if there is none."""
    path = os.path.join(root(), cid, "status")
    try:
        with open(path, "rb") as f:
            status = fastjson.loads(f.read(1 << 20))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise RuntimeAnswerError(f"{path}: unreadable crun state ({e})") from None
    pid = field(status, "pid", int, path)
    start = field(status, "process-start-time", int, path)
    if pid <= 0 or procs.start_time(pid) != start:
        return Target(NAME, cid, cid, 0, state="stopped")
    if os.path.exists(os.path.join(root(), cid, "exec.fifo")):
        state = "created"  # `crun create` done, `crun start` not yet
    else:
        state = procs.running_state(pid)
    return Target(NAME, cid, cid, pid, state=state, started=start)


def _ids() -> list[str]:
    try:
        return sorted(os.listdir(root()))
    except FileNotFoundError:
        return []


def find(query: str) -> list[Target]:
    if "/" in query or query in (".", ".."):
        return []
    exact = read_status(query)
    if exact:
        return [exact]
    out = []
    for cid in _ids():
        if matches(query, cid, [])[0] and (t := read_status(cid)):
            t.exact = False
            out.append(t)
    return out


def list_running() -> list[Target]:
    return [t for cid in _ids() if (t := read_status(cid)) and t.state in ("running", "paused")]


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["crun", "--root", root(), "exec"] + (["-t"] if tty else [])
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    return [*cmd, target.id, *argv]

"""runc (and any OCI runtime keeping runc's state.json): /run/runc/ID/state.json.

Reading the state file costs microseconds where `runc state` costs a process start. The
PID is trusted only if the process still runs and started when the state file says
(init_process_start), so a recycled PID is never taken for the container.
"""

from __future__ import annotations

import os

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError
from crashcart.targets import procs
from crashcart.targets.model import Target, field, is_hex_id, matches

NAME = "runc"


def root() -> str:
    return os.environ.get("CRASHCART_RUNC_ROOT", "/run/runc")


def available() -> bool:
    return os.path.isdir(root())


def started_at(pid: int) -> int | None:
    return procs.start_time(pid)


def read_state(path: str) -> tuple[str, int, dict[str, str]] | None:
    """(id, pid, labels) of a live container from a runc state.json, None if it is gone."""
    found = read_any_state(path)
    return (found[0], found[1], found[2]) if found and found[3] != "stopped" else None


def read_any_state(path: str) -> tuple[str, int, dict[str, str], str] | None:
    """(id, pid, labels, state) from a runc state.json (None when there is none). The state
    is what `runc state` would say: created while the init waits on exec.fifo, paused when
    frozen, stopped when the init process is gone or is another process now."""
    try:
        with open(path, "rb") as f:
            state = fastjson.loads(f.read(16 << 20))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise RuntimeAnswerError(f"{path}: unreadable runc state ({e})") from None
    where = path
    cid = field(state, "id", str, where)
    pid = field(state, "init_process_pid", int, where)
    start = field(state, "init_process_start", int, where)
    labels: dict[str, str] = {}
    config = state.get("config")
    if isinstance(config, dict) and isinstance(config.get("labels"), list):
        for label in config["labels"]:
            if isinstance(label, str):
                key, _, value = label.partition("=")
                labels[key] = value
    if pid <= 0 or started_at(pid) != start:
        return cid, 0, labels, "stopped"
    if os.path.exists(os.path.join(os.path.dirname(path), "exec.fifo")):
        return cid, pid, labels, "created"
    return cid, pid, labels, procs.running_state(pid)


def _target(found: tuple[str, int, dict[str, str], str], exact: bool = True) -> Target:
    cid, pid, _, state = found
    return Target(NAME, cid, cid, pid, exact=exact, state=state)


def list_running() -> list[Target]:
    out: list[Target] = []
    try:
        names = os.listdir(root())
    except FileNotFoundError:
        return out
    for name in names:
        found = read_any_state(os.path.join(root(), name, "state.json"))
        if found and found[3] in ("running", "paused"):
            out.append(_target(found))
    return out


def find(query: str) -> list[Target]:
    if "/" in query or query in (".", ".."):
        return []
    exact = read_any_state(os.path.join(root(), query, "state.json"))
    if exact:
        return [_target(exact)]
    if not is_hex_id(query.ljust(12, "0")):
        return []  # IDs that are names match exactly; only a hex ID has prefixes
    # The state directory is named after the ID: read only the candidates' state files
    # (Podman's containers live here too, a hundred of them cost 50 ms to parse).
    try:
        names = [n for n in os.listdir(root()) if n.startswith(query) and is_hex_id(n)]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        found = read_any_state(os.path.join(root(), name, "state.json"))
        if found and matches(query, found[0], [])[0]:
            out.append(_target(found, exact=False))
    return out


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["runc", "--root", root(), "exec"] + (["-t"] if tty else [])
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    return [*cmd, target.id, *argv]

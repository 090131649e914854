"""runc (and any OCI runtime keeping runc's state.json): /run/runc/ID/state.json.

Reading the state file costs microseconds where `runc state` costs a process start. The
PID is trusted only if the process still runs and started when the state file says
(init_process_start), so a recycled PID is never taken for the container.
"""

from __future__ import annotations

import os

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError
from crashcart.linux import procfs
from crashcart.targets.model import Target, field, matches

NAME = "runc"


def root() -> str:
    return os.environ.get("CRASHCART_RUNC_ROOT", "/run/runc")


def available() -> bool:
    return os.path.isdir(root())


def started_at(pid: int) -> int | None:
    try:
        return procfs.start_time(procfs.read_text(f"{procfs.PROC}/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def read_state(path: str) -> tuple[str, int, dict[str, str]] | None:
    """(id, pid, labels) of a live container from a runc state.json, None if it is gone."""
    try:
        with open(path, "rb") as f:
            state = fastjson.loads(f.read(16 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise RuntimeAnswerError(f"{path}: unreadable runc state ({e})") from None
    where = path
    cid = field(state, "id", str, where)
    pid = field(state, "init_process_pid", int, where)
    start = field(state, "init_process_start", int, where)
    if pid <= 0 or started_at(pid) != start:
        return None
    labels: dict[str, str] = {}
    config = state.get("config")
    if isinstance(config, dict) and isinstance(config.get("labels"), list):
        for label in config["labels"]:
            if isinstance(label, str):
                key, _, value = label.partition("=")
                labels[key] = value
    return cid, pid, labels


def list_running() -> list[Target]:
    out: list[Target] = []
    try:
        names = os.listdir(root())
    except FileNotFoundError:
        return out
    for name in names:
        found = read_state(os.path.join(root(), name, "state.json"))
        if found:
            cid, pid, labels = found
            out.append(Target(NAME, cid, cid, pid, "", None))
    return out


def find(query: str) -> list[Target]:
    if "/" in query or query in (".", ".."):
        return []
    exact = read_state(os.path.join(root(), query, "state.json"))
    if exact:
        return [Target(NAME, exact[0], exact[0], exact[1])]
    # The state directory is named after the ID: read only the candidates' state files
    # (Podman's containers live here too, a hundred of them cost 50 ms to parse).
    try:
        names = [n for n in os.listdir(root()) if n.startswith(query)]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        found = read_state(os.path.join(root(), name, "state.json"))
        if found and matches(query, found[0], [])[0]:
            out.append(Target(NAME, found[0], found[0], found[1], exact=False))
    return out


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["runc", "--root", root(), "exec"] + (["-t"] if tty else [])
    for key, value in env.items():
        cmd += ["--env", f"{key}={value}"]
    return [*cmd, target.id, *argv]

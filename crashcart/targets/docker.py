"""Docker: the Engine API over its unix socket (the daemon resolves names and ID prefixes)."""

from __future__ import annotations

import os

from crashcart.errors import RuntimeAnswerError
from crashcart.targets import unixhttp
from crashcart.targets.model import Target, field, matches

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

NAME = "docker"


def socket_path() -> str:
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return "/var/run/docker.sock"


def available() -> bool:
    return os.path.exists(socket_path())


def _target(info: Any, query: str | None = None) -> Target:
    where = "docker inspect"
    cid = field(info, "Id", str, where)
    name = field(info, "Name", str, where).lstrip("/")
    state = field(info, "State", dict, where)
    pid = field(state, "Pid", int, where + " State")
    image = info.get("Config", {}).get("Image", "") if isinstance(info.get("Config"), dict) else ""
    exact = query is None or query in (cid, name)
    status, detail = docker_state(state)
    return Target(NAME, cid, name, pid, image=str(image), exact=exact, state=status, detail=detail)


# Docker's State.Status -> crashcart's state (a paused container is also State.Running).
STATES = {"running": "running", "paused": "paused", "restarting": "restarting",
          "created": "created", "exited": "stopped", "dead": "stopped",
          "removing": "stopped"}  # fmt: skip


def docker_state(state: dict[str, Any]) -> tuple[str, str]:
    """(state, detail) from an inspect State object (Podman's API has the same shape)."""
    status = STATES.get(str(state.get("Status", "")), str(state.get("Status", "")) or "unknown")
    detail = ""
    if status == "stopped":
        detail = f"exit code {state.get('ExitCode')}"
        finished = str(state.get("FinishedAt", ""))
        if finished and not finished.startswith("0001-"):
            detail += f", finished {finished[:19].replace('T', ' ')} UTC"
    return status, detail


def _inspect(ident: str) -> tuple[int, Any]:
    return unixhttp.get(socket_path(), f"/containers/{unixhttp.path_quote(ident)}/json")


def find(query: str) -> list[Target]:
    try:
        status, info = _inspect(query)
    except unixhttp.Unreachable:
        return []
    if status == 200:
        return [_target(info, query)]
    if status == 404 and "multiple" not in _message(info).lower():
        return []
    if status >= 400 and "multiple" not in _message(info).lower():
        raise RuntimeAnswerError(f"docker answered {status}: {_message(info)}")
    return [t for t in list_running() if matches(query, t.id, [t.name])[0]]


def _message(body: Any) -> str:
    return str(body.get("message", "")) if isinstance(body, dict) else str(body)


def list_running() -> list[Target]:
    try:
        status, items = unixhttp.get(socket_path(), "/containers/json")
    except unixhttp.Unreachable:
        return []
    if status != 200 or not isinstance(items, list):
        raise RuntimeAnswerError(f"docker answered {status} to a container list")
    out = []
    for item in items:
        cid = field(item, "Id", str, "docker ps")
        status, info = _inspect(cid)
        if status == 200 and isinstance(info, dict) and info.get("State", {}).get("Running"):
            out.append(_target(info))  # running, paused or restarting: it has a process
    return out


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["docker", "exec", "-i"] + (["-t"] if tty else [])
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, target.name or target.id, *argv]

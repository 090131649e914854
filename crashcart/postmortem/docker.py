"""Docker: the container's record from the Engine API (GET /containers/ID/json): overlay2's
GraphDriver data (LowerDir colon-separated, UpperDir), Mounts, Config, State, LogPath;
an image's from GET /images/REF/json."""

from __future__ import annotations

from crashcart.errors import RuntimeAnswerError, TargetError
from crashcart.postmortem.record import Record
from crashcart.targets import docker, unixhttp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Files Docker bind-mounts into every container from its own directory.
DOCKER_FILES = (("HostnamePath", "/etc/hostname"), ("HostsPath", "/etc/hosts"),
                ("ResolvConfPath", "/etc/resolv.conf"))  # fmt: skip


def _get(path: str) -> tuple[int, Any]:
    try:
        return unixhttp.get(docker.socket_path(), path)
    except unixhttp.Unreachable:
        return 404, None


def find(query: str) -> Record | None:
    """The container `query` names (name, ID, unique ID prefix), running or not."""
    status, info = _get(f"/containers/{unixhttp.path_quote(query)}/json")
    if status == 404:
        return None
    if status != 200 or not isinstance(info, dict):
        raise RuntimeAnswerError(f"docker answered {status} about container {query!r}")
    return _container(info)


def find_image(ref: str) -> Record | None:
    status, info = _get(f"/images/{unixhttp.path_quote(ref)}/json")
    if status == 404:
        return None
    if status != 200 or not isinstance(info, dict):
        raise RuntimeAnswerError(f"docker answered {status} about image {ref!r}")
    r = Record("docker", str(info.get("Id", "")), ref)
    r.is_image = True
    r.image = ref
    _layers(r, info)
    _config(r, _dict(info, "Config"))
    r.hostname = "replay"
    return r


def _dict(info: Any, key: str) -> dict[str, Any]:
    value = info.get(key) if isinstance(info, dict) else None
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _container(info: dict[str, Any]) -> Record:
    r = Record("docker", str(info.get("Id", "")), str(info.get("Name", "")).lstrip("/"))
    config = _dict(info, "Config")
    r.image = str(config.get("Image", ""))
    _config(r, config)
    r.hostname = str(config.get("Hostname", "")) or r.short_id
    state = _dict(info, "State")
    r.status = str(state.get("Status", ""))
    r.pid = int(state.get("Pid") or 0) if state.get("Running") else 0
    r.exit_code = state.get("ExitCode") if isinstance(state.get("ExitCode"), int) else None
    r.oom_killed = bool(state.get("OOMKilled"))
    r.started_at = _time(state.get("StartedAt"))
    r.finished_at = _time(state.get("FinishedAt"))
    r.error = str(state.get("Error", ""))
    count = info.get("RestartCount")
    r.restart_count = count if isinstance(count, int) else None
    if r.status == "created":
        r.exit_code = None
    _layers(r, info)
    for m in info.get("Mounts") or []:
        if isinstance(m, dict) and m.get("Source") and m.get("Destination"):
            r.mounts.append((str(m["Source"]), str(m["Destination"])))
    for key, dest in DOCKER_FILES:
        if info.get(key):
            r.mounts.append((str(info[key]), dest))
    r.log_path = str(info.get("LogPath") or "")
    log_type = _dict(_dict(info, "HostConfig"), "LogConfig").get("Type", "")
    r.log_format = "json-file" if log_type in ("json-file", "") and r.log_path else ""
    return r


def _time(value: Any) -> str:
    text = str(value or "")
    return "" if text.startswith("0001-01-01") else text


def _config(r: Record, config: dict[str, Any]) -> None:
    r.entrypoint = _strings(config.get("Entrypoint"))
    r.cmd = _strings(config.get("Cmd"))
    r.env = _strings(config.get("Env"))
    r.workdir = str(config.get("WorkingDir") or "/")
    r.user = str(config.get("User") or "")


def _layers(r: Record, info: dict[str, Any]) -> None:
    graph = _dict(info, "GraphDriver")
    if graph.get("Name") != "overlay2":
        raise TargetError(
            f"{r.describe()}: docker's storage driver is {graph.get('Name')!r}; crashcart "
            "reads overlay2 layers only"
        )
    data = _dict(graph, "Data")
    upper = str(data.get("UpperDir") or "")
    lowers = [d for d in str(data.get("LowerDir") or "").split(":") if d]
    r.upper = "" if r.is_image else upper
    r.layers = [d for d in (upper, *lowers) if d]


def available() -> bool:
    return docker.available()

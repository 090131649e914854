"""Podman: the container and its layers from containers/storage (overlay-containers/
containers.json names the container's layer; overlay-layers/layers.json chains each layer
to its parent; overlay/LAYER/diff holds each one); its configuration and death record from
`podman container inspect` (libpod keeps them in its own database), off the attach path."""

from __future__ import annotations

import json
import os
import subprocess

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError, TargetError
from crashcart.postmortem.record import Record
from crashcart.targets import podman
from crashcart.targets.model import matches

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DRIVER = "overlay"


def available() -> bool:
    return os.path.exists(_containers_json())


def _containers_json() -> str:
    return os.path.join(podman.graph_root(), f"{DRIVER}-containers", "containers.json")


def _load(path: str) -> list[Any]:
    try:
        with open(path, "rb") as f:
            items = fastjson.loads(f.read(64 << 20))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise RuntimeAnswerError(f"{path}: unreadable podman store ({e})") from None
    return items if isinstance(items, list) else []


def _match(query: str) -> dict[str, Any] | None:
    found = []
    for item in _load(_containers_json()):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        names = [n for n in item.get("names") or [] if isinstance(n, str)]
        ok, exact = matches(query, item["id"], names)
        if exact:
            return item
        if ok:
            found.append(item)
    if len(found) > 1:
        raise TargetError(f"{query!r} matches {len(found)} podman containers",
                          hint="use a longer ID prefix or the name")  # fmt: skip
    return found[0] if found else None


def layer_chain(layer: str) -> list[str]:
    """The layer's diff directory and its parents', topmost first."""
    base = os.path.join(podman.graph_root(), f"{DRIVER}-layers")
    parents: dict[str, str] = {}
    for name in ("layers.json", "volatile-layers.json"):
        for item in _load(os.path.join(base, name)):
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                parents[item["id"]] = str(item.get("parent") or "")
    out: list[str] = []
    while layer and len(out) < 500:
        out.append(os.path.join(podman.graph_root(), DRIVER, layer, "diff"))
        layer = parents.get(layer, "")
    return out


def find(query: str) -> Record | None:
    item = _match(query)
    if item is None:
        return None
    r = Record("podman", item["id"], (item.get("names") or [item["id"]])[0])
    r.layers = layer_chain(str(item.get("layer") or ""))
    r.upper = r.layers[0] if r.layers else ""
    _inspect(r)
    return r


def _podman_inspect(kind: str, ident: str) -> dict[str, Any] | None:
    try:
        proc = subprocess.run(["podman", kind, "inspect", ident], capture_output=True,
                              timeout=30, stdin=subprocess.DEVNULL)  # fmt: skip
        info = json.loads(proc.stdout)[0] if proc.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        info = None
    return info if isinstance(info, dict) else None


def find_image(ref: str) -> Record | None:
    """An image (--replay podman://IMAGE): its layers and its configuration."""
    info = _podman_inspect("image", ref)
    if info is None:
        return None
    r = Record("podman", str(info.get("Id", "")), ref)
    r.is_image = True
    r.image = ref
    data = _dict(_dict(info, "GraphDriver"), "Data")
    lowers = [d for d in str(data.get("LowerDir") or "").split(":") if d]
    r.layers = [d for d in (str(data.get("UpperDir") or ""), *lowers) if d]
    config = _dict(info, "Config")
    entry = config.get("Entrypoint")
    r.entrypoint = [str(a) for a in entry] if isinstance(entry, list) else []
    r.cmd = [str(a) for a in config.get("Cmd") or []]
    r.env = [str(e) for e in config.get("Env") or []]
    r.workdir = str(config.get("WorkingDir") or "/")
    r.user = str(config.get("User") or "")
    r.hostname = "replay"
    return r


def _inspect(r: Record) -> None:
    info = _podman_inspect("container", r.id)
    if info is None:
        raise RuntimeAnswerError(f"podman container inspect {r.short_id} failed")
    config = _dict(info, "Config")
    state = _dict(info, "State")
    r.image = str(config.get("Image") or info.get("ImageName") or "")
    _command(r, config)
    r.user = str(config.get("User") or "")
    r.hostname = str(config.get("Hostname") or r.short_id)
    r.status = str(state.get("Status", ""))
    r.pid = int(state.get("Pid") or 0) if state.get("Running") else 0
    code = state.get("ExitCode")
    r.exit_code = code if isinstance(code, int) and r.status != "created" else None
    r.oom_killed = bool(state.get("OOMKilled"))
    r.started_at = _time(state.get("StartedAt"))
    r.finished_at = _time(state.get("FinishedAt"))
    r.error = str(state.get("Error") or "")
    count = info.get("RestartCount")
    r.restart_count = count if isinstance(count, int) else None
    for m in info.get("Mounts") or []:
        if isinstance(m, dict) and m.get("Source") and m.get("Destination"):
            r.mounts.append((str(m["Source"]), str(m["Destination"])))
    log = (info.get("HostConfig") or {}).get("LogConfig") or {}
    if log.get("Type") == "k8s-file" and log.get("Path"):
        r.log_path, r.log_format = str(log["Path"]), "k8s-file"


def _command(r: Record, config: dict[str, Any]) -> None:
    """What the runtime ran: the OCI spec podman wrote for it (userdata/config.json, once
    started); before that, Config (whose Entrypoint is one string in Podman 4)."""
    path = os.path.join(podman.graph_root(), f"{DRIVER}-containers", r.id, "userdata",
                        "config.json")  # fmt: skip
    try:
        with open(path, "rb") as f:
            process = fastjson.loads(f.read(16 << 20)).get("process") or {}
    except (OSError, ValueError, AttributeError):
        process = {}
    if isinstance(process, dict) and isinstance(process.get("args"), list):
        r.cmd = [str(a) for a in process["args"]]
        r.env = [str(e) for e in process.get("env") or []]
        r.workdir = str(process.get("cwd") or "/")
        return
    entry = config.get("Entrypoint")
    r.entrypoint = entry.split() if isinstance(entry, str) else [str(a) for a in entry or []]
    r.cmd = [str(a) for a in config.get("Cmd") or []]
    r.env = [str(e) for e in config.get("Env") or []]
    r.workdir = str(config.get("WorkingDir") or "/")


def _dict(info: dict[str, Any], key: str) -> dict[str, Any]:
    value = info.get(key)
    return value if isinstance(value, dict) else {}


def _time(value: Any) -> str:
    text = str(value or "")
    return "" if text.startswith("0001-01-01") else text

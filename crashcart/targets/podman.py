"""Podman (rootful): containers/storage's containers.json for names and IDs, the
container's pidfile for its PID. No podman process is started on the attach path
(`podman inspect` costs 30-40 ms here, the whole attach budget)."""

from __future__ import annotations

import os

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError
from crashcart.linux import procfs
from crashcart.targets.model import Target, field, matches

NAME = "podman"


def graph_root() -> str:
    return os.environ.get("CRASHCART_PODMAN_GRAPHROOT", "/var/lib/containers/storage")


def run_root() -> str:
    return os.environ.get("CRASHCART_PODMAN_RUNROOT", "/run/containers/storage")


def available() -> bool:
    return bool(_stores())


def _stores() -> list[str]:
    try:
        dirs = os.listdir(graph_root())
    except OSError:
        return []
    paths = (os.path.join(graph_root(), d, "containers.json") for d in dirs)
    return [p for p in paths if p.endswith("-containers/containers.json") and os.path.exists(p)]


def _records() -> list[tuple[str, list[str], str, str]]:
    """(id, names, image name, driver) of every container in containers/storage."""
    out = []
    for path in _stores():
        driver = os.path.basename(os.path.dirname(path)).removesuffix("-containers")
        try:
            with open(path, "rb") as f:
                items = fastjson.loads(f.read(64 << 20))
        except (OSError, ValueError) as e:
            raise RuntimeAnswerError(f"{path}: unreadable podman container store ({e})") from None
        if not isinstance(items, list):
            raise RuntimeAnswerError(f"{path}: expected a list of containers")
        for item in items:
            cid = field(item, "id", str, path)
            names = [n for n in item.get("names") or [] if isinstance(n, str)]
            image = ""
            try:
                image = str(fastjson.loads(item.get("metadata") or "{}").get("image-name", ""))
            except (ValueError, AttributeError):
                pass
            out.append((cid, names, image, driver))
    return out


def _live_pid(cid: str, driver: str) -> int | None:
    """The PID from the pidfile, if that process runs in this container's cgroup."""
    path = os.path.join(run_root(), f"{driver}-containers", cid, "userdata", "pidfile")
    try:
        with open(path) as f:
            pid = int(f.read(32).strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        cgroups = procfs.read_text(f"{procfs.PROC}/{pid}/cgroup")
    except OSError:
        return None
    return pid if cid in cgroups else None


def _target(record: tuple[str, list[str], str, str], exact: bool) -> Target | None:
    cid, names, image, driver = record
    pid = _live_pid(cid, driver)
    if pid is None:
        return None
    return Target(NAME, cid, names[0] if names else cid, pid, image, None, exact)


def find(query: str) -> list[Target]:
    out = []
    for record in _records():
        ok, exact = matches(query, record[0], record[1])
        if ok:
            target = _target(record, exact)
            if target:
                out.append(target)
    return out


def list_running() -> list[Target]:
    return [t for r in _records() if (t := _target(r, True))]


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["podman", "exec", "-i"] + (["-t"] if tty else [])
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    return [*cmd, target.name or target.id, *argv]

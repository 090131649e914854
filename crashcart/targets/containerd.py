"""containerd: the v2 shim's task directories, /run/containerd/io.containerd.runtime.v2.task/
NS/ID/init.pid. No `ctr` on the attach path (it hangs 10 s when containerd is down); `ctr`
only fills in image names for `crashcart ps`, and only when the socket answers."""

from __future__ import annotations

import _socket
import os

from crashcart.linux import procfs
from crashcart.targets.model import Target, matches

NAME = "containerd"
SOCKET = "/run/containerd/containerd.sock"


def task_root() -> str:
    return os.environ.get(
        "CRASHCART_CONTAINERD_TASKS", "/run/containerd/io.containerd.runtime.v2.task"
    )


def available() -> bool:
    return os.path.isdir(task_root())


def _namespaces() -> list[str]:
    try:
        return sorted(os.listdir(task_root()))
    except OSError:
        return []


def _live_pid(namespace: str, cid: str) -> int | None:
    """init.pid, trusted only if that process runs in a cgroup naming the container."""
    try:
        with open(os.path.join(task_root(), namespace, cid, "init.pid")) as f:
            pid = int(f.read(32).strip() or 0)
        cgroups = procfs.read_text(f"{procfs.PROC}/{pid}/cgroup")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and cid in cgroups else None


def _tasks(namespace: str | None) -> list[tuple[str, str]]:
    out = []
    for ns in [namespace] if namespace else _namespaces():
        try:
            out += [(ns, cid) for cid in sorted(os.listdir(os.path.join(task_root(), ns)))]
        except OSError:
            continue
    return out


def find(query: str, namespace: str | None = None) -> list[Target]:
    out = []
    for ns, cid in _tasks(namespace):
        ok, exact = matches(query, cid, [])
        if ok and (pid := _live_pid(ns, cid)):
            out.append(Target(NAME, cid, cid, pid, "", ns, exact))
    return out


def list_running() -> list[Target]:
    out = []
    for ns, cid in _tasks(None):
        if pid := _live_pid(ns, cid):
            out.append(Target(NAME, cid, cid, pid, "", ns))
    images = _images({t.namespace for t in out if t.namespace})
    for t in out:
        t.image = images.get((t.namespace or "", t.id), "")
    return out


def _socket_answers() -> bool:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(1)
        s.connect(SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _images(namespaces: set[str]) -> dict[tuple[str, str], str]:
    import subprocess

    out: dict[tuple[str, str], str] = {}
    if not namespaces or not _socket_answers():
        return out
    for ns in namespaces:
        try:
            res = subprocess.run(
                ["ctr", "-n", ns, "containers", "ls"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in res.stdout.splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 2:
                out[(ns, fields[0])] = fields[1]
    return out


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    exec_id = f"crashcart-{os.getpid()}"
    cmd = ["ctr", "-n", target.namespace or "default", "task", "exec", "--exec-id", exec_id]
    if tty:
        cmd.append("--tty")
    # ctr task exec has no --env: the toolbox's env(1) sets the variables.
    envs = [f"{key}={value}" for key, value in env.items()]
    prefix = ["/dev/crashcart/usr/bin/env", *envs] if envs else []
    return [*cmd, target.id, *prefix, *argv]

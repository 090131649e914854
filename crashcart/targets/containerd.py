"""containerd: the v2 shim's task directories, /run/containerd/io.containerd.runtime.v2.task/
NS/ID/init.pid. No `ctr` on the attach path (it hangs 10 s when containerd is down); `ctr`
only fills in image names for `crashcart ps`, and only when the socket answers."""

from __future__ import annotations

import _socket
import os

from crashcart.targets import procs
from crashcart.targets.model import Target, is_hex_id, matches

NAME = "containerd"
SOCKET = "/run/containerd/containerd.sock"
# The runc shim's own runc root: NS/ID/state.json and, until the task starts, exec.fifo.
RUNC_STATE = "/run/containerd/runc"


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


def _task_state(namespace: str, cid: str) -> tuple[int, str]:
    """(pid, state) of a task. init.pid is trusted only if that process runs in a cgroup
    naming the container; a task directory whose process is gone is a stopped task (the
    shim keeps it until `ctr task rm`); runc's exec.fifo marks a task created, not started."""
    try:
        with open(os.path.join(task_root(), namespace, cid, "init.pid")) as f:
            pid = int(f.read(32).strip() or 0)
    except (OSError, ValueError):
        return 0, "stopped"
    cgroups = procs.cgroups(pid)
    if not cgroups or cid not in cgroups:
        return 0, "stopped"
    if os.path.exists(os.path.join(RUNC_STATE, namespace, cid, "exec.fifo")):
        return pid, "created"
    return pid, procs.running_state(pid)


def _tasks(namespace: str | None) -> list[tuple[str, str]]:
    out = []
    for ns in [namespace] if namespace else _namespaces():
        try:
            out += [(ns, cid) for cid in sorted(os.listdir(os.path.join(task_root(), ns)))]
        except OSError:
            continue
    return out


def find(query: str) -> list[Target]:
    """`ID` in any namespace, or `NS/ID`. A task ID that is a name matches exactly; only a
    hex ID (CRI's) is matched by prefix."""
    namespace, _, cid_query = query.rpartition("/")
    if namespace:
        tasks = _tasks(namespace)
    elif is_hex_id(cid_query.ljust(12, "0")):
        tasks = _tasks(None)
    else:
        tasks = [(ns, cid_query) for ns in _namespaces()]
    out = []
    for ns, cid in tasks:
        ok, exact = matches(cid_query, cid, [])
        if ok and os.path.isdir(os.path.join(task_root(), ns, cid)):
            pid, state = _task_state(ns, cid)
            out.append(Target(NAME, cid, cid, pid, namespace=ns, exact=exact, state=state))
    return out


def list_running() -> list[Target]:
    out = []
    for ns, cid in _tasks(None):
        pid, state = _task_state(ns, cid)
        if state in ("running", "paused"):
            out.append(Target(NAME, cid, cid, pid, namespace=ns, state=state))
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

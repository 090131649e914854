"""containerd: a container's spec and snapshot from `ctr containers info` and `ctr snapshots
mounts` (containerd keeps them in its bolt metadata store; ctr runs off the attach path,
only once the socket answers: ctr hangs 10 s when containerd is down), its task's state
from the task's shim over ttrpc (a stopped task's exit status lives only there), and for
CRI containers the status file the CRI plugin keeps for each container."""

from __future__ import annotations

import os
import subprocess
import time

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError, TargetError
from crashcart.postmortem import ttrpc
from crashcart.postmortem.record import Record, sub
from crashcart.targets import containerd
from crashcart.targets.model import matches

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CRI_ROOT = "/var/lib/containerd/io.containerd.grpc.v1.cri/containers"
# Mount types of a spec that are the runtime's own (made fresh for each start), not data.
OWN_TYPES = {"proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2", "shm"}


def available() -> bool:
    return containerd._socket_answers()


def _ctr(*args: str) -> str:
    try:
        proc = subprocess.run(["ctr", *args], capture_output=True, text=True, timeout=15,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeAnswerError(f"ctr {' '.join(args[:3])}: {e}") from None
    if proc.returncode != 0:
        raise RuntimeAnswerError(f"ctr {' '.join(args[:3])}: {proc.stderr.strip()[:200]}")
    return proc.stdout


def find(query: str, namespace: str | None = None) -> Record | None:
    hits: list[tuple[str, str, bool]] = []
    namespaces = [namespace] if namespace else _ctr("namespaces", "ls", "-q").split()
    for ns in namespaces:
        for cid in _ctr("-n", ns, "containers", "ls", "-q").split():
            ok, full = matches(query, cid, [])
            if ok:
                hits.append((ns, cid, full))
    exact = [h for h in hits if h[2]]
    if len(exact) > 1 or (not exact and len(hits) > 1):
        listing = ", ".join(f"{ns}/{cid}" for ns, cid, _ in exact or hits)
        raise TargetError(f"{query!r} matches several containerd containers: {listing}",
                          hint="use containerd://NAMESPACE/ID")  # fmt: skip
    if not hits:
        return None
    ns, cid, _ = (exact or hits)[0]
    return record(ns, cid)


def record(ns: str, cid: str) -> Record:
    info = fastjson.loads(_ctr("-n", ns, "containers", "info", cid))
    if not isinstance(info, dict):
        raise RuntimeAnswerError(f"ctr containers info {cid}: not an object")
    r = Record("containerd", cid, cid)
    r.namespace = ns
    r.image = str(info.get("Image") or "")
    _spec(r, sub(info, "Spec"))
    _snapshot(r, str(info.get("Snapshotter") or "overlayfs"), str(info.get("SnapshotKey") or ""))
    labels = sub(info, "Labels")
    if not _cri_status(r, labels):
        _task(r, ns)
    return r


def _spec(r: Record, spec: dict[str, Any]) -> None:
    process = sub(spec, "process")
    r.cmd = [str(a) for a in process.get("args") or []]
    r.env = [str(e) for e in process.get("env") or []]
    r.workdir = str(process.get("cwd") or "/")
    user = sub(process, "user")
    if user.get("uid"):
        r.user = f"{user.get('uid')}:{user.get('gid', 0)}"
    r.hostname = str(spec.get("hostname") or r.short_id)[:64]
    for m in spec.get("mounts") or []:
        if not isinstance(m, dict) or m.get("type") in OWN_TYPES:
            continue
        source, dest = str(m.get("source") or ""), str(m.get("destination") or "")
        if source.startswith("/") and dest.startswith("/"):
            r.mounts.append((source, dest))


def _snapshot(r: Record, snapshotter: str, key: str) -> None:
    """`mount -t overlay overlay /x -o index=off,workdir=W,upperdir=U,lowerdir=L1:L2`, or a
    bind of one layer (`-o rbind,ro` with the directory as source)."""
    if not key:
        raise TargetError(f"{r.describe()} has no snapshot (created without a rootfs?)")
    line = _ctr("-n", r.namespace or "default", "snapshots", "--snapshotter", snapshotter,
                "mounts", "/x", key).strip()  # fmt: skip
    words = line.split()
    options = words[words.index("-o") + 1].split(",") if "-o" in words else []
    opts = dict(o.partition("=")[::2] for o in options)
    if "lowerdir" in opts or "upperdir" in opts:
        r.upper = opts.get("upperdir", "")
        lowers = [d for d in opts.get("lowerdir", "").split(":") if d]
        r.layers = [d for d in (r.upper, *lowers) if d]
    elif len(words) >= 5 and words[3].startswith("/"):
        r.upper = words[3] if "ro" not in options else ""
        r.layers = [words[3]]
    else:
        raise RuntimeAnswerError(f"ctr snapshots mounts {key}: cannot read {line[:120]!r}")


def _task(r: Record, ns: str) -> None:
    """No task: created and never started, or its task was deleted with its exit status."""
    task_dir = os.path.join(containerd.task_root(), ns, r.id)
    try:
        with open(os.path.join(task_dir, "address")) as f:
            address = f.read(4096).strip().removeprefix("unix://")
    except OSError:
        # containerd cannot tell a container never started from one whose task is gone.
        r.status = "no task"
        r.notes.append("containerd has no task for it: never started, or its task was deleted "
                       "(containerd keeps no exit status then)")  # fmt: skip
        return
    try:
        state = ttrpc.task_state(address, r.id)
    except (OSError, ValueError) as e:
        r.status = "unknown"
        r.notes.append(f"the task's shim did not answer ({e})")
        return
    r.status = str(state["status"])
    pid = state["pid"]
    if r.status in ("running", "paused", "pausing") and isinstance(pid, int):
        r.pid = pid
    elif r.status == "stopped":
        r.exit_code = state["exit_status"] if isinstance(state["exit_status"], int) else None
        stamp = state["exited_at"]
        r.finished_at = _iso(stamp) if isinstance(stamp, int) and stamp > 0 else ""
    stdout = str(state["stdout"])
    if stdout.startswith("file://"):
        r.log_path, r.log_format = stdout.removeprefix("file://").partition("?")[0], "raw"


def _cri_status(r: Record, labels: dict[str, Any]) -> bool:
    """A Kubernetes container: the CRI's own status checkpoint and metadata
    (crashcart.postmortem.cri), its log under /var/log/pods."""
    if labels.get("io.cri-containerd.kind") != "container":
        return False
    from crashcart.postmortem import cri

    status = cri.read_status(r.id)
    found = cri.attempts([r.id])
    if not status or not found:
        return False
    cri.apply_status(r, status)
    cri.apply_metadata(r, found[0])
    if r.status == "running":
        _task(r, r.namespace or "k8s.io")
        r.log_path, r.log_format = found[0].log_path, "k8s-file"
    return True


def iso_ns(ns: int) -> str:
    return _iso(ns // 10**9) if ns > 0 else ""


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds)) if seconds else ""

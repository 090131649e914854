"""Kubernetes containers of containerd's CRI that have no running process: exited,
crash-looping (one containerd container per restart attempt), created.

The CRI deletes a container's task when its process exits, so the task bundles that
crashcart.targets.k8s reads are gone; what stays until the kubelet removes the attempt:
- ``io.containerd.grpc.v1.cri/containers/ID/status``, the CRI's own status checkpoint
  (containerd pkg/store/container/status.go: a ``versionedStatus`` whose embedded Status
  fields are inlined, ``{Version, Pid, CreatedAt, StartedAt, FinishedAt (ns), ExitCode,
  Reason, Message, ...}``; Reason is ``OOMKilled`` after a TaskOOM event);
- the container's CRI metadata in containerd's bbolt store (k8s_layout._cri_metadata):
  pod and container names, the attempt, the sandbox ID, ``LogPath``;
- its snapshot and OCI spec (crashcart.postmortem.containerd reads them with ctr);
- the log, ``/var/log/pods/NS_POD_UID/CONTAINER/ATTEMPT.log`` in the CRI log format.
"""

from __future__ import annotations

import json
import os

from crashcart.errors import TargetError
from crashcart.postmortem import containerd
from crashcart.postmortem.record import Record, sub
from crashcart.targets import k8s_layout as layout

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CONTAINER = layout.DEFAULT_CONTAINER


class Attempt:
    """One CRI container: a (pod, container name, attempt) the kubelet made."""

    def __init__(self, cid: str, meta: dict[str, Any], status: dict[str, Any]) -> None:
        config = sub(meta, "Config")
        labels = sub(config, "labels")
        self.id = cid
        self.namespace = str(labels.get("io.kubernetes.pod.namespace") or "")
        self.pod = str(labels.get("io.kubernetes.pod.name") or "")
        self.uid = str(labels.get("io.kubernetes.pod.uid") or "")
        self.container = str(sub(config, "metadata").get("name") or "")
        attempt = sub(config, "metadata").get("attempt", 0)  # Go omits a zero attempt
        self.attempt = attempt if isinstance(attempt, int) else 0
        self.sandbox_id = str(meta.get("SandboxID") or "")
        self.log_path = str(meta.get("LogPath") or "")
        self.status = status
        self.created = int(status.get("CreatedAt") or 0)

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"

    @property
    def running(self) -> bool:
        return bool(self.status.get("StartedAt")) and not self.status.get("FinishedAt")


def available() -> bool:
    return os.path.isdir(containerd.CRI_ROOT) and containerd.available()


def read_status(cid: str) -> dict[str, Any]:
    try:
        with open(os.path.join(containerd.CRI_ROOT, cid, "status"), "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def attempts(ids: list[str] | None = None) -> list[Attempt]:
    """Every app container the CRI keeps (its status directory) with readable metadata."""
    if ids is None:
        try:
            ids = sorted(n for n in os.listdir(containerd.CRI_ROOT) if layout.is_id(n))
        except OSError:
            return []
    out = []
    for cid in ids:
        meta = layout._cri_metadata(cid, "container")
        if meta:
            out.append(Attempt(cid, meta, read_status(cid)))
    return out


def _newest(found: list[Attempt]) -> Attempt:
    """A crash-looping container: the highest attempt (then the newest), a running one first."""
    return max(found, key=lambda a: (a.running, a.attempt, a.created))


def _pick_container(found: list[Attempt], forced: bool) -> list[Attempt]:
    names = sorted({a.container for a in found})
    if len(names) <= 1:
        return found
    sandbox = layout._cri_metadata(found[0].sandbox_id, "sandbox") or {}
    default = sub(sub(sandbox, "Config"), "annotations").get(DEFAULT_CONTAINER)
    chosen = [a for a in found if a.container == default]
    if chosen or not forced:
        return chosen or found
    first = found[0]
    raise TargetError(
        f"pod {first.namespace}/{first.pod} has {len(names)} containers and none runs: "
        f"{', '.join(names)}",
        hint=f"name one: k8s://{first.namespace}/{first.pod}/{names[0]}",
    )


def choose(query: str) -> tuple[Attempt, list[Attempt]] | None:
    """The attempt `query` (NS/POD[/CONTAINER], POD, or an ID prefix) names, and all the
    attempts of that container."""
    parts = query.split("/")
    if len(parts) > 3 or not all(parts):
        return None
    every = attempts()
    if len(parts) == 1 and layout.is_id(query):
        by_id = [a for a in every if a.id.startswith(query)]
        if len(by_id) > 1 and not any(a.id == query for a in by_id):
            raise TargetError(f"{query!r} matches {len(by_id)} Kubernetes containers",
                              hint="use a longer ID prefix")  # fmt: skip
        if by_id:
            hit = next((a for a in by_id if a.id == query), by_id[0])
            return hit, [a for a in every if (a.uid, a.container) == (hit.uid, hit.container)]
    namespace, pod, container = (None, parts[0], None) if len(parts) == 1 else (
        parts[0], parts[1], parts[2] if len(parts) == 3 else None)  # fmt: skip
    found = [a for a in every if a.pod == pod and namespace in (None, a.namespace)
             and container in (None, a.container)]  # fmt: skip
    if not found:
        return None
    # A pod deleted and made again under its name has a new UID: the newest pod counts.
    uid = max(found, key=lambda a: a.created).uid
    found = [a for a in found if a.uid == uid]
    running = [a for a in found if a.running]
    if container is None and running:
        # A pod with running containers is a live session's (crashcart.targets.k8s chooses
        # among them and names them when it cannot): never a dead container instead.
        if len({a.container for a in running}) > 1:
            return None
        found = running
    found = _pick_container(found, namespace is not None)
    best = _newest(found)
    return best, [a for a in found if a.container == best.container]


def find(query: str, namespace: str | None = None) -> Record | None:
    chosen = choose(query)
    if chosen is None:
        return None
    best, family = chosen
    r = containerd.record(layout.CONTAINERD_NS, best.id)
    r.runtime = "k8s"
    describe_attempts(r, best, family)
    return r


def apply_status(r: Record, status: dict[str, Any]) -> None:
    """The CRI's status checkpoint: times in ns since the epoch; a container that exited
    before the CRI noted its start has FinishedAt a little before StartedAt."""
    finished = int(status.get("FinishedAt") or 0)
    started = int(status.get("StartedAt") or 0)
    r.status = "exited" if finished else ("running" if started else "created")
    r.exit_code = int(status.get("ExitCode") or 0) if finished else None
    r.oom_killed = status.get("Reason") == "OOMKilled"
    r.started_at = containerd.iso_ns(started)
    r.finished_at = containerd.iso_ns(finished)
    r.error = str(status.get("Message") or "")


def apply_metadata(r: Record, meta: Attempt) -> None:
    r.name = meta.path
    r.restart_count = meta.attempt
    r.log_path, r.log_format = meta.log_path, "k8s-file"
    r.pod = {"namespace": meta.namespace, "pod": meta.pod, "uid": meta.uid,
             "container": meta.container, "attempt": meta.attempt,
             "sandbox_id": meta.sandbox_id}  # fmt: skip
    # The container shares the sandbox's uts namespace: its hostname is the pod's.
    for source, dest in r.mounts:
        if dest == "/etc/hostname":
            try:
                with open(source) as f:
                    r.hostname = f.read(256).strip()[:64] or r.hostname
            except OSError:
                pass


def describe_attempts(r: Record, best: Attempt, family: list[Attempt]) -> None:
    others = sorted(a.attempt for a in family if a is not best)
    line = f"attempt {best.attempt} (restart count {best.attempt})"
    if others:
        line += f", the most recent of the attempts kept ({', '.join(map(str, others))} too)"
    r.attempt_line = line

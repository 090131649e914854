"""What a pod object (`kubectl get pod -o json`) says about the container to debug: the node
it runs on, the runtime and ID the kubelet reports, whether it runs. Errors say what is
wrong and what to do, in one line each."""

from __future__ import annotations

import datetime
from typing import Any

from crashcart.errors import TargetError, UsageError
from crashcart.text import printable

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
STATUS_KEYS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")
SPEC_KEYS = ("containers", "initContainers", "ephemeralContainers")


class PodTarget:
    """The container to debug: its pod, node, and the target crashcart takes on the node."""

    __slots__ = ("namespace", "pod", "container", "node", "runtime", "id", "note")

    def __init__(
        self, namespace: str, pod: str, container: str, node: str, runtime: str, ident: str
    ) -> None:
        self.namespace, self.pod, self.container = namespace, pod, container
        self.node, self.runtime, self.id = node, runtime, ident
        self.note = ""  # "defaulted container X out of: X, Y", said on stderr

    def node_target(self) -> str:
        """crashcart's TARGET on the node. containerd: its k8s.io namespace and the ID;
        Docker (cri-dockerd): the Docker ID; CRI-O runs its containers with runc or crun,
        whose state crashcart reads: the bare ID finds them there."""
        if self.runtime == "containerd":
            return f"containerd://k8s.io/{self.id}"
        if self.runtime == "docker":
            return f"docker://{self.id}"
        return self.id


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _names(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [str(c.get("name")) for key in SPEC_KEYS for c in spec.get(key) or []]


def _statuses(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    status = pod.get("status") or {}
    return {str(s.get("name")): s for key in STATUS_KEYS for s in status.get(key) or []}


def analyse(pod: dict[str, Any], container: str | None, now: datetime.datetime) -> PodTarget:
    """The target in `pod`, or a TargetError/UsageError naming what to do."""
    meta = pod.get("metadata") or {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "?")
    where = f"pod {ns}/{name}"
    spec = pod.get("spec") or {}
    if _get(spec, "os", "name") == "windows" or (
        _get(spec, "nodeSelector", "kubernetes.io/os") == "windows"
    ):
        raise TargetError(f"{where} runs on a Windows node; crashcart debugs Linux containers")
    node = spec.get("nodeName")
    phase = _get(pod, "status", "phase") or "Unknown"
    if not node:
        raise TargetError(
            f"{where} is {phase} and not scheduled to a node yet{_unscheduled(pod)}",
            hint=f"kubectl describe pod -n {ns} {name} shows why",
        )
    names = _names(pod)
    chosen, note = _choose(pod, names, container, where)
    status = _statuses(pod).get(chosen)
    if status is None or not isinstance(status.get("state"), dict):
        raise TargetError(f"container {chosen} of {where} has no status yet ({phase})",
                          hint="wait until it starts, then try again")  # fmt: skip
    _running(status, chosen, where, now, ns, name)
    runtime, sep, ident = str(status.get("containerID") or "").partition("://")
    if not sep or not ident:
        raise TargetError(f"container {chosen} of {where} has no container ID yet")
    runtime = {"cri-o": "cri-o", "containerd": "containerd", "docker": "docker"}.get(runtime, "")
    if not runtime:
        raise TargetError(f"container {chosen} of {where} runs on an unknown runtime "
                          f"({printable(str(status.get('containerID')))[:40]})",
                          hint="crashcart knows containerd://, cri-o:// and docker://")  # fmt: skip
    t = PodTarget(ns, name, chosen, str(node), runtime, ident)
    t.note = note
    return t


def _unscheduled(pod: dict[str, Any]) -> str:
    for cond in _get(pod, "status", "conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") != "True":
            why = " ".join(str(cond.get(k) or "") for k in ("reason", "message")).strip()
            return f" ({printable(why)[:200]})" if why else ""
    return ""


def _choose(
    pod: dict[str, Any], names: list[str], container: str | None, where: str
) -> tuple[str, str]:
    """(container, note): -c, else the default-container annotation, else the first one
    (kubectl's own rule, and its note when the pod has several)."""
    if container is not None:
        if container not in names:
            listing = ", ".join(names) or "none"
            raise UsageError(f"{where} has no container {container!r}; its containers: "
                             f"{printable(listing)}")  # fmt: skip
        return container, ""
    annotated = _get(pod, "metadata", "annotations", DEFAULT_CONTAINER_ANNOTATION)
    app = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    if isinstance(annotated, str) and annotated in names:
        return annotated, ""
    if not app:
        raise TargetError(f"{where} has no containers")
    note = f"defaulted container {app[0]} out of: {', '.join(app)}" if len(app) > 1 else ""
    return app[0], note


def _running(
    status: dict[str, Any], name: str, where: str, now: datetime.datetime, ns: str, pod: str
) -> None:
    state = status["state"]
    if "running" in state:
        return
    logs = f"kubectl logs -n {ns} {pod} -c {name}"
    if "terminated" in state:
        raise TargetError(
            f"container {name} of {where} is not running: {_ended(state['terminated'], now)}",
            hint=f"{logs} shows its output",
        )
    waiting = state.get("waiting") or {}
    reason = printable(str(waiting.get("reason") or "waiting"))
    last = _get(status, "lastState", "terminated")
    detail = f"; its last run {_ended(last, now)}" if isinstance(last, dict) else ""
    restarts = status.get("restartCount") or 0
    detail += f", {restarts} restarts" if restarts else ""
    raise TargetError(
        f"container {name} of {where} is not running: {reason}{detail}",
        hint=f"{logs} --previous shows its last output" if detail else "wait until it runs",
    )


def _ended(term: dict[str, Any], now: datetime.datetime) -> str:
    """`exited with code 1 (Error) 3m ago`, or killed by a signal."""
    code, reason = term.get("exitCode"), term.get("reason")
    how = f"exited with code {code}" if isinstance(code, int) else "ended"
    if isinstance(term.get("signal"), int) and term["signal"]:
        how += f" (signal {term['signal']})"
    how += f" ({printable(str(reason))})" if reason else ""
    return how + _ago(term.get("finishedAt"), now)


def _ago(stamp: object, now: datetime.datetime) -> str:
    if not isinstance(stamp, str):
        return ""
    try:
        then = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f" {seconds // size}{unit} ago"
    return f" {seconds}s ago"

"""Kubernetes pods on a node: containerd's CRI or CRI-O, from their own on-disk state.

``k8s://[NAMESPACE/]POD[/CONTAINER]`` (NAMESPACE defaults to ``default``; parse_spec
writes the query as ``NS/POD`` or ``NS/POD/CONTAINER``); a bare ``POD`` (any namespace) or a
container ID or ID prefix. No kubectl, no CRI client, no gRPC: the task bundles name the pod
(k8s_layout.py). The pause sandbox is never a target. Without CONTAINER: the pod's only
running app container; with several, the pod's ``kubectl.kubernetes.io/default-container``
annotation, else an error listing them. Two live instances of one container (a restart
caught mid-way): the higher attempt.
"""

from __future__ import annotations

import os

from crashcart.errors import TargetError
from crashcart.targets import k8s_layout as layout
from crashcart.targets.model import Target

NAME = "k8s"


def available() -> bool:
    return os.path.isdir(layout.containerd_tasks()) or os.path.isdir(layout.crio_run_dir())


def _records(ids: list[str] | None = None, needle: bytes = b"") -> list[layout.Record]:
    return layout.containerd_records(ids, needle) + layout.crio_records(ids, needle)


def _target(rec: layout.Record, exact: bool = True) -> Target:
    return Target(
        NAME, rec.id, rec.path, rec.pid, image=rec.image, namespace=rec.namespace, exact=exact,
        pod=rec.pod, pod_uid=rec.uid, container=rec.container, attempt=rec.attempt, cri=rec.cri,
    )  # fmt: skip


def _live(records: list[layout.Record]) -> list[layout.Record]:
    """One record per (pod UID, container name): the running instance, the newest attempt
    if the kubelet's restart left two alive for a moment."""
    best: dict[tuple[str, str], layout.Record] = {}
    for rec in records:
        key = (rec.uid, rec.container)
        if key not in best or (layout.attempt(rec) or 0) > (layout.attempt(best[key]) or 0):
            best[key] = rec
    return sorted(best.values(), key=lambda r: (r.namespace, r.pod, r.container))


def _choose(pod: list[layout.Record], forced: bool) -> list[layout.Record]:
    """The container to use when none was named (see the module docstring). Unforced (a
    bare name searched across runtimes), an undecided pod returns all its containers so
    that the ambiguity is reported with everything else the name matched."""
    if len(pod) == 1:
        return pod
    default = layout.pod_annotations(pod[0]).get(layout.DEFAULT_CONTAINER)
    chosen = [r for r in pod if r.container == default]
    if chosen or not forced:
        return chosen or pod
    first = pod[0]
    names = ", ".join(r.container for r in pod)
    raise TargetError(
        f"pod {first.namespace}/{first.pod} has {len(pod)} running containers: {names}",
        hint=f"name one: k8s://{first.namespace}/{first.pod}/{pod[0].container} (the pod "
        f"has no {layout.DEFAULT_CONTAINER} annotation naming a running container)",
    )


def _by_pod(records: list[layout.Record]) -> list[list[layout.Record]]:
    pods: dict[str, list[layout.Record]] = {}
    for rec in records:
        pods.setdefault(rec.uid, []).append(rec)
    return list(pods.values())


def _find_pod(namespace: str | None, pod: str, container: str | None) -> list[Target]:
    forced = namespace is not None
    records = [
        r for r in _live(_records(needle=pod.encode()))
        if r.pod == pod and namespace in (None, r.namespace)
    ]  # fmt: skip
    if container is not None:
        chosen = [r for r in records if r.container == container]
        if not chosen and records:
            names = ", ".join(r.container for r in records)
            raise TargetError(
                f"pod {records[0].namespace}/{pod} has no running container {container!r} "
                f"(running: {names})"
            )
        return [_target(r) for r in chosen]
    return [_target(r) for group in _by_pod(records) for r in _choose(group, forced)]


def _find_id(query: str) -> list[Target]:
    ids = sorted(
        {n for root in (layout.containerd_tasks(), layout.crio_containers())
         for n in _listdir(root) if n.startswith(query)}
    )  # fmt: skip
    found = [_target(r, r.id == query) for r in _records(ids)]
    if not found and len(ids) == 1 and (pod := layout.sandbox_pod(ids[0])):
        # The pause (infra) process holds the pod's namespaces and nothing to debug.
        raise TargetError(
            f"{ids[0][:12]} is the sandbox (pause) container of pod {pod}, never a target",
            hint=f"name one of its containers: k8s://{pod}/CONTAINER (`crashcart ps` lists them)",
        )
    return found


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def find(query: str) -> list[Target]:
    parts = query.split("/")
    if len(parts) > 3 or not all(parts):
        return []
    if len(parts) > 1:  # NS/POD[/CONTAINER]: k8s:// or --runtime k8s
        namespace, pod = parts[0], parts[1]
        container = parts[2] if len(parts) == 3 else None
        if not layout.is_dns_label(namespace) or not layout.is_pod_name(pod):
            return []
        if container is not None and not layout.is_dns_label(container):
            return []
        return _find_pod(namespace, pod, container)
    found = _find_pod(None, query, None) if layout.is_pod_name(query) else []
    if layout.is_id(query):
        seen = {t.id for t in found}
        found += [t for t in _find_id(query) if t.id not in seen]
    return found


def list_running() -> list[Target]:
    records = _live(_records())
    for rec in records:
        layout.attempt(rec)
    return [_target(r) for r in records]


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    """What `kubectl exec` ends up running on the node: containerd's task exec in namespace
    k8s.io, or CRI-O's `crictl exec`. Neither takes an environment: the toolbox's env(1)
    sets it."""
    if target.cri == "cri-o":
        cmd = ["crictl", "exec", "-i"] + (["-t"] if tty else [])
    else:
        exec_id = f"crashcart-{os.getpid()}"
        cmd = ["ctr", "-n", layout.CONTAINERD_NS, "task", "exec", "--exec-id", exec_id]
        cmd += ["--tty"] if tty else []
    envs = [f"{key}={value}" for key, value in env.items()]
    prefix = ["/dev/crashcart/usr/bin/env", *envs] if envs else []
    return [*cmd, target.id, *prefix, *argv]

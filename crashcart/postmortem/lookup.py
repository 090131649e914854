"""Which runtime keeps the container (or image) a TARGET names, and its Record."""

from __future__ import annotations

from crashcart.errors import TargetError, UsageError
from crashcart.postmortem.record import Record
from crashcart.targets.model import Spec, parse_spec

# k8s before containerd: a CRI container is also a containerd one, named better by its pod.
RUNTIMES = ("docker", "podman", "k8s", "containerd")


def _module(name: str):  # type: ignore[no-untyped-def]
    if name == "docker":
        from crashcart.postmortem import docker

        return docker
    if name == "podman":
        from crashcart.postmortem import podman

        return podman
    if name == "k8s":
        from crashcart.postmortem import cri

        return cri
    from crashcart.postmortem import containerd

    return containerd


def _runtimes(runtime: str | None) -> tuple[str, ...]:
    if runtime in ("runc", "pid"):
        raise UsageError(f"{runtime} keeps nothing of a container that is not running: post-"
                         "mortem and replay need docker, podman, k8s or containerd")  # fmt: skip
    return (runtime,) if runtime else RUNTIMES


def find_container(query: str, runtime: str | None, namespace: str | None = None) -> Record | None:
    for name in _runtimes(runtime):
        mod = _module(name)
        if not mod.available():
            continue
        found = mod.find(query, namespace) if name in ("containerd", "k8s") else mod.find(query)
        if found is not None:
            return found  # type: ignore[no-any-return]
    return None


def find_dead(spec: Spec) -> Record | None:
    """The container `spec` names if its runtime keeps it without a running process."""
    if spec.runtime in ("runc", "pid"):
        return None
    r = find_container(spec.query, spec.runtime, spec.namespace)
    return r if r is not None and r.pid == 0 else None


def find_replay(text: str, runtime: str | None) -> Record:
    """A container (running or not) or an image: `--replay docker://IMAGE` works too."""
    scheme, sep, query = text.partition("://")
    if not sep:
        scheme, query = runtime or "", text
    elif runtime and runtime != scheme:
        raise UsageError(f"target {text!r} contradicts --runtime {runtime}")
    names = _runtimes(scheme or None)
    namespace = None
    if scheme == "containerd" and "/" in query:
        namespace, _, query = query.partition("/")
    elif scheme == "k8s":
        query = parse_spec(text, None).query  # k8s://POD is k8s://default/POD
    if not query:
        raise UsageError(f"invalid target {text!r}")
    for name in names:
        mod = _module(name)
        if mod.available():
            found = mod.find(query, namespace) if name in ("containerd", "k8s") else mod.find(query)
            if found is not None:
                return found  # type: ignore[no-any-return]
    for name in names:
        mod = _module(name)
        if mod.available() and hasattr(mod, "find_image"):
            found = mod.find_image(query)
            if found is not None:
                return found  # type: ignore[no-any-return]
    raise TargetError(f"no container or image matches {text!r} (searched: {', '.join(names)})",
                      hint="`crashcart ps` lists running containers; `docker ps -a`, "
                      "`podman ps -a` and `ctr containers ls` the others")  # fmt: skip

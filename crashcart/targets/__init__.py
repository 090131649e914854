"""Finding the target: one module per runtime, each cheap when its runtime is absent."""

from __future__ import annotations

from crashcart.errors import AmbiguousTarget, TargetError
from crashcart.linux import procfs
from crashcart.targets import containerd, docker, k8s, podman, runc
from crashcart.targets.model import PRIORITY, RUNTIMES, Spec, Target, parse_spec

MODULES = {
    "docker": docker,
    "k8s": k8s,
    "podman": podman,
    "containerd": containerd,
    "runc": runc,
}

__all__ = ["Spec", "Target", "parse_spec", "resolve", "list_all", "MODULES"]


def dedupe(targets: list[Target]) -> list[Target]:
    """One entry per process: Docker's containers are also containerd tasks, Podman's are
    also runc containers, a pod's are containerd tasks (or, on CRI-O, in Podman's store); the
    higher-level runtime names them."""
    best: dict[int, Target] = {}
    for t in targets:
        if t.pid not in best or PRIORITY[t.runtime] < PRIORITY[best[t.pid].runtime]:
            best[t.pid] = t
    return sorted(best.values(), key=lambda t: (PRIORITY[t.runtime], t.name))


def pid_target(pid: int) -> Target:
    """A host PID; named after its container when its cgroup names one a runtime knows."""
    try:
        comm = procfs.read_text(f"{procfs.PROC}/{pid}/comm").strip()
        cgroups = procfs.parse_cgroup(procfs.read_text(f"{procfs.PROC}/{pid}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        raise TargetError(f"no process with PID {pid}") from None
    leaf = cgroups[-1][2].rstrip("/").rsplit("/", 1)[-1] if cgroups else ""
    ident = leaf.removeprefix("libpod-").removeprefix("docker-").removesuffix(".scope")
    if ident:
        try:
            found, _ = _search(Spec(ident, None, ident))
        except TargetError:
            found = []
        for t in found:
            if t.exact:
                t.pid = pid
                return t
    return Target("pid", str(pid), comm, pid)


def _search(spec: Spec) -> tuple[list[Target], list[str]]:
    runtimes = [spec.runtime] if spec.runtime else list(RUNTIMES)
    found: list[Target] = []
    searched = []
    for name in runtimes:
        module = MODULES[name]
        if not module.available():
            continue
        searched.append(name)
        if name == "containerd":
            found += containerd.find(spec.query, spec.namespace)
        else:
            found += module.find(spec.query)
    return dedupe(found), searched


def resolve(spec: Spec) -> Target:
    if spec.runtime == "pid":
        return pid_target(int(spec.query))
    found, searched = _search(spec)
    exact = [t for t in found if t.exact]
    if len(exact) == 1 or (len(found) == 1):
        return exact[0] if exact else found[0]
    if not found:
        where = ", ".join(searched) if searched else "none available"
        raise TargetError(
            f"no running container matches {spec.text!r} (searched: {where})",
            hint="`crashcart ps` lists the containers crashcart can reach",
        )
    candidates = exact or found
    listing = "; ".join(f"{t.ref} ({t.name})" for t in candidates)
    raise AmbiguousTarget(
        f"{spec.text!r} matches {len(candidates)} containers: {listing}",
        hint="use a longer ID prefix or a runtime prefix such as docker://NAME "
        "(a pod's container: k8s://NAMESPACE/POD/CONTAINER)",
    )


def list_all(quiet: bool = False) -> list[Target]:
    found: list[Target] = []
    for module in MODULES.values():
        if module.available():
            try:
                found += module.list_running()
            except TargetError:
                if not quiet:
                    raise
    return dedupe(found)

"""Finding the target: one module per runtime, each cheap when its runtime is absent.

Every runtime module has the same five names (the RuntimeModule protocol in model.py):
NAME, available(), find(query), list_running(), exec_argv(target, argv, tty, env). A new
runtime is one module and one row in MODULES (and its name in model.RUNTIMES)."""

from __future__ import annotations

from crashcart.errors import AmbiguousTarget, TargetError
from crashcart.linux import procfs
from crashcart.targets import containerd, crun, docker, k8s, lxc, machine, podman, procs, runc
from crashcart.targets.model import (
    PRIORITY,
    RUNTIMES,
    NotRunning,
    Spec,
    Target,
    is_hex_id,
    parse_spec,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from crashcart.targets.model import RuntimeModule

MODULES: dict[str, RuntimeModule] = {
    "docker": docker,
    "k8s": k8s,
    "podman": podman,
    "containerd": containerd,
    "lxc": lxc,
    "machine": machine,
    "crun": crun,
    "runc": runc,
}

__all__ = ["Spec", "Target", "parse_spec", "resolve", "list_all", "MODULES"]


def dedupe(targets: list[Target]) -> list[Target]:
    """One entry per process: Docker's containers are also containerd tasks, Podman's are
    also runc containers; the higher-level runtime names them. A container with no process
    (stopped, created) is one entry per ID."""
    best: dict[object, Target] = {}
    for t in targets:
        key: object = t.pid if t.pid > 0 else ("id", t.id)
        if key not in best or PRIORITY[t.runtime] < PRIORITY[best[key].runtime]:
            best[key] = t
    return sorted(best.values(), key=lambda t: (PRIORITY[t.runtime], t.name))


def _cgroup_id(cgroups: list[tuple[str, str, str]]) -> str:
    """A 64-hex container ID named by the process's cgroup path (any runtime's layout:
    docker-ID.scope, libpod-ID, /kubepods/.../ID, crio-ID ...), or ''."""
    for _, _, path in reversed(cgroups):
        for part in path.replace(".", "/").replace("-", "/").split("/"):
            if len(part) == 64 and is_hex_id(part):
                return part
    return ""


def _pid_hints(pid: int, cgroups: list[tuple[str, str, str]]) -> list[str]:
    """Names or IDs a PID's container may have: its cgroup's leaf (docker-ID.scope,
    libpod-ID, lxc.payload.NAME ...), a 64-hex ID in its cgroup path, and for a container's
    main process the `-c ID` of its conmon parent (rootless Podman on cgroup v1 has no
    cgroup of its own) or the machine name of its systemd-nspawn parent."""
    leaf = cgroups[-1][2].rstrip("/").rsplit("/", 1)[-1] if cgroups else ""
    for prefix in ("libpod-", "docker-", "lxc.payload.", "crio-", "cri-containerd-"):
        leaf = leaf.removeprefix(prefix)
    hints = [leaf.removesuffix(".scope"), _cgroup_id(cgroups)]
    parent = procs.cmdline(procs.parent(pid))
    if parent and parent[0].endswith("conmon") and "-c" in parent[:-1]:
        hints.append(parent[parent.index("-c") + 1])
    elif parent and parent[0].endswith("systemd-nspawn"):
        hints.append(machine.machine_name(parent))
    return [h for h in dict.fromkeys(hints) if h and h != "payload"]


def pid_target(pid: int) -> Target:
    """A host PID; named after its container when a runtime knows the container."""
    try:
        comm = procfs.read_text(f"{procfs.PROC}/{pid}/comm").strip()
        cgroups = procfs.parse_cgroup(procfs.read_text(f"{procfs.PROC}/{pid}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        raise TargetError(f"no process with PID {pid}") from None
    for query in _pid_hints(pid, cgroups):
        try:
            found, _ = _search(Spec(query, None, query))
        except TargetError:
            found = []
        for t in found:
            if t.exact and t.state == "running":
                # The PID given, pinned by its own start time (its cgroup may name nothing).
                t.pid, t.started = pid, procs.start_time(pid)
                return t
    unknown = _cgroup_id(cgroups)
    detail = f"a container crashcart does not know (cgroup names {unknown[:12]})" if unknown else ""
    return Target("pid", str(pid), comm, pid, detail=detail)


def _search(spec: Spec) -> tuple[list[Target], list[str]]:
    runtimes = [spec.runtime] if spec.runtime else list(RUNTIMES)
    query = f"{spec.namespace}/{spec.query}" if spec.namespace else spec.query
    found: list[Target] = []
    searched = []
    for name in runtimes:
        module = MODULES[name]
        if not module.available():
            continue
        searched.append(name)
        found += module.find(query)
    return dedupe(found), searched


def resolve(spec: Spec) -> Target:
    if spec.runtime == "pid":
        try:
            return pid_target(int(spec.query))
        except TargetError:
            if spec.text.startswith("pid://"):
                raise
            # A bare number that is no live PID may be the prefix of a container's hex ID.
            found, _ = _search(Spec(spec.text, None, spec.query))
            if len(found) != 1:
                raise
            return _running(found[0])
    found, searched = _search(spec)
    candidates = [t for t in found if t.exact] or found
    if len(candidates) == 1:
        return _running(candidates[0])
    if not found:
        raise _miss(spec, searched)
    listing = "; ".join(f"{t.ref} ({t.name}, {t.state})" for t in candidates)
    raise AmbiguousTarget(
        f"{spec.text!r} matches {len(candidates)} containers: {listing}",
        hint="use a longer ID prefix or a runtime prefix such as docker://NAME",
    )


def _running(t: Target) -> Target:
    # A paused container still has its processes: a session attaches without joining its
    # freezer (attach/plan.py says so), and -m/-u need no process to run.
    if t.state in ("running", "paused"):
        return t
    what = {
        "stopped": "is stopped",
        "created": "was created but never started",
        "restarting": "is restarting",
    }.get(t.state, f"is {t.state}")
    detail = f" ({t.detail})" if t.detail else ""
    hint = {
        "restarting": "wait until it runs, then try again",
    }.get(t.state, "start it first; crashcart attaches only to a running container")
    raise NotRunning(f"{t.runtime} container {t.name or t.id} {what}{detail}", hint=hint)


def _miss(spec: Spec, searched: list[str]) -> TargetError:
    where = ", ".join(searched) if searched else "no runtime is available here"
    near = near_matches(spec.query, spec.runtime)
    hint = "`crashcart ps` lists the containers crashcart can reach"
    if near:
        hint = "did you mean: " + ", ".join(f"{t.name} ({t.runtime})" for t in near)
    prefix_rule = "" if spec.runtime else " (a prefix matches only a hex ID)"
    return TargetError(
        f"no container matches {spec.text!r}{prefix_rule}; searched: {where}", hint=hint
    )


def near_matches(query: str, runtime: str | None, limit: int = 6) -> list[Target]:
    """Running containers whose name is close to `query`: the ones it is a part of, else
    difflib's close matches. Only on the error path: it lists every runtime."""
    import difflib

    running = [t for t in list_all(quiet=True) if not runtime or t.runtime == runtime]
    by_name = {t.name: t for t in running}
    near = [n for n in by_name if query in n]
    near = near or difflib.get_close_matches(query, list(by_name), n=limit)
    return [by_name[n] for n in near[:limit]]


def list_all(quiet: bool = False) -> list[Target]:
    found: list[Target] = []
    for module in MODULES.values():
        if module.available():
            try:
                found += module.list_running()
            except TargetError:
                if not quiet:
                    raise
    # A pod's infra container (podman names it; its runc twin is the same PID) is no target.
    return [t for t in dedupe(found) if t.state != "infra"]

"""Finding the target: one module per runtime, each cheap when its runtime is absent.

Every runtime module has the same five names (the RuntimeModule protocol in model.py):
NAME, available(), find(query), list_running(), exec_argv(target, argv, tty, env). A new
runtime is one module and one row in MODULES (and its name in model.RUNTIMES). pid://N is
no runtime: pid.py names a host process after the container a runtime knows it by."""

from __future__ import annotations

from crashcart.errors import AmbiguousTarget, TargetError
from crashcart.targets import containerd, crun, docker, k8s, lxc, machine, pid, podman, runc
from crashcart.targets.model import (
    PRIORITY,
    RUNTIMES,
    NoSuchProcess,
    NotRunning,
    Spec,
    Target,
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
            return pid.target(int(spec.query), lambda s: _search(s)[0])
        except NoSuchProcess:
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

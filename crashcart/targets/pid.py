"""pid://N: a host process, not a runtime's container. It is named after its container when
a runtime knows the container (found from hints in its cgroup path and its parent), and
pinned by its own start time: the PID given is the process attached to."""

from __future__ import annotations

from crashcart.errors import TargetError
from crashcart.linux import procfs
from crashcart.targets import machine, procs
from crashcart.targets.model import NoSuchProcess, Spec, Target, is_hex_id

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

NAME = "pid"


def cgroup_id(cgroups: list[tuple[str, str, str]]) -> str:
    """A 64-hex container ID named by the process's cgroup path (any runtime's layout:
    docker-ID.scope, libpod-ID, /kubepods/.../ID, crio-ID ...), or ''."""
    for _, _, path in reversed(cgroups):
        for part in path.replace(".", "/").replace("-", "/").split("/"):
            if len(part) == 64 and is_hex_id(part):
                return part
    return ""


def _hints(pid: int, cgroups: list[tuple[str, str, str]]) -> list[str]:
    """Names or IDs a PID's container may have: its cgroup's leaf (docker-ID.scope,
    libpod-ID, lxc.payload.NAME ...), a 64-hex ID in its cgroup path, and for a container's
    main process the `-c ID` of its conmon parent (rootless Podman on cgroup v1 has no
    cgroup of its own) or the machine name of its systemd-nspawn parent."""
    leaf = cgroups[-1][2].rstrip("/").rsplit("/", 1)[-1] if cgroups else ""
    for prefix in ("libpod-", "docker-", "lxc.payload.", "crio-", "cri-containerd-"):
        leaf = leaf.removeprefix(prefix)
    hints = [leaf.removesuffix(".scope"), cgroup_id(cgroups)]
    parent = procs.cmdline(procs.parent(pid))
    if parent and parent[0].endswith("conmon") and "-c" in parent[:-1]:
        hints.append(parent[parent.index("-c") + 1])
    elif parent and parent[0].endswith("systemd-nspawn"):
        hints.append(machine.machine_name(parent))
    return [h for h in dict.fromkeys(hints) if h and h != "payload"]


def target(pid: int, search: Callable[[Spec], list[Target]]) -> Target:
    """A host PID; named after its container when a runtime knows the container (`search`
    is the lookup of every runtime, targets._search)."""
    try:
        comm = procfs.read_text(f"{procfs.PROC}/{pid}/comm").strip()
        cgroups = procfs.parse_cgroup(procfs.read_text(f"{procfs.PROC}/{pid}/cgroup"))
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(f"no process with PID {pid}") from None
    for query in _hints(pid, cgroups):
        try:
            found = search(Spec(query, None, query))
        except TargetError:
            found = []
        for t in found:
            if t.exact and t.state == "running":
                # The PID given, pinned by its own start time (its cgroup may name nothing).
                t.pid, t.started = pid, procs.start_time(pid)
                return t
    unknown = cgroup_id(cgroups)
    detail = f"a container crashcart does not know (cgroup names {unknown[:12]})" if unknown else ""
    return Target(NAME, str(pid), comm, pid, detail=detail)

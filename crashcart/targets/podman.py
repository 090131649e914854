"""Podman, rootful and rootless: containers/storage's containers.json for names and IDs, the
container's pidfile for its PID. No podman process is started on the attach path
(`podman inspect` costs 30-40 ms here, the whole attach budget); only a container that
exists but has no process is asked about (`podman inspect`, for its state and exit code).

Stores: root's (/var/lib/containers/storage, run root /run/containers/storage), and each
user's who has a run root /run/user/UID/containers (rootless Podman: graph root
~/.local/share/containers/storage). Pods: a pod's containers share its cgroup parent
(`libpod_parent/POD-ID/` with cgroupfs, `machine-libpod_pod_POD-ID.slice` with systemd), the
infra container is named `POD-ID[:12]-infra` and is never a target; the pod's name is read
from libpod's bolt database (bolt_state.db), where a pod's config never changes."""

from __future__ import annotations

import os

from crashcart import fastjson
from crashcart.errors import AmbiguousTarget, RuntimeAnswerError, TargetError
from crashcart.targets import procs
from crashcart.targets.model import Target, field, is_hex_id, matches

NAME = "podman"
USER_RUN = "/run/user"


class Store:
    """One containers/storage: graph root, run root, and whose it is (uid, 0 for root)."""

    __slots__ = ("graph", "run", "uid")

    def __init__(self, graph: str, run: str, uid: int) -> None:
        self.graph, self.run, self.uid = graph, run, uid

    def containers_json(self) -> list[tuple[str, str]]:
        """(path, driver) of each driver's containers.json in this store."""
        try:
            dirs = os.listdir(self.graph)
        except OSError:
            return []
        out = []
        for d in dirs:
            path = os.path.join(self.graph, d, "containers.json")
            if d.endswith("-containers") and os.path.exists(path):
                out.append((path, d.removesuffix("-containers")))
        return out


def graph_root() -> str:
    return os.environ.get("CRASHCART_PODMAN_GRAPHROOT", "/var/lib/containers/storage")


def run_root() -> str:
    return os.environ.get("CRASHCART_PODMAN_RUNROOT", "/run/containers/storage")


def _stores() -> list[Store]:
    out = [Store(graph_root(), run_root(), 0)]
    if "CRASHCART_PODMAN_GRAPHROOT" in os.environ:
        return out  # tests point crashcart at one store
    try:
        uids = [int(u) for u in os.listdir(USER_RUN) if u.isdigit() and u != "0"]
    except OSError:
        return out
    for uid in uids:
        run = f"{USER_RUN}/{uid}/containers"
        if not os.path.isdir(run):
            continue
        import pwd  # a builtin module: no import cost to speak of

        try:
            home = pwd.getpwuid(uid).pw_dir
        except KeyError:
            continue
        out.append(Store(f"{home}/.local/share/containers/storage", run, uid))
    return out


def available() -> bool:
    return any(s.containers_json() for s in _stores())


class Record:
    __slots__ = ("id", "names", "image", "driver", "store")

    def __init__(self, cid: str, names: list[str], image: str, driver: str, store: Store):
        self.id, self.names, self.image, self.driver, self.store = cid, names, image, driver, store

    @property
    def name(self) -> str:
        return self.names[0] if self.names else self.id

    def userdata(self, *, run: bool) -> str:
        root = self.store.run if run else self.store.graph
        return os.path.join(root, f"{self.driver}-containers", self.id, "userdata")


def _records() -> list[Record]:
    """Every container in every store."""
    out = []
    for store in _stores():
        for path, driver in store.containers_json():
            out += _read_store(path, driver, store)
    return out


def _read_store(path: str, driver: str, store: Store) -> list[Record]:
    try:
        with open(path, "rb") as f:
            items = fastjson.loads(f.read(64 << 20))
    except (OSError, ValueError) as e:
        raise RuntimeAnswerError(f"{path}: unreadable podman container store ({e})") from None
    if not isinstance(items, list):
        raise RuntimeAnswerError(f"{path}: expected a list of containers")
    out = []
    for item in items:
        cid = field(item, "id", str, path)
        names = [n for n in item.get("names") or [] if isinstance(n, str)]
        image = ""
        try:
            image = str(fastjson.loads(item.get("metadata") or "{}").get("image-name", ""))
        except (ValueError, AttributeError):
            pass
        out.append(Record(cid, names, image, driver, store))
    return out


def _live_pid(r: Record) -> tuple[int, int | None]:
    """(pid, start time) from the pidfile, if that process is this container's: its cgroup
    names the ID (rootful), or its parent is the conmon started for this ID (rootless
    Podman on cgroup v1 gets no cgroup of its own). (0, None) when it has no process."""
    try:
        with open(os.path.join(r.userdata(run=True), "pidfile")) as f:
            pid = int(f.read(32).strip() or 0)
    except (OSError, ValueError):
        return 0, None
    cgroups = procs.cgroups(pid)
    if cgroups is None:
        return 0, None
    if r.id in cgroups:
        return pid, None
    conmon = procs.cmdline(procs.parent(pid))
    if conmon and conmon[0].endswith("conmon") and "-c" in conmon and r.id in conmon:
        return pid, procs.start_time(pid)
    return 0, None


def _config(r: Record) -> dict[str, object]:
    """The container's OCI config.json (annotations, cgroupsPath), {} when unreadable."""
    try:
        with open(os.path.join(r.userdata(run=False), "config.json"), "rb") as f:
            config = fastjson.loads(f.read(4 << 20))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def pod_id(r: Record) -> str:
    """The ID of the pod `r` belongs to (from its cgroup parent), or ''."""
    linux = _config(r).get("linux")
    path = str(linux.get("cgroupsPath", "")) if isinstance(linux, dict) else ""
    for marker in ("libpod_parent/", "libpod_pod_"):
        _, sep, rest = path.partition(marker)
        if sep and is_hex_id(rest[:64]):
            return rest[:64]
    return ""


def is_infra(r: Record, pod: str) -> bool:
    return bool(pod) and r.name == f"{pod[:12]}-infra"


def _target(r: Record, exact: bool, pod: str = "") -> Target:
    pid, started = _live_pid(r)
    if pid:
        state, detail = procs.running_state(pid), ""
    else:
        state, detail = _stopped_state(r)
    return Target(NAME, r.id, r.name, pid, image=r.image, namespace=pod or None, exact=exact,
                  state=state, detail=detail, started=started, owner=r.store.uid)  # fmt: skip


def as_user(uid: int, argv: list[str]) -> list[str]:
    """argv run as `uid` with its runtime dir: rootless Podman finds that user's store."""
    if not uid:
        return argv
    import pwd

    user = pwd.getpwuid(uid)
    return ["setpriv", f"--reuid={uid}", f"--regid={user.pw_gid}", "--init-groups", "env",
            f"HOME={user.pw_dir}", f"USER={user.pw_name}", f"XDG_RUNTIME_DIR={USER_RUN}/{uid}",
            *argv]  # fmt: skip


def _stopped_state(r: Record) -> tuple[str, str]:
    """State and exit code of a container with no process: `podman inspect`, on this
    error path only (its state lives in libpod's database, rewritten at every change)."""
    import subprocess

    from crashcart.targets.docker import docker_state

    argv = as_user(r.store.uid, ["podman", "container", "inspect", "--format", "json", r.id])
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=15, cwd="/")
        info = fastjson.loads(res.stdout)[0]["State"]
        return docker_state(info)
    except (OSError, subprocess.TimeoutExpired, ValueError, LookupError, TypeError):
        return "stopped", ""


def find(query: str) -> list[Target]:
    """NAME, ID or ID prefix; POD/CONTAINER; a bare pod name lists the pod's containers."""
    pod_query, _, query = query.rpartition("/")
    out = []
    records = _records()
    for r in records:
        ok, exact = matches(query, r.id, r.names)
        if not ok:
            continue
        pod = pod_id(r)
        if is_infra(r, pod):
            # The pod's placeholder (it holds the namespaces): nothing to debug in it.
            raise TargetError(
                f"podman container {r.name} is the infra container of pod "
                f"{pod_names(r.store).get(pod, pod[:12])}, not a target",
                hint="name one of the pod's containers (podman://POD/CONTAINER)",
            )
        pod_name = pod_names(r.store).get(pod, pod[:12]) if pod else ""
        if pod_query and pod_query not in (pod_name, pod) and not pod.startswith(pod_query):
            continue
        out.append(_target(r, exact, pod_name))
    if not out and not pod_query:
        _pod_members(query, records)
    return out


def _pod_members(query: str, records: list[Record]) -> None:
    """A bare pod name or ID is not a container: say which containers the pod has."""
    for store in {id(r.store): r.store for r in records}.values():
        for pid_, pname in pod_names(store).items():
            if query not in (pname, pid_) and not (is_hex_id(pid_) and pid_.startswith(query)):
                continue
            members = [r for r in records if r.store is store and pod_id(r) == pid_]
            names = [f"podman://{pname}/{r.name}" for r in members if not is_infra(r, pid_)]
            raise AmbiguousTarget(
                f"{query!r} is a podman pod; name one of its containers: "
                + (", ".join(names) or "(it has none but its infra container)"),
                hint="use podman://POD/CONTAINER or the container's name",
            )


_pod_cache: dict[str, tuple[float, dict[str, str]]] = {}


def pod_names(store: Store) -> dict[str, str]:
    """pod ID -> name (cached while the database file is unchanged)."""
    path = os.path.join(store.graph, "libpod", "bolt_state.db")
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return {}
    cached = _pod_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    names = _scan_pod_names(path)
    _pod_cache[path] = (mtime, names)
    return names


def _scan_pod_names(path: str) -> dict[str, str]:
    """pod ID -> name, from libpod's bolt database. A pod's config is written once, at
    `podman pod create`, as a JSON value {"id": ..., "name": ..., ..."hasInfra": ...}; the
    database is scanned for those values rather than walked as a B+tree (old pages hold
    only identical copies of a config that never changes)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(256 << 20).decode("latin-1")
    except OSError:
        return {}
    out: dict[str, str] = {}
    at = raw.find('config{"id":"')
    while at >= 0:
        start = at + len("config")
        try:
            value, _ = fastjson._scan(raw, start)
        except (StopIteration, ValueError):
            value = None
        if isinstance(value, dict) and "hasInfra" in value and isinstance(value.get("name"), str):
            out[str(value.get("id"))] = value["name"]
        at = raw.find('config{"id":"', start)
    return out


def list_running() -> list[Target]:
    out = []
    for r in _records():
        pid, started = _live_pid(r)
        if not pid:
            continue
        pod = pod_id(r)
        pod_name = pod_names(r.store).get(pod, pod[:12]) if pod else ""
        # An infra container is listed as such, so that its runc twin is not listed either.
        state = "infra" if is_infra(r, pod) else procs.running_state(pid)
        out.append(Target(NAME, r.id, r.name, pid, image=r.image, namespace=pod_name or None,
                          state=state, started=started, owner=r.store.uid))  # fmt: skip
    return out


def exec_argv(target: Target, argv: list[str], tty: bool, env: dict[str, str]) -> list[str]:
    cmd = ["podman", "exec", "-i"] + (["-t"] if tty else [])
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    return as_user(target.owner, [*cmd, target.id, *argv])

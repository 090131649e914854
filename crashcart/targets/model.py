"""What a target is, how a user names one, and validation of runtime answers."""

from __future__ import annotations

from crashcart.errors import RuntimeAnswerError, TargetError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class RuntimeModule(Protocol):
        """The shape of every runtime module (docker.py, lxc.py ...): a module satisfies it
        by its five module-level names; mypy checks each against MODULES' annotation. (A
        class only for the type checker: `typing` costs the attach path ~10 ms.)"""

        NAME: str

        def available(self) -> bool:
            """Cheap (a stat): is the runtime's state here at all?"""

        def find(self, query: str) -> list[Target]:
            """Containers whose name or ID is `query` (exact) or, for a hex ID, starts with
            it; stopped ones too, with their state. May parse `NS/ID` itself."""

        def list_running(self) -> list[Target]:
            """Every container with a live process (running or paused)."""

        def exec_argv(
            self, target: Target, argv: list[str], tty: bool, env: dict[str, str]
        ) -> list[str]:
            """The runtime's own exec of argv in target (for sideload -e)."""


class NotRunning(TargetError):
    """The container exists but has no process to attach to (stopped, created, paused)."""


class NoSuchProcess(TargetError):
    """No process has the PID given."""


RUNTIMES: tuple[str, ...] = (
    "docker", "k8s", "podman", "containerd", "lxc", "machine", "crun", "runc",
)  # fmt: skip
# When one process is known to several runtimes (Docker's containers are containerd tasks
# too), the first in this order names it.
PRIORITY: dict[str, int] = {name: i for i, name in enumerate((*RUNTIMES, "pid"))}


class Target:
    """A running container (or process) crashcart can attach to."""

    __slots__ = ("runtime", "id", "name", "pid", "image", "namespace", "exact", "state",
                 "detail", "started", "owner", "pod", "pod_uid", "container", "attempt",
                 "cri")  # fmt: skip

    def __init__(
        self,
        runtime: str,  # one of RUNTIMES, or pid
        id: str,
        name: str,
        pid: int,  # host PID of the container's main process (0 when it has none)
        *,
        image: str = "",
        namespace: str | None = None,  # containerd namespace, or podman pod
        exact: bool = True,  # matched by full name/ID rather than by an ID prefix
        state: str = "running",  # running, paused, stopped, created, restarting
        detail: str = "",  # for a container that is not running: "exit code 0, 5 s ago"
        started: int | None = None,  # starttime of `pid` (/proc/PID/stat field 22), if known
        owner: int = 0,  # the uid whose rootless runtime runs it (0: root's)
        pod: str | None = None,  # k8s: the pod's name, its UID, the container's name in it,
        pod_uid: str | None = None,  # its restart attempt (None: unknown) and the CRI
        container: str | None = None,  # runtime (containerd or cri-o)
        attempt: int | None = None,
        cri: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.id = id
        self.name = name
        self.pid = pid
        self.image = image
        self.namespace = namespace
        self.exact = exact
        self.state = state
        self.detail = detail
        self.started = started
        self.owner = owner
        self.pod = pod
        self.pod_uid = pod_uid
        self.container = container
        self.attempt = attempt
        self.cri = cri

    def __repr__(self) -> str:
        return f"Target({self.ref}, name={self.name!r}, pid={self.pid}, exact={self.exact})"

    @property
    def short_id(self) -> str:
        return self.id[:12] if len(self.id) == 64 else self.id

    @property
    def ref(self) -> str:
        """The unambiguous spelling of this target: runtime://[ns/]id."""
        if self.runtime == "pid":
            return f"pid://{self.pid}"
        if self.pod is not None:
            return f"k8s://{self.namespace}/{self.pod}/{self.container}"
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.runtime}://{ns}{self.id}"

    def describe(self) -> str:
        if self.runtime == "pid" and self.detail:
            return f"pid {self.pid} ({self.name}, in {self.detail})"
        label = self.name if self.name and self.name != self.id else self.short_id
        return f"{self.runtime} {label} ({self.short_id}, pid {self.pid})"


class Spec:
    """A parsed TARGET argument."""

    __slots__ = ("text", "runtime", "query", "namespace")

    def __init__(
        self,
        text: str,
        runtime: str | None,  # forced runtime, or None to search them all
        query: str,  # name, ID or ID prefix; for runtime "pid" the PID
        namespace: str | None = None,
    ) -> None:
        self.text = text
        self.runtime = runtime
        self.query = query
        self.namespace = namespace

    def _key(self) -> tuple[str, str | None, str, str | None]:
        return (self.text, self.runtime, self.query, self.namespace)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spec) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Spec{self._key()!r}"


PID_MAX_LIMIT = 4194304  # the kernel's PID_MAX_LIMIT: no pid_max can exceed it


def parse_spec(text: str, runtime: str | None = None) -> Spec:
    """TARGET: PID | NAME | ID | ID-PREFIX | NS/ID | RUNTIME://[NS/]QUERY | pid://PID.
    --runtime forces the runtime like a prefix does. NS/ is containerd's namespace, or
    podman's pod (podman://POD/CONTAINER)."""
    if not text or any(c in text for c in "\0\n"):
        raise UsageError(f"invalid target {text!r}")
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme not in (*RUNTIMES, "pid"):
            raise UsageError(
                f"unknown runtime {scheme!r} in target {text!r}",
                hint=f"use one of: {', '.join((*RUNTIMES, 'pid'))}",
            )
        if runtime and runtime != scheme:
            raise UsageError(f"target {text!r} contradicts --runtime {runtime}")
        runtime, query = scheme, rest
    else:
        query = text
    if runtime is not None and runtime not in (*RUNTIMES, "pid"):
        raise UsageError(f"unknown runtime {runtime!r}", hint=f"use one of: {', '.join(RUNTIMES)}")
    if runtime == "k8s":
        return _k8s_spec(text, query)
    namespace = None
    if "/" in query:
        if runtime not in (None, "containerd", "podman"):
            raise UsageError(
                f"{text!r}: only containerd (NAMESPACE/ID) and podman (POD/CONTAINER) targets "
                "take a two-part form"
            )
        namespace, _, query = query.partition("/")
        runtime = runtime or "containerd"
        if not namespace or not query or "/" in query:
            form = "POD/CONTAINER" if runtime == "podman" else "NAMESPACE/ID"
            raise UsageError(f"invalid {runtime} target {text!r}", hint=f"use {form}")
    if not query:
        raise UsageError(f"invalid target {text!r}: nothing after the runtime")
    digits = query.isdigit() and query.isascii()
    if runtime == "pid" or (runtime is None and digits and int(query) <= PID_MAX_LIMIT):
        # A bare number is a PID unless no PID can be that large: then an ID prefix
        # (Docker's IDs are hex, and a prefix of one can be all digits).
        if not digits or int(query) <= 0:
            raise UsageError(f"invalid PID {query!r}")
        return Spec(text, "pid", str(int(query)))
    return Spec(text, runtime, query, namespace)


_HEX = frozenset("0123456789abcdef")


def is_hex_id(ident: str) -> bool:
    """A runtime-generated ID (Docker, Podman, CRI: 64 hex digits), which a prefix may name."""
    return len(ident) >= 12 and _HEX.issuperset(ident)


def _k8s_spec(text: str, query: str) -> Spec:
    """k8s://[NS/]POD[/CONTAINER]: the query is NS/POD[/CONTAINER], NS `default` if absent
    (a two-part form is NAMESPACE/POD, as kubectl's NAMESPACE defaults and POD does not)."""
    parts = query.split("/")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise UsageError(
            f"invalid Kubernetes target {text!r}", hint="use k8s://[NAMESPACE/]POD[/CONTAINER]"
        )
    if len(parts) == 1:
        parts.insert(0, "default")
    return Spec(text, "k8s", "/".join(parts))


def matches(query: str, ident: str, names: list[str]) -> tuple[bool, bool]:
    """(matched, exact): exact on a name or the full ID, inexact on a prefix of a hex ID.
    An ID that is a name (containerd, runc, LXC, nspawn let the user pick it) is matched
    only exactly: `cc-h-` must never pick the task `cc-h-ctrd` beside a container
    `cc-h-thin`, as `docker` would not either."""
    if query == ident or query in names:
        return True, True
    return is_hex_id(ident) and ident.startswith(query), False


def field(obj: Any, key: str, kind: type, where: str) -> Any:
    """obj[key] checked to be of `kind`; anything else is a malformed runtime answer."""
    if not isinstance(obj, dict):
        raise RuntimeAnswerError(f"{where}: expected an object, got {type(obj).__name__}")
    value = obj.get(key)
    if kind is int and isinstance(value, bool):
        value = None
    if not isinstance(value, kind):
        raise RuntimeAnswerError(
            f"{where}: field {key!r} is missing or not a {kind.__name__} ({value!r:.60})"
        )
    return value

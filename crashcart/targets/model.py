"""What a target is, how a user names one, and validation of runtime answers."""

from __future__ import annotations

from crashcart.errors import RuntimeAnswerError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

RUNTIMES: tuple[str, ...] = ("docker", "k8s", "podman", "containerd", "runc")
# When one process is known to several runtimes (Docker's containers are containerd tasks
# too; a pod's are containerd's or, on CRI-O, in Podman's containers/storage), the first in
# this order names it.
PRIORITY: dict[str, int] = {name: i for i, name in enumerate((*RUNTIMES, "pid"))}


class Target:
    """A running container (or process) crashcart can attach to."""

    __slots__ = ("runtime", "id", "name", "pid", "image", "namespace", "exact",
                 "pod", "pod_uid", "container", "attempt", "cri")  # fmt: skip

    def __init__(
        self,
        runtime: str,  # docker, podman, containerd, runc or pid
        id: str,
        name: str,
        pid: int,  # host PID of the container's main process
        image: str = "",
        namespace: str | None = None,  # containerd namespace; a pod's Kubernetes namespace
        exact: bool = True,  # matched by full name/ID rather than by an ID prefix
        *,
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


def check_identity(target: Target, cgroup_paths: list[str]) -> None:
    """After pinning: the pinned process must still be the container's. A runtime names the
    PID at one moment and crashcart pins it the next; if the container exited in between and
    the PID was reused, the new process is not in the container's cgroup, whose path names
    the container's ID under every runtime's default cgroup layout."""
    if target.runtime == "pid" or any(target.id in path for path in cgroup_paths):
        return
    from crashcart.errors import TargetGone

    raise TargetGone(
        f"PID {target.pid} no longer belongs to {target.describe()} (it exited, and the PID "
        "was reused?)",
        hint=f"if its cgroup path just does not name the container, use pid://{target.pid}",
    )


def parse_spec(text: str, runtime: str | None = None) -> Spec:
    """TARGET: PID | NAME | ID | ID-PREFIX | NS/ID | docker:// podman:// containerd://[NS/]
    runc:// pid:// k8s://[NS/]POD[/CONTAINER] prefixed forms. --runtime forces the runtime
    like a prefix does."""
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
        if runtime not in (None, "containerd"):
            raise UsageError(
                f"{text!r}: only containerd targets take a NAMESPACE/ID form",
                hint="a Kubernetes pod is k8s://NAMESPACE/POD[/CONTAINER]",
            )
        namespace, _, query = query.partition("/")
        runtime = "containerd"
        if not namespace or not query or "/" in query:
            raise UsageError(
                f"invalid containerd target {text!r}",
                hint="use NAMESPACE/ID, or k8s://NAMESPACE/POD/CONTAINER for a pod",
            )
    if not query:
        raise UsageError(f"invalid target {text!r}: nothing after the runtime")
    if runtime == "pid" or (runtime is None and query.isdigit() and query.isascii()):
        if not (query.isdigit() and query.isascii()) or int(query) <= 0:
            raise UsageError(f"invalid PID {query!r}")
        return Spec(text, "pid", str(int(query)))
    return Spec(text, runtime, query, namespace)


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
    """(matched, exact): exact on a name or the full ID, inexact on an ID prefix."""
    if query == ident or query in names:
        return True, True
    return ident.startswith(query), False


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

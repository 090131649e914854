"""Where the two CRI runtimes keep a node's pods on disk, and how to read it.

containerd's CRI (namespace k8s.io): one task bundle per running container,
``/run/containerd/io.containerd.runtime.v2.task/k8s.io/ID/``, with the shim's ``init.pid``
and the OCI ``config.json``, whose annotations name the pod and the container
(``io.kubernetes.cri.sandbox-name``, ``-namespace``, ``-uid``, ``-id``, ``container-name``,
``container-type``). The pod's own annotations and a container's restart attempt are not in
the bundle: the CRI keeps them in containerd's metadata store (a bbolt file), as JSON in the
container's ``io.cri-containerd.{sandbox,container}.metadata`` extension.

CRI-O: containers/storage's run directory,
``/run/containers/storage/overlay-containers/ID/userdata/`` holds ``config.json`` (CRI-O's
server/container_create_linux.go saves the spec to ``containerInfo.RunDir``) and ``pidfile``
(conmon ``-p``, internal/oci/runtime_oci.go); the annotations are CRI-O's
(pkg/annotations/internal.go: ``io.kubernetes.cri-o.ContainerType``, ``...SandboxID``,
``...Metadata``, ``...Annotations``, ``...ImageName``) beside the kubelet's labels
(``io.kubernetes.pod.name``, ``...pod.namespace``, ``...pod.uid``, ``...container.name``).
"""

from __future__ import annotations

import os

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError
from crashcart.linux import procfs
from crashcart.targets.model import field

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CONTAINERD_NS = "k8s.io"  # containerd's CRI keeps every pod container in this namespace
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
MAX_SPEC = 4 << 20

CRI_KEYS = {  # containerd's CRI: record field -> annotation
    "pod": "io.kubernetes.cri.sandbox-name",
    "namespace": "io.kubernetes.cri.sandbox-namespace",
    "uid": "io.kubernetes.cri.sandbox-uid",
    "sandbox_id": "io.kubernetes.cri.sandbox-id",
    "container": "io.kubernetes.cri.container-name",
}
CRIO_KEYS = {
    "pod": "io.kubernetes.pod.name",
    "namespace": "io.kubernetes.pod.namespace",
    "uid": "io.kubernetes.pod.uid",
    "sandbox_id": "io.kubernetes.cri-o.SandboxID",
    "container": "io.kubernetes.container.name",
}


def containerd_tasks() -> str:
    root = os.environ.get(
        "CRASHCART_CONTAINERD_TASKS", "/run/containerd/io.containerd.runtime.v2.task"
    )
    return os.path.join(root, CONTAINERD_NS)


def containerd_meta_db() -> str:
    root = os.environ.get("CRASHCART_CONTAINERD_ROOT", "/var/lib/containerd")
    return os.path.join(root, "io.containerd.metadata.v1.bolt", "meta.db")


def crio_run_dir() -> str:
    """CRI-O's own run directory (its socket and version file): present on a CRI-O node."""
    return os.environ.get("CRASHCART_CRIO_RUN", "/run/crio")


def crio_containers() -> str:
    root = os.environ.get("CRASHCART_CRIO_RUNROOT", "/run/containers/storage")
    return os.path.join(root, "overlay-containers")


def is_dns_label(name: str, limit: int = 63) -> bool:
    """A Kubernetes name: RFC 1123 label (namespaces, containers) or, with dots and 253
    characters, subdomain (pods)."""
    chars = LABEL_CHARS | {"."} if limit > 63 else LABEL_CHARS
    return (
        0 < len(name) <= limit
        and set(name) <= chars
        and name[0] not in "-."
        and name[-1] not in "-."
    )


def is_pod_name(name: str) -> bool:
    return is_dns_label(name, 253)


class Record:
    """One running container of a pod, as the CRI left it on disk."""

    __slots__ = ("cri", "id", "pid", "pod", "namespace", "uid", "sandbox_id", "container",
                 "image", "attempt", "spec")  # fmt: skip

    def __init__(self, cri: str, cid: str, pid: int, names: dict[str, str], image: str) -> None:
        self.cri = cri  # containerd or cri-o
        self.id = cid
        self.pid = pid
        self.pod = names["pod"]
        self.namespace = names["namespace"]
        self.uid = names["uid"]
        self.sandbox_id = names["sandbox_id"]
        self.container = names["container"]
        self.image = image
        self.attempt: int | None = None
        self.spec: dict[str, Any] = {}

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


def _read(path: str, limit: int) -> bytes | None:
    """The file's bytes, None if it is gone. (os.read: a buffered read(limit) allocates the
    whole limit each time, 1 ms for 4 MiB, which over a node's bundles is the look-up.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise RuntimeAnswerError(f"{path}: unreadable ({e.strerror})") from None
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise RuntimeAnswerError(f"{path}: larger than {limit} bytes")
        return os.read(fd, size + 1)
    finally:
        os.close(fd)


def _parse_spec(raw: bytes, path: str) -> dict[str, Any]:
    try:
        spec = fastjson.loads(raw)
    except ValueError as e:
        raise RuntimeAnswerError(f"{path}: not an OCI spec ({e})") from None
    return spec if isinstance(spec, dict) else {}


def _read_spec(path: str, needle: bytes) -> dict[str, Any] | None:
    """The OCI spec at ``path``, None if it is gone or does not contain ``needle``."""
    raw = _read(path, MAX_SPEC)
    return _parse_spec(raw, path) if raw is not None and needle in raw else None


def _annotations(spec: dict[str, Any], where: str) -> dict[str, Any]:
    value = spec.get("annotations")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RuntimeAnswerError(f"{where}: annotations are not an object")
    return value


def is_uid(text: str) -> bool:
    """A pod UID: a UUID as the API server assigns it (hex and dashes)."""
    return 0 < len(text) <= 64 and set(text) <= frozenset("0123456789abcdef-")


def is_id(text: str) -> bool:
    """A container or sandbox ID: 64 hex digits from both CRIs (a little latitude)."""
    return 0 < len(text) <= 128 and set(text) <= frozenset("0123456789abcdef")


VALID = {"pod": is_pod_name, "namespace": is_dns_label, "container": is_dns_label,
         "uid": is_uid, "sandbox_id": is_id}  # fmt: skip


def _names(notes: dict[str, Any], keys: dict[str, str], where: str) -> dict[str, str]:
    """The record's names from a bundle's annotations, each checked to be what Kubernetes
    allows (an odd value is a malformed runtime answer, not a name to print or match)."""
    names = {k: field(notes, key, str, where) for k, key in keys.items()}
    for k, value in names.items():
        if not VALID[k](value):
            raise RuntimeAnswerError(f"{where}: {keys[k]} is not valid ({value!r:.80})")
    return names


def _pid_in_cgroup(path: str, cid: str) -> int | None:
    """The PID in ``path``, trusted only if it runs in a cgroup naming the container."""
    try:
        pid = int((_read(path, 64) or b"0").strip() or 0)
        cgroups = procfs.read_text(f"{procfs.PROC}/{pid}/cgroup") if pid > 0 else ""
    except (OSError, ValueError, RuntimeAnswerError):
        return None
    return pid if pid > 0 and cid in cgroups else None


def _bundle(config: str, pidfile: str, cid: str, needle: bytes) -> tuple[int, dict[str, Any]]:
    """(PID, spec) of a live container's bundle, or (0, {}). The spec is read first but
    parsed last: a pod's name appears verbatim in its containers' specs, so a look-up by
    name reads each bundle once and checks and parses only the pod's own; and a bundle
    still being written has no live PID yet."""
    raw = _read(config, MAX_SPEC)
    if raw is None or needle not in raw:
        return 0, {}
    pid = _pid_in_cgroup(pidfile, cid)
    return (pid, _parse_spec(raw, config)) if pid else (0, {})


def _entries(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root) if is_id(n))
    except OSError:
        return []


def containerd_records(ids: list[str] | None = None, needle: bytes = b"") -> list[Record]:
    """Running app containers of containerd's CRI (``ids``: only those directories)."""
    root = containerd_tasks()
    out = []
    for cid in _entries(root) if ids is None else ids:
        where = os.path.join(root, cid, "config.json")
        pid, spec = _bundle(where, os.path.join(root, cid, "init.pid"), cid, needle)
        if not spec:
            continue
        notes = _annotations(spec, where)
        if notes.get("io.kubernetes.cri.container-type") != "container":
            continue  # the pause sandbox, or a container the CRI did not make
        image = notes.get("io.kubernetes.cri.image-name")
        rec = Record("containerd", cid, pid, _names(notes, CRI_KEYS, where), str(image or ""))
        rec.spec = spec
        out.append(rec)
    return out


def crio_records(ids: list[str] | None = None, needle: bytes = b"") -> list[Record]:
    """Running app containers of CRI-O."""
    if not os.path.isdir(crio_run_dir()):
        return []  # Podman shares containers/storage: without CRI-O these are Podman's
    root = crio_containers()
    out = []
    for cid in _entries(root) if ids is None else ids:
        userdata = os.path.join(root, cid, "userdata")
        where = os.path.join(userdata, "config.json")
        pid, spec = _bundle(where, os.path.join(userdata, "pidfile"), cid, needle)
        if not spec:
            continue
        notes = _annotations(spec, where)
        if notes.get("io.kubernetes.cri-o.ContainerType") != "container":
            continue
        image = notes.get("io.kubernetes.cri-o.ImageName")
        rec = Record("cri-o", cid, pid, _names(notes, CRIO_KEYS, where), str(image or ""))
        rec.spec = spec
        rec.attempt = _crio_attempt(notes, where)
        out.append(rec)
    return out


def sandbox_pod(cid: str) -> str | None:
    """NAMESPACE/POD when ``cid`` is a pod's running sandbox (pause, infra) container."""
    ctd = os.path.join(containerd_tasks(), cid)
    layouts = [(ctd, "init.pid", CRI_KEYS, "io.kubernetes.cri.container-type")]
    if os.path.isdir(crio_run_dir()):
        userdata = os.path.join(crio_containers(), cid, "userdata")
        layouts.append((userdata, "pidfile", CRIO_KEYS, "io.kubernetes.cri-o.ContainerType"))
    for bundle, pidfile, keys, kind in layouts:
        config = os.path.join(bundle, "config.json")
        pid, spec = _bundle(config, os.path.join(bundle, pidfile), cid, b"")
        notes = _annotations(spec, config) if pid else {}
        pod, ns = notes.get(keys["pod"]), notes.get(keys["namespace"])
        if notes.get(kind) == "sandbox" and isinstance(pod, str) and isinstance(ns, str):
            return f"{ns}/{pod}" if is_pod_name(pod) and is_dns_label(ns) else None
    return None


def _crio_attempt(notes: dict[str, Any], where: str) -> int | None:
    raw = notes.get("io.kubernetes.cri-o.Metadata")
    if not isinstance(raw, str):
        return None
    try:
        meta = fastjson.loads(raw)
    except ValueError:
        raise RuntimeAnswerError(f"{where}: io.kubernetes.cri-o.Metadata is not JSON") from None
    attempt = meta.get("attempt", 0) if isinstance(meta, dict) else None
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def crio_pod_annotations(rec: Record) -> dict[str, str]:
    """The pod's annotations, from its infra (sandbox) container's spec: CRI-O keeps the
    kubelet's annotations as ``io.kubernetes.cri-o.Annotations``, a JSON object."""
    where = os.path.join(crio_containers(), rec.sandbox_id, "userdata", "config.json")
    spec = _read_spec(where, b"")
    raw = _annotations(spec, where).get("io.kubernetes.cri-o.Annotations") if spec else None
    try:
        notes = fastjson.loads(raw) if isinstance(raw, str) else {}
    except ValueError:
        raise RuntimeAnswerError(f"{where}: io.kubernetes.cri-o.Annotations is not JSON") from None
    return {k: v for k, v in notes.items() if isinstance(v, str)} if isinstance(notes, dict) else {}


def _cri_metadata(cid: str, kind: str) -> dict[str, Any] | None:
    """The ``Metadata`` object the CRI stored for container ``cid`` in containerd's bbolt
    store (v1/k8s.io/containers/ID/extensions), or None when it cannot be read."""
    from crashcart.targets import boltdb

    path = [b"v1", CONTAINERD_NS.encode(), b"containers", cid.encode(), b"extensions"]
    try:
        found = boltdb.lookup(containerd_meta_db(), path)
    except (OSError, ValueError):
        return None
    value = (found or {}).get(f"io.cri-containerd.{kind}.metadata".encode())
    # A protobuf Any: field 1 the type URL, field 2 the value (here JSON).
    body = _any_value(value) if value else None
    try:
        doc = fastjson.loads(body) if body else None
    except ValueError:
        return None
    meta = doc.get("Metadata") if isinstance(doc, dict) else None
    return meta if isinstance(meta, dict) else None


def _any_value(raw: bytes) -> bytes | None:
    """Field 2 of a protobuf message with two length-delimited fields (google.protobuf.Any)."""
    i = 0
    while i < len(raw):
        key = raw[i]
        i += 1
        size = shift = 0
        while i < len(raw):
            byte = raw[i]
            i += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if key & 7 != 2:
            return None
        if key >> 3 == 2:
            return raw[i : i + size]
        i += size
    return None


def containerd_attempt(rec: Record) -> int | None:
    meta = _cri_metadata(rec.id, "container")
    config = meta.get("Config") if meta else None
    md = config.get("metadata") if isinstance(config, dict) else None
    if not isinstance(md, dict):
        return None
    attempt = md.get("attempt", 0)  # Go's encoding/json omits a zero attempt
    return attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None


def containerd_pod_annotations(rec: Record) -> dict[str, str]:
    meta = _cri_metadata(rec.sandbox_id, "sandbox")
    config = meta.get("Config") if meta else None
    notes = config.get("annotations") if isinstance(config, dict) else None
    return {k: v for k, v in notes.items() if isinstance(v, str)} if isinstance(notes, dict) else {}


def pod_annotations(rec: Record) -> dict[str, str]:
    """The pod's annotations; passed-through ones in the bundle (containerd's
    ``pod_annotations`` setting) count too."""
    notes = _annotations(rec.spec, rec.id)
    direct = {k: v for k, v in notes.items() if k == DEFAULT_CONTAINER and isinstance(v, str)}
    stored = (
        containerd_pod_annotations(rec) if rec.cri == "containerd" else crio_pod_annotations(rec)
    )
    return {**stored, **direct}


def attempt(rec: Record) -> int | None:
    if rec.attempt is None and rec.cri == "containerd":
        rec.attempt = containerd_attempt(rec)
    return rec.attempt

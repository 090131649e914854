"""Real Kubernetes pods on containerd's CRI, made the way the kubelet makes them.

No cluster: the test bed is the kubelet. It speaks the CRI (``runtime.v1.RuntimeService``)
over gRPC on containerd's socket: ``RunPodSandbox``, ``CreateContainer``, ``StartContainer``,
then ``StopPodSandbox`` and ``RemovePodSandbox``, with the labels and annotations the kubelet
sets. The few CRI messages it needs are written here by hand (protobuf wire format; field
numbers from k8s.io/cri-api ``pkg/apis/runtime/v1/api.proto``), so grpcio is the only
dependency and no generated code is checked in.

Host set-up (``scripts/runtimes start`` does it, this module only checks it):

- containerd's config sets ``restrict_oom_score_adj = true`` (root lacks CAP_SYS_RESOURCE
  here, so the CRI's ``oom_score_adj -998`` made runc fail);
- ``/etc/cni/net.d/00-crashcart-loopback.conflist`` sorts first, so the CRI (which loads one
  conflist) picks it over podman's bridge; its plugin (tests/testbed/cni) brings up ``lo`` and
  creates nothing else. Every pod is checked to have ``lo`` and no other interface.

Images: the fixture images (tests/testbed/images.py) are imported into namespace ``k8s.io``;
a pause image is built from tests/testbed/pause.c and tagged as the CRI's sandbox image.

``python -m tests.testbed.cri status|cleanup`` for scripts/runtimes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import images as fixture_images
from tests.testbed.runtimes import NAME_PREFIX, Container, TestbedError, new_name, run

SOCKET = "/run/containerd/containerd.sock"
K8S_NS = "k8s.io"
SERVICE = "/runtime.v1.RuntimeService/"
CNI_CONF_DIR = Path("/etc/cni/net.d")
CNI_CONF = "00-crashcart-loopback.conflist"
CNI_PLUGIN = Path("/usr/lib/cni/crashcart-loopback")
TASKS = Path("/run/containerd/io.containerd.runtime.v2.task") / K8S_NS
LOG_ROOT = Path("/var/log/pods")
STATE = Path(os.environ.get("CRASHCART_TESTBED_STATE", "/run/crashcart-testbed")) / "pods"
PAUSE_C = Path(__file__).resolve().parent / "pause.c"
TEST_LABEL = "crashcart-test"
RPC_TIMEOUT = 60.0

# NamespaceMode (api.proto)
POD, CONTAINER = 0, 1


# ---------------------------------------------------------------------------------------------
# Protobuf wire format: just enough for the CRI messages below.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 values are sent as their 64-bit two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _tag(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def pb_str(num: int, value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _tag(num, 2) + _varint(len(data)) + data


def pb_int(num: int, value: int) -> bytes:
    return _tag(num, 0) + _varint(value) if value else b""


def pb_msg(num: int, *parts: bytes) -> bytes:
    return pb_str(num, b"".join(parts))


def pb_strs(num: int, values: Sequence[str]) -> bytes:
    return b"".join(pb_str(num, v) for v in values)


def pb_map(num: int, values: dict[str, str]) -> bytes:
    return b"".join(pb_msg(num, pb_str(1, k), pb_str(2, v)) for k, v in sorted(values.items()))


def pb_decode(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number -> values (ints for varints, bytes for length-delimited fields)."""
    out: dict[int, list[int | bytes]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        num, wire = key >> 3, key & 7
        if wire == 0:
            out.setdefault(num, []).append(varint())
        elif wire == 2:
            n = varint()
            out.setdefault(num, []).append(data[i : i + n])
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise TestbedError(f"CRI answer: unsupported protobuf wire type {wire}")
    return out


def _first_str(fields: dict[int, list[int | bytes]], num: int) -> str:
    value = fields.get(num, [b""])[0]
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------------
# The CRI client


class Cri:
    """A CRI RuntimeService client on containerd's socket (one gRPC channel)."""

    def __init__(self, socket: str = SOCKET) -> None:
        import grpc  # type: ignore[import-untyped]  # grpcio ships no type information

        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket}")

    def close(self) -> None:
        self.channel.close()

    def call(self, method: str, request: bytes, timeout: float = RPC_TIMEOUT) -> bytes:
        rpc = self.channel.unary_unary(SERVICE + method)
        try:
            answer: bytes = rpc(request, timeout=timeout)
        except self._grpc.RpcError as e:
            raise TestbedError(f"CRI {method}: {e.code().name}: {e.details()}") from None
        return answer

    def version(self) -> tuple[str, str, str]:
        """(runtime_name, runtime_version, runtime_api_version)."""
        answer = pb_decode(self.call("Version", pb_str(1, "v1"), timeout=5))
        return _first_str(answer, 2), _first_str(answer, 3), _first_str(answer, 4)

    def run_pod_sandbox(self, config: bytes) -> str:
        return _first_str(pb_decode(self.call("RunPodSandbox", pb_msg(1, config))), 1)

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.call("StopPodSandbox", pb_str(1, sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.call("RemovePodSandbox", pb_str(1, sandbox_id))

    def create_container(self, sandbox_id: str, config: bytes, sandbox_config: bytes) -> str:
        request = pb_str(1, sandbox_id) + pb_msg(2, config) + pb_msg(3, sandbox_config)
        return _first_str(pb_decode(self.call("CreateContainer", request)), 1)

    def start_container(self, container_id: str) -> None:
        self.call("StartContainer", pb_str(1, container_id))

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        self.call("StopContainer", pb_str(1, container_id) + pb_int(2, timeout))

    def remove_container(self, container_id: str) -> None:
        self.call("RemoveContainer", pb_str(1, container_id))

    def list_pod_sandboxes(self) -> list[tuple[str, str, str, str]]:
        """(sandbox id, pod namespace, pod name, pod UID) of every sandbox the CRI knows."""
        out = []
        for item in pb_decode(self.call("ListPodSandbox", b"")).get(1, []):
            assert isinstance(item, bytes)
            fields = pb_decode(item)
            meta = fields.get(2, [b""])[0]
            assert isinstance(meta, bytes)
            m = pb_decode(meta)
            out.append(
                (_first_str(fields, 1), _first_str(m, 3), _first_str(m, 1), _first_str(m, 2))
            )
        return out


# ---------------------------------------------------------------------------------------------
# What the kubelet sends


@dataclass
class ContainerSpec:
    """One container of a pod spec. ``image`` is a fixture image name."""

    name: str
    image: str = "distroless"
    command: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    run_as_user: int | None = None  # runAsNonRoot: the kubelet demands a non-zero UID
    read_only: bool = False  # readOnlyRootFilesystem
    drop_all: bool = False  # capabilities: drop: [ALL], allowPrivilegeEscalation: false


@dataclass
class PodSpec:
    name: str
    namespace: str = "default"
    containers: list[ContainerSpec] = field(default_factory=list)
    share_process_namespace: bool = False
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: _uuid())


def _uuid() -> str:
    h = secrets.token_hex(16)
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def image_ref(image: str) -> str:
    return fixture_images.full_ref(image)


def log_dir(pod: PodSpec) -> Path:
    return LOG_ROOT / f"{pod.namespace}_{pod.name}_{pod.uid}"


def _pod_labels(pod: PodSpec) -> dict[str, str]:
    return {
        "io.kubernetes.pod.name": pod.name,
        "io.kubernetes.pod.namespace": pod.namespace,
        "io.kubernetes.pod.uid": pod.uid,
        TEST_LABEL: "1",
    }


def _namespace_options(pod: PodSpec) -> bytes:
    # The kubelet sets pid CONTAINER for v1 pods unless shareProcessNamespace is true.
    pid = POD if pod.share_process_namespace else CONTAINER
    return pb_int(1, POD) + pb_int(2, pid) + pb_int(3, POD)


def sandbox_config(pod: PodSpec, attempt: int = 0) -> bytes:
    """PodSandboxConfig as the kubelet writes it (no cgroup parent: no kubepods hierarchy
    is made on a shared host)."""
    metadata = pb_str(1, pod.name) + pb_str(2, pod.uid) + pb_str(3, pod.namespace)
    annotations = {
        "kubernetes.io/config.source": "api",
        "kubernetes.io/config.seen": "2026-01-01T00:00:00Z",
        **pod.annotations,
    }
    security = pb_msg(1, _namespace_options(pod))
    return b"".join(
        [
            pb_msg(1, metadata, pb_int(4, attempt)),
            pb_str(2, pod.name[:63]),
            pb_str(3, str(log_dir(pod))),
            pb_map(6, _pod_labels(pod)),
            pb_map(7, annotations),
            pb_msg(8, pb_msg(2, security)),
        ]
    )


def container_config(pod: PodSpec, c: ContainerSpec, attempt: int, termination_log: Path) -> bytes:
    labels = {**_pod_labels(pod), "io.kubernetes.container.name": c.name}
    labels.pop(TEST_LABEL)
    annotations = {
        "io.kubernetes.container.hash": hashlib.sha256(c.name.encode()).hexdigest()[:8],
        "io.kubernetes.container.restartCount": str(attempt),
        "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
        "io.kubernetes.container.terminationMessagePolicy": "File",
        "io.kubernetes.pod.terminationGracePeriod": "30",
    }
    security = pb_msg(3, _namespace_options(pod))
    if c.drop_all:
        security += pb_msg(1, pb_str(2, "ALL")) + pb_int(11, 1)
    if c.run_as_user is not None:
        security += pb_msg(5, pb_int(1, c.run_as_user)) + pb_msg(12, pb_int(1, c.run_as_user))
    if c.read_only:
        security += pb_int(7, 1)
    # The kubelet bind-mounts each container's termination-message file into its /dev.
    mount = pb_str(1, "/dev/termination-log") + pb_str(2, str(termination_log))
    return b"".join(
        [
            pb_msg(1, pb_str(1, c.name), pb_int(2, attempt)),
            pb_msg(2, pb_str(1, image_ref(c.image))),
            pb_strs(3, c.command),
            pb_strs(4, c.args),
            pb_msg(7, mount),
            pb_map(9, labels),
            pb_map(10, annotations),
            pb_str(11, f"{c.name}/{attempt}.log"),
            pb_msg(15, pb_msg(2, security)),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Host checks and images


def check_host() -> None:
    """Fail loudly unless the CRI answers and the loopback-only CNI config is the one it
    takes (the first conflist in name order; podman's bridge must never be picked)."""
    if not os.path.exists(SOCKET):
        raise TestbedError(f"containerd's socket {SOCKET} is missing (scripts/runtimes start)")
    if containerd_setting("restrict_oom_score_adj") != "true":
        raise TestbedError(
            "containerd's config lacks restrict_oom_score_adj = true (root lacks "
            "CAP_SYS_RESOURCE here: runc fails on the CRI's oom_score_adj -998); "
            "scripts/runtimes start writes it before starting containerd"
        )
    confs = sorted(p.name for p in CNI_CONF_DIR.glob("*.conf*"))
    if not confs or confs[0] != CNI_CONF or not CNI_PLUGIN.exists():
        raise TestbedError(
            f"{CNI_CONF_DIR} must start with {CNI_CONF} and {CNI_PLUGIN} must exist "
            f"(found {confs}); run scripts/runtimes start, which installs them"
        )


@functools.cache
def containerd_setting(key: str) -> str | None:
    """A value from `containerd config dump` (the file merged with the defaults)."""
    dump = run(["containerd", "config", "dump"]).stdout
    m = re.search(rf"^\s*{re.escape(key)}\s*=\s*(.+?)\s*$", dump, re.M)
    return m.group(1).strip('"') if m else None


def ctr_images() -> dict[str, str]:
    """ref -> manifest digest of the images in namespace k8s.io."""
    out = {}
    for line in run(["ctr", "-n", K8S_NS, "images", "ls"]).stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3:
            out[cols[0]] = cols[2]
    return out


def _import(built: fixture_images.BuiltImage, have: dict[str, str]) -> None:
    if have.get(built.full_ref) != built.manifest_digest:
        run(["ctr", "-n", K8S_NS, "images", "import", str(built.tar)], timeout=120)


def pause_image() -> fixture_images.BuiltImage:
    """The pause image, built from pause.c (cached under the fixture images' directory)."""
    out = fixture_images.default_out_dir()
    dest = out / "pause"
    want = hashlib.sha256(PAUSE_C.read_bytes() + Path(__file__).read_bytes()).hexdigest()
    meta_path = dest / "meta.json"
    with contextlib.suppress(FileNotFoundError, ValueError):
        meta = json.loads(meta_path.read_text())
        if meta.get("inputs") == want and (dest / "image.tar").exists():
            return _pause_built(dest, meta)
    rootfs = dest / "rootfs"
    shutil.rmtree(dest, ignore_errors=True)
    rootfs.mkdir(parents=True)
    proc = subprocess.run(
        ["musl-gcc", "-static", "-Os", "-s", "-Wall", "-Werror", "-o", str(rootfs / "pause"),
         str(PAUSE_C)], capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise TestbedError(f"compiling {PAUSE_C}: {proc.stderr.strip()}")
    blobs = fixture_images.image_blobs(fixture_images.layer_tar(rootfs), ["/pause"], "pause")
    fixture_images.write_image_tar(blobs, dest / "image.tar")
    meta = {"inputs": want, "manifest_digest": blobs.manifest_digest}
    meta["config_digest"], meta["layer_digest"] = blobs.config_digest, blobs.layer_digest
    meta_path.write_text(json.dumps(meta))
    return _pause_built(dest, meta)


def _pause_built(dest: Path, meta: dict[str, str]) -> fixture_images.BuiltImage:
    return fixture_images.BuiltImage(
        "pause", fixture_images.ref("pause"), fixture_images.full_ref("pause"), dest / "rootfs",
        dest / "image.tar", ("/pause",), meta["layer_digest"], meta["config_digest"],
        meta["manifest_digest"],
    )  # fmt: skip


def ensure_images(names: Sequence[str] = ("busybox", "distroless")) -> None:
    """Import the fixture images and the pause image into k8s.io; tag the pause image as
    the CRI's sandbox image."""
    have = ctr_images()
    for built in fixture_images.build_all(names=list(names)).values():
        _import(built, have)
    pause = pause_image()
    _import(pause, have)
    sandbox = containerd_setting("sandbox_image") or "registry.k8s.io/pause:3.6"
    if have.get(sandbox) != pause.manifest_digest:
        run(["ctr", "-n", K8S_NS, "images", "rm", sandbox], check=False)
        run(["ctr", "-n", K8S_NS, "images", "tag", pause.full_ref, sandbox])


# ---------------------------------------------------------------------------------------------
# Pods


def task_pids() -> dict[str, int]:
    """container ID -> host PID of every running task in namespace k8s.io (`ctr task ls`)."""
    out = {}
    for line in run(["ctr", "-n", K8S_NS, "tasks", "ls"]).stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3 and cols[2] == "RUNNING":
            out[cols[0]] = int(cols[1])
    return out


def interfaces(pid: int) -> list[str]:
    """Network interfaces of the netns ``pid`` is in: /proc/PID/net/dev, read from the host."""
    lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":", 1)[0].strip() for line in lines)


@dataclass
class PodContainer:
    name: str
    id: str
    pid: int
    attempt: int
    image: str

    def container(self, pod: Pod) -> Container:
        """The leak checker's view of it."""
        return Container("k8s", f"{pod.namespace}/{pod.name}/{self.name}", self.id, self.pid,
                         self.image, K8S_NS)  # fmt: skip


@dataclass
class Pod:
    spec: PodSpec
    sandbox_id: str
    sandbox_pid: int
    containers: dict[str, PodContainer] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def namespace(self) -> str:
        return self.spec.namespace

    def target(self, container: str | None = None) -> str:
        tail = f"/{container}" if container else ""
        return f"k8s://{self.namespace}/{self.name}{tail}"

    def __getitem__(self, name: str) -> PodContainer:
        return self.containers[name]


class Kubelet:
    """Creates pods for one test and removes every one of them in :meth:`close`."""

    def __init__(self) -> None:
        check_host()
        self.cri = Cri()
        self.pods: list[Pod] = []

    def run_pod(self, spec: PodSpec) -> Pod:
        """RunPodSandbox, then CreateContainer + StartContainer for each container."""
        log_dir(spec).mkdir(parents=True, exist_ok=True)
        config = sandbox_config(spec)
        sandbox_id = self.cri.run_pod_sandbox(config)
        pod = Pod(spec, sandbox_id, 0)
        self.pods.append(pod)
        pod.sandbox_pid = self._pid(sandbox_id)
        found = interfaces(pod.sandbox_pid)
        if found != ["lo"]:
            raise TestbedError(
                f"pod {spec.namespace}/{spec.name} has network interfaces {found}, not only lo:"
                f" the CRI did not take {CNI_CONF_DIR / CNI_CONF}"
            )
        for c in spec.containers:
            self.start_container(pod, c)
        return pod

    def start_container(self, pod: Pod, c: ContainerSpec, attempt: int = 0) -> PodContainer:
        (log_dir(pod.spec) / c.name).mkdir(exist_ok=True)
        term = STATE / pod.spec.uid / f"{c.name}-{attempt}.termination-log"
        term.parent.mkdir(parents=True, exist_ok=True)
        term.touch()
        config = container_config(pod.spec, c, attempt, term)
        cid = self.cri.create_container(pod.sandbox_id, config, sandbox_config(pod.spec))
        self.cri.start_container(cid)
        pc = PodContainer(c.name, cid, self._pid(cid), attempt, c.image)
        pod.containers[c.name] = pc
        return pc

    def stop_container(self, pod: Pod, name: str, *, remove: bool) -> None:
        pc = pod.containers.pop(name)
        self.cri.stop_container(pc.id)
        if remove:
            self.cri.remove_container(pc.id)

    def _pid(self, cid: str, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pid := task_pids().get(cid):
                return pid
            time.sleep(0.05)
        raise TestbedError(f"CRI container {cid[:12]}: no running task after {timeout:.0f}s")

    def remove_pod(self, pod: Pod) -> None:
        """StopPodSandbox + RemovePodSandbox (which stop and remove its containers), then
        the pod's log directory and termination-message files, as the kubelet does."""
        self.pods.remove(pod)
        remove_sandbox(self.cri, pod.sandbox_id)
        shutil.rmtree(log_dir(pod.spec), ignore_errors=True)
        shutil.rmtree(STATE / pod.spec.uid, ignore_errors=True)
        pids = [pod.sandbox_pid, *(c.pid for c in pod.containers.values())]
        if any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
            raise TestbedError(f"pod {pod.namespace}/{pod.name}: a process outlived removal")

    def close(self) -> list[str]:
        errors = []
        for pod in list(reversed(self.pods)):
            try:
                self.remove_pod(pod)
            except Exception as e:
                errors.append(f"pod {pod.namespace}/{pod.name}: {e}")
        self.cri.close()
        return errors


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def remove_sandbox(cri: Cri, sandbox_id: str) -> None:
    cri.stop_pod_sandbox(sandbox_id)
    cri.remove_pod_sandbox(sandbox_id)
    if (TASKS / sandbox_id).exists():
        raise TestbedError(f"sandbox {sandbox_id[:12]}: task directory left after removal")


def pod_name(hint: str) -> str:
    """A unique pod or namespace name (a DNS-1123 label): cc-test-HINT-RANDOM."""
    return new_name(hint.lower())


@contextlib.contextmanager
def kubelet() -> Iterator[Kubelet]:
    k = Kubelet()
    try:
        yield k
    finally:
        errors = k.close()
        if errors:
            raise TestbedError("; ".join(errors))


def leftovers(cri: Cri) -> list[tuple[str, str, str, str]]:
    return [s for s in cri.list_pod_sandboxes() if s[2].startswith(NAME_PREFIX)]


def main(argv: Sequence[str] | None = None) -> int:
    """status and cleanup speak the CRI (grpcio: the venv); images needs the standard
    library only (Debian's python, as scripts/runtimes load-images runs it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args[0] if args else "status"
    if cmd not in ("status", "cleanup", "images"):
        print(f"usage: python -m tests.testbed.cri status|cleanup|images (not {cmd!r})")
        return 2
    try:
        if cmd == "images":
            ensure_images()
            return 0
        cri = Cri()
        try:
            if cmd == "status":
                name, version, api = cri.version()
                left = leftovers(cri)
                print(f"cri: {name} {version} (CRI {api}); cc-test-* pods: {len(left)}")
            for sid, ns, name, uid in leftovers(cri) if cmd == "cleanup" else []:
                print(f"cri: removing leftover pod {ns}/{name} ({sid[:12]})")
                remove_sandbox(cri, sid)
                if not re.fullmatch(r"[0-9a-f-]{1,64}", uid):
                    continue  # not a UID the test bed made: touch no path built from it
                shutil.rmtree(LOG_ROOT / f"{ns}_{name}_{uid}", ignore_errors=True)
                shutil.rmtree(STATE / uid, ignore_errors=True)
        finally:
            cri.close()
    except (TestbedError, fixture_images.ImageBuildError, OSError) as e:
        print(f"cri: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

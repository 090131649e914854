"""Kubernetes targets without a cluster: CRI-O's on-disk layout (CRI-O cannot be installed
on these machines), containerd's bbolt metadata store, the k8s:// spellings.

CRI-O's files are written here in their real format, from CRI-O's source:

- ``server/container_create_linux.go``: ``specgen.SaveToFile(filepath.Join(
  containerInfo.RunDir, "config.json"))``; containers/storage's RunDir of a container is
  ``RUNROOT/overlay-containers/ID/userdata`` (RUNROOT ``/run/containers/storage``);
- ``internal/oci/runtime_oci.go``: conmon ``-p filepath.Join(c.bundlePath, "pidfile")``;
- ``pkg/annotations/internal.go``: ``io.kubernetes.cri-o.ContainerType`` (``sandbox`` |
  ``container``), ``...SandboxID``, ``...ContainerName``, ``...SandboxName``,
  ``...Metadata`` (the CRI metadata as JSON), ``...Annotations`` (the kubelet's annotations
  as JSON), ``...Labels``, ``...ImageName``;
- the kubelet's labels, which CRI-O also sets as annotations of the spec
  (kubernetes ``pkg/kubelet/types/labels.go``; read the same way by Inspektor Gadget's
  ``pkg/container-utils/oci-annotations``): ``io.kubernetes.pod.name``,
  ``io.kubernetes.pod.namespace``, ``io.kubernetes.pod.uid``, ``io.kubernetes.container.name``.

What ran on a real CRI is tests/runtime/test_k8s.py (containerd's).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from crashcart.errors import RuntimeAnswerError, TargetError, UsageError
from crashcart.linux import procfs
from crashcart.targets import boltdb, dedupe, k8s
from crashcart.targets import k8s_layout as layout
from crashcart.targets.model import Spec, Target, parse_spec

REPO = Path(__file__).resolve().parents[2]
UID = "6f1c3a2e-9b7d-4c1e-8f00-1234567890ab"
INFRA = "a1" * 32
APP = "b2" * 32
SIDE = "c3" * 32
GONE = "d4" * 32


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty node: no containerd bundles, CRI-O's run dir, a fake /proc."""
    for d in ("tasks/k8s.io", "crio", "storage/overlay-containers", "proc"):
        (tmp_path / d).mkdir(parents=True)
    monkeypatch.setenv("CRASHCART_CONTAINERD_TASKS", str(tmp_path / "tasks"))
    monkeypatch.setenv("CRASHCART_CONTAINERD_ROOT", str(tmp_path / "containerd"))
    monkeypatch.setenv("CRASHCART_CRIO_RUN", str(tmp_path / "crio"))
    monkeypatch.setenv("CRASHCART_CRIO_RUNROOT", str(tmp_path / "storage"))
    monkeypatch.setattr(procfs, "PROC", str(tmp_path / "proc"))
    return tmp_path


def fake_process(node: Path, pid: int, cid: str) -> None:
    """/proc/PID/cgroup of a process in CRI-O's cgroup for container ``cid``."""
    (node / "proc" / str(pid)).mkdir()
    cgroup = f"0::/kubepods.slice/kubepods-besteffort.slice/crio-{cid}.scope\n"
    (node / "proc" / str(pid) / "cgroup").write_text(cgroup)


def crio_spec(cid: str, kind: str, name: str, attempt: int, notes: dict[str, str]) -> dict:
    pod = {"io.kubernetes.pod.name": "web", "io.kubernetes.pod.namespace": "default",
           "io.kubernetes.pod.uid": UID}  # fmt: skip
    annotations = {
        "io.container.manager": "cri-o",
        "io.kubernetes.cri-o.ContainerID": cid,
        "io.kubernetes.cri-o.ContainerType": kind,
        "io.kubernetes.cri-o.Created": "2026-12-01T10:00:00.000000000Z",
        "io.kubernetes.cri-o.SandboxID": INFRA,
        "io.kubernetes.cri-o.SandboxName": f"k8s_web_default_{UID}_0",
        "io.kubernetes.cri-o.Labels": json.dumps(pod),
        "io.kubernetes.cri-o.Annotations": json.dumps(notes),
        **pod,
    }
    if kind == "sandbox":
        meta = {"name": "web", "uid": UID, "namespace": "default", "attempt": 0}
        annotations["io.kubernetes.cri-o.ContainerName"] = f"k8s_POD_web_default_{UID}_0"
    else:
        meta = {"name": name, "attempt": attempt}
        annotations["io.kubernetes.cri-o.ContainerName"] = f"k8s_{name}_web_default_{UID}_{attempt}"
        annotations["io.kubernetes.cri-o.ImageName"] = f"registry.example/{name}:1"
        annotations["io.kubernetes.container.name"] = name
    annotations["io.kubernetes.cri-o.Metadata"] = json.dumps(meta)
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 65532, "gid": 65532}, "args": ["/server"], "cwd": "/"},
        "root": {"path": f"/var/lib/containers/storage/overlay/{cid}/merged"},
        "hostname": "web",
        "annotations": annotations,
        "linux": {"cgroupsPath": f"kubepods-besteffort.slice:crio:{cid}"},
    }


def crio_container(node: Path, cid: str, spec: dict, pid: int | None) -> None:
    userdata = node / "storage" / "overlay-containers" / cid / "userdata"
    userdata.mkdir(parents=True)
    (userdata / "config.json").write_text(json.dumps(spec))
    if pid is not None:
        (userdata / "pidfile").write_text(str(pid))


def crio_pod(node: Path, default: str | None = None) -> None:
    notes = {"kubernetes.io/config.source": "api"}
    if default:
        notes[layout.DEFAULT_CONTAINER] = default
    crio_container(node, INFRA, crio_spec(INFRA, "sandbox", "POD", 0, notes), 100)
    fake_process(node, 100, INFRA)
    restart = {"io.kubernetes.container.restartCount": "1"}
    crio_container(node, APP, crio_spec(APP, "container", "app", 1, restart), 101)
    fake_process(node, 101, APP)
    crio_container(node, SIDE, crio_spec(SIDE, "container", "side", 0, {}), 102)
    fake_process(node, 102, SIDE)
    # An exited container: its pidfile names a PID now used by someone else.
    crio_container(node, GONE, crio_spec(GONE, "container", "old", 0, {}), 101)


def test_crio_pod_containers_are_listed_without_the_infra_container(node: Path) -> None:
    crio_pod(node)
    found = {t.container: t for t in k8s.list_running()}
    assert sorted(found) == ["app", "side"]
    app = found["app"]
    assert (app.runtime, app.cri, app.id, app.pid, app.attempt) == ("k8s", "cri-o", APP, 101, 1)
    assert (app.namespace, app.pod, app.pod_uid, app.name) == (
        "default",
        "web",
        UID,
        "default/web/app",
    )
    assert app.image == "registry.example/app:1"
    assert app.ref == "k8s://default/web/app"


def test_crio_default_container_from_the_infra_containers_annotations(node: Path) -> None:
    crio_pod(node, default="side")
    assert [t.id for t in k8s.find("default/web")] == [SIDE]
    assert [t.id for t in k8s.find("default/web/app")] == [APP]
    assert [t.id for t in k8s.find("web")] == [SIDE]  # a bare pod name
    assert [(t.id, t.exact) for t in k8s.find(APP[:10])] == [(APP, False)]
    with pytest.raises(TargetError, match="sandbox .pause. container of pod default/web"):
        k8s.find(INFRA)


def test_crio_several_containers_and_no_default_is_an_error_listing_them(node: Path) -> None:
    crio_pod(node)
    with pytest.raises(TargetError) as err:
        k8s.find("default/web")
    assert "has 2 running containers: app, side" in str(err.value)
    assert err.value.hint and "k8s://default/web/app" in err.value.hint
    # Unforced (a bare name searched across runtimes), every container is a candidate.
    assert sorted(t.container or "" for t in k8s.find("web")) == ["app", "side"]
    with pytest.raises(TargetError, match="no running container 'db'"):
        k8s.find("default/web/db")
    assert k8s.find("other/web") == []


def test_crio_layout_is_ignored_without_crio(node: Path) -> None:
    """Podman shares containers/storage: without CRI-O's run dir, nothing there is a pod."""
    crio_pod(node)
    (node / "crio").rmdir()
    assert k8s.list_running() == []
    assert k8s.available()  # containerd's k8s.io task directory is there
    (node / "tasks" / "k8s.io").rmdir()
    assert not k8s.available()


def test_crio_exec_is_crictl() -> None:
    t = Target("k8s", APP, "default/web/app", 1, namespace="default", pod="web",
               container="app", cri="cri-o")  # fmt: skip
    assert k8s.exec_argv(t, ["/dev/crashcart/shell"], True, {"A": "1"}) == [
        "crictl", "exec", "-i", "-t", APP, "/dev/crashcart/usr/bin/env", "A=1",
        "/dev/crashcart/shell",
    ]  # fmt: skip
    t.cri = "containerd"
    argv = k8s.exec_argv(t, ["true"], False, {})
    assert argv[:6] == ["ctr", "-n", "k8s.io", "task", "exec", "--exec-id"] and argv[-2:] == [
        APP,
        "true",
    ]


@pytest.mark.parametrize(
    "change",
    [
        {"io.kubernetes.pod.name": "Web/x"},
        {"io.kubernetes.pod.namespace": "-bad"},
        {"io.kubernetes.container.name": "a" * 64},
        {"io.kubernetes.pod.uid": "../../etc"},
        {"io.kubernetes.cri-o.SandboxID": "not-hex"},
        {"io.kubernetes.pod.name": 7},
    ],
)
def test_crio_malformed_names_are_runtime_answer_errors(node: Path, change: dict) -> None:
    spec = crio_spec(APP, "container", "app", 0, {})
    spec["annotations"].update(change)
    crio_container(node, APP, spec, 101)
    fake_process(node, 101, APP)
    with pytest.raises(RuntimeAnswerError):
        k8s.list_running()


@pytest.mark.parametrize("content", ['{"annotations": [1]}', "{not json", '{"annotations":'])
def test_crio_malformed_spec_is_a_runtime_answer_error(node: Path, content: str) -> None:
    crio_container(node, APP, {}, 101)
    fake_process(node, 101, APP)
    path = node / "storage" / "overlay-containers" / APP / "userdata" / "config.json"
    path.write_text(content)
    with pytest.raises(RuntimeAnswerError):
        k8s.list_running()


# ---------------------------------------------------------------------------------------------
# containerd: bundles plus the bbolt store


def _fnv(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _leaf(items: list[tuple[bytes, bytes, bool]], pgid: int = 0) -> bytes:
    """A bbolt leaf page image (go.etcd.io/bbolt page.go): header, elements, then data."""
    head = struct.pack("<QHHI", pgid, 0x02, len(items), 0)
    elems, data = b"", b""
    for i, (k, v, is_bucket) in enumerate(items):
        pos = 16 * (len(items) - i) + len(data)  # from this element to its key
        elems += struct.pack("<IIII", 1 if is_bucket else 0, pos, len(k), len(v))
        data += k + v
    return head + elems + data


def _inline(items: list[tuple[bytes, bytes, bool]]) -> bytes:
    return struct.pack("<QQ", 0, 0) + _leaf(items)


def _meta(pgid: int, root: int, txid: int, page_size: int = 4096, good: bool = True) -> bytes:
    body = struct.pack("<IIIIQQQQQ", 0xED0CDAED, 2, page_size, 0, root, 0, 2, 8, txid)
    checksum = _fnv(body) ^ (0 if good else 1)
    page = struct.pack("<QHHI", pgid, 0x04, 0, 0) + body + struct.pack("<Q", checksum)
    return page.ljust(page_size, b"\0")


def write_bolt(path: Path, containers: dict[str, dict[str, bytes]], *, stale_txid: int = 9) -> None:
    """v1/k8s.io/containers/ID/extensions as containerd's CRI stores them; the containers
    bucket is split over a branch page and two leaf pages."""
    ps = 4096
    rows = []
    for cid, ext in sorted(containers.items()):
        extensions = _inline([(k.encode(), v, False) for k, v in sorted(ext.items())])
        rows.append((cid.encode(), _inline([(b"extensions", extensions, True),
                                             (b"image", b"x", False)]), True))  # fmt: skip
    half = max(1, len(rows) // 2)
    leaves = [_leaf(rows[:half], 4), _leaf(rows[half:], 5)]
    branch = struct.pack("<QHHI", 3, 0x01, 2, 0)
    keys = [rows[0][0], rows[half][0]]
    branch += struct.pack("<IIQ", 32, len(keys[0]), 4) + struct.pack(
        "<IIQ", 16 + len(keys[0]), len(keys[1]), 5
    )
    branch += keys[0] + keys[1]
    ns = _inline([(b"containers", struct.pack("<QQ", 3, 0), True)])
    root = _leaf([(b"v1", _inline([(b"k8s.io", ns, True)]), True)], 6)
    pages = [_meta(0, 6, 10), _meta(1, 7, stale_txid + 100, good=False), b"\0" * ps]
    pages += [branch.ljust(ps, b"\0"), *(p.ljust(ps, b"\0") for p in leaves), root.ljust(ps, b"\0")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(pages))


def _any(type_url: str, value: dict) -> bytes:
    body = json.dumps({"Version": "v1", "Metadata": value}).encode()
    t = type_url.encode()
    return b"\x0a" + bytes([len(t)]) + t + b"\x12" + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def containerd_bundle(node: Path, cid: str, kind: str, name: str, pid: int) -> None:
    d = node / "tasks" / "k8s.io" / cid
    d.mkdir(parents=True)
    notes = {
        "io.kubernetes.cri.container-type": kind,
        "io.kubernetes.cri.sandbox-id": INFRA,
        "io.kubernetes.cri.sandbox-name": "web",
        "io.kubernetes.cri.sandbox-namespace": "default",
        "io.kubernetes.cri.sandbox-uid": UID,
    }
    if kind == "container":
        notes["io.kubernetes.cri.container-name"] = name
        notes["io.kubernetes.cri.image-name"] = f"docker.io/library/{name}:1"
    (d / "config.json").write_text(json.dumps({"ociVersion": "1.0.2-dev", "annotations": notes}))
    (d / "init.pid").write_text(str(pid))
    (node / "proc" / str(pid)).mkdir()
    (node / "proc" / str(pid) / "cgroup").write_text(f"3:pids:/k8s.io/{cid}\n")


def test_containerd_pod_annotations_and_attempts_from_the_bolt_store(node: Path) -> None:
    containerd_bundle(node, INFRA, "sandbox", "", 200)
    containerd_bundle(node, APP, "container", "app", 201)
    containerd_bundle(node, SIDE, "container", "side", 202)
    db = node / "containerd" / "io.containerd.metadata.v1.bolt" / "meta.db"
    sandbox = {"ID": INFRA, "Config": {"metadata": {"name": "web"},
               "annotations": {layout.DEFAULT_CONTAINER: "app"}}}  # fmt: skip

    def ctr(cid: str, metadata: dict[str, object]) -> dict[str, bytes]:
        value = {"ID": cid, "Config": {"metadata": metadata}}
        return {"io.cri-containerd.container.metadata": _any("x/container/Metadata", value)}

    write_bolt(db, {
        INFRA: {"io.cri-containerd.sandbox.metadata": _any("x/sandbox/Metadata", sandbox)},
        APP: ctr(APP, {"name": "app", "attempt": 3}),
        SIDE: ctr(SIDE, {"name": "side"}),  # Go's encoding/json omits attempt 0
    })  # fmt: skip
    assert [t.id for t in k8s.find("default/web")] == [APP]
    attempts = {t.container: t.attempt for t in k8s.list_running()}
    assert attempts == {"app": 3, "side": 0}
    assert all(t.cri == "containerd" for t in k8s.list_running())


def test_containerd_without_a_readable_store_asks_for_a_container(node: Path) -> None:
    containerd_bundle(node, APP, "container", "app", 201)
    containerd_bundle(node, SIDE, "container", "side", 202)
    with pytest.raises(TargetError, match="2 running containers"):
        k8s.find("default/web")
    assert {t.attempt for t in k8s.list_running()} == {None}


def test_bolt_reader_takes_the_newest_valid_meta_and_walks_branches(tmp_path: Path) -> None:
    db = tmp_path / "meta.db"
    ids = {f"{i:02x}" * 32: {"k": b"v%d" % i} for i in range(6)}
    write_bolt(db, ids)
    for cid in ids:
        got = boltdb.lookup(str(db), [b"v1", b"k8s.io", b"containers", cid.encode(), b"extensions"])
        assert got == {k.encode(): v for k, v in ids[cid].items()}
    assert boltdb.lookup(str(db), [b"v1", b"nope"]) is None


@pytest.mark.parametrize("cut", [0, 100, 4096 * 3 + 20])
def test_bolt_reader_on_truncated_or_foreign_files(tmp_path: Path, cut: int) -> None:
    db = tmp_path / "meta.db"
    write_bolt(db, {"ab" * 32: {"k": b"v"}, "cd" * 32: {"k": b"w"}})
    db.write_bytes(db.read_bytes()[:cut] if cut else b"not a bolt file" * 400)
    with pytest.raises((boltdb.Corrupt, OSError)):
        boltdb.lookup(str(db), [b"v1", b"k8s.io", b"containers", b"ab" * 32, b"extensions"])


# ---------------------------------------------------------------------------------------------
# Spellings and naming


@pytest.mark.parametrize(
    "text,runtime,query",
    [
        ("k8s://web", None, "default/web"),
        ("k8s://team-a/web", None, "team-a/web"),
        ("k8s://team-a/web/app", None, "team-a/web/app"),
        ("web", "k8s", "default/web"),
        ("team-a/web/app", "k8s", "team-a/web/app"),
    ],
)
def test_k8s_spec_forms(text: str, runtime: str | None, query: str) -> None:
    assert parse_spec(text, runtime) == Spec(text, "k8s", query)


@pytest.mark.parametrize("text", ["k8s://", "k8s://a/b/c/d", "k8s://a//b", "k8s://a/"])
def test_k8s_spec_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_spec(text)


def test_invalid_names_match_nothing(node: Path) -> None:
    crio_pod(node)
    assert k8s.find("default/Web") == [] and k8s.find("default/web/A_b") == []


def test_a_pod_container_is_named_by_k8s() -> None:
    """The same process seen by containerd (a k8s.io task), by Podman's store (CRI-O) and by
    the k8s module: k8s names it."""
    pod = Target("k8s", APP, "default/web/app", 10, namespace="default", pod="web",
                 container="app", cri="containerd")  # fmt: skip
    others = [
        Target("containerd", APP, APP, 10, namespace="k8s.io"),
        Target("podman", APP, "x", 10),
    ]
    assert dedupe([*others, pod]) == [pod]


# ---------------------------------------------------------------------------------------------
# scripts/runtimes: containerd's config for the CRI test bed, written and put back


DEBIAN_CONFIG = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""  # Debian 12's containerd 1.6.20 ships this /etc/containerd/config.toml


def _script(conf: Path, body: str) -> subprocess.CompletedProcess[str]:
    """scripts/runtimes' functions (without its main) on ``conf``, containerd seen as down."""
    script = REPO / "scripts" / "runtimes"
    prog = f'source <(sed "\\$d" {script}); containerd_up() {{ return 1; }}; {body}'
    env = {**os.environ, "CRASHCART_CONTAINERD_CONF": str(conf)}
    return subprocess.run(["bash", "-c", prog], env=env, capture_output=True, text=True)


OTHER_CONFIG = 'version = 2\n[plugins."io.containerd.internal.v1.opt"]\n  path = "/opt/x"\n'


@pytest.mark.parametrize(
    "before", [DEBIAN_CONFIG, None, OTHER_CONFIG], ids=["debian", "none", "other"]
)
def test_runtimes_script_sets_restrict_oom_score_adj_and_restores(
    tmp_path: Path, before: str | None
) -> None:
    if shutil.which("containerd") is None:
        pytest.skip("containerd is not installed: its `config dump` checks the result")
    conf = tmp_path / "config.toml"
    if before is not None:
        conf.write_text(before)
    check = 'echo "[$(cri_setting restrict_oom_score_adj)]"'
    res = _script(conf, f"write_containerd_conf; write_containerd_conf; {check}")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[true]"
    assert "already true" in res.stderr  # the second run changed nothing
    assert conf.read_text().count("restrict_oom_score_adj") == 1
    res = _script(conf, f"restore_containerd_conf; {check}")
    assert res.returncode == 0, res.stderr
    assert (conf.read_text() if conf.exists() else None) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == (["config.toml"] if before else [])

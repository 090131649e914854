"""The node image (issue 15): `crashcart image node` builds one tar that docker, podman and
containerd all load, and crashcart works from inside it when it runs as a node pod does
(tests/testbed/nodeimage.py run_node: privileged, host pid, HOST_PATHS mounted): sessions
with the command's exit status into a Docker container and a real CRI pod's container,
-m / docker exec / -u, an interactive session through a pty, and one clear line when the
container lacks what a node pod has. Leak checker on every attach; afterwards no node
container, no crashcart process and no toolbox mount is left on the host."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from crashcart.nodeimage import NODE_ENV, NODE_TOOLBOX
from tests import ccrun
from tests.testbed import cri, nodeimage, runtimes
from tests.testbed import leakcheck as lc
from tests.testbed.cri import ContainerSpec, Kubelet, PodSpec
from tests.testbed.require import missing, require_runtime
from tests.testbed.runtimes import DOCKER, Container, ContainerFactory

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def node_tar() -> Path:
    require_runtime("docker")
    try:
        return nodeimage.ensure_node_image()
    except runtimes.TestbedError as e:
        missing(f"the node image cannot be built: {e}")


@pytest.fixture(scope="module")
def node_ref(node_tar: Path) -> str:
    return nodeimage.load("docker", node_tar)


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def host_leftovers(marker: str) -> list[str]:
    """Node containers, crashcart processes and toolbox mounts on the host that name
    `marker` (the target's name or ID, which every crashcart of the test had in its argv)."""
    found = []
    ps = subprocess.run([DOCKER, "ps", "-a", "--format", "{{.Names}} {{.Image}}"],
                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    found += [f"container {line}" for line in ps.splitlines() if "crashcart-node:" in line]
    ctrs = subprocess.run(["ctr", "-n", nodeimage.K8S_NS, "containers", "ls"],
                          capture_output=True, text=True).stdout  # fmt: skip
    found += [f"ctr container {line}" for line in ctrs.splitlines() if "crashcart-node:" in line]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"crashcart" in cmdline and marker.encode() in cmdline:
                found.append(f"process {entry.name}: {cmdline.decode(errors='replace')}")
    mounts = Path("/proc/self/mountinfo").read_text()
    found += [f"mount {m}" for m in mounts.splitlines() if NODE_TOOLBOX in m]
    return found


@pytest.fixture
def busybox(start_container: ContainerFactory) -> Iterator[Container]:
    c = start_container("docker", "busybox")
    yield c
    left = host_leftovers(c.name)
    assert not left, left


def test_build_is_one_tar_every_runtime_loads(node_tar: Path) -> None:
    with tarfile.open(node_tar) as t:
        names = set(t.getnames())
        docker_manifest = json.load(t.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= names
    assert len(docker_manifest) == 1 and all(la in names for la in docker_manifest[0]["Layers"])
    config_digest, manifest_digest = nodeimage.image_digests(node_tar)
    loaded = {}
    for runtime in ("docker", "podman", "containerd"):
        require_runtime(runtime)
        ref = nodeimage.load(runtime, node_tar)
        loaded[runtime] = ref
        want = manifest_digest if runtime == "containerd" else config_digest
        assert nodeimage.loaded_digest(runtime, ref) == want
    listed = {
        "docker": [DOCKER, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        "podman": ["podman", "images", "--format", "{{.Repository}}:{{.Tag}}"],
        "containerd": ["ctr", "-n", "k8s.io", "images", "ls", "-q"],
    }
    for runtime, argv in listed.items():
        refs = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
        assert loaded[runtime] in refs, (runtime, refs)
    inspect = subprocess.run([DOCKER, "image", "inspect", loaded["docker"]], capture_output=True,
                             text=True, check=True)  # fmt: skip
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["Entrypoint"] == ["crashcart"]
    assert f"{NODE_ENV}=1" in config["Env"]


def test_rebuild_gives_the_same_digests(node_tar: Path, tmp_path: Path) -> None:
    """Reproducible: the same crashcart and toolbox give the same image, byte for byte."""
    again = tmp_path / "again.tar"
    argv = ccrun.argv("image", "node", "-o", str(again), "--toolbox", str(nodeimage.toolbox()),
                      "--tag", nodeimage.ref_for(node_tar.parent.name))  # fmt: skip
    proc = subprocess.run(argv, env=ccrun.env(), cwd=ccrun.REPO, capture_output=True, timeout=600)
    assert proc.returncode == 0, out(proc)
    assert nodeimage.image_digests(again) == nodeimage.image_digests(node_tar)


def _ref(node_tar: Path, runner: str) -> str:
    require_runtime(runner)
    return nodeimage.load(runner, node_tar)


@pytest.mark.parametrize("runner", ["docker", "containerd"])
def test_session_into_a_docker_container_with_exit_status(
    node_tar: Path, runner: str, busybox: Container, leakcheck: lc.LeakCheckFn
) -> None:
    """The node container run by docker, or by containerd (ctr run) as on a node."""
    c, ref = busybox, _ref(node_tar, runner)
    with leakcheck(c):
        status = nodeimage.run_node(runner, [f"docker://{c.name}", "--", "sh", "-c", "exit 7"],
                                    ref=ref)  # fmt: skip
        who = nodeimage.run_node(runner, [c.name, "--", "bash", "-c",
                                 "echo $CRASHCART_TARGET_ID; ls /target/bin/busybox; "
                                 "strace -V | head -1"], ref=ref)  # fmt: skip
    assert status.returncode == 7, out(status)
    assert who.returncode == 0, out(who)
    lines = who.stdout.decode().split("\n")
    assert lines[0] == c.id and lines[1] == "/target/bin/busybox", out(who)
    assert "strace -- version" in lines[2], out(who)


def test_private_cgroup_namespace_as_a_cri_gives_on_cgroup_v2(
    node_ref: str, busybox: Container, leakcheck: lc.LeakCheckFn
) -> None:
    """crashcart joins the host's cgroup namespace first (nodeimage.prepare_node_container):
    the session is then in the target's cgroups, as from the host."""
    c = busybox
    want = Path(f"/proc/{c.pid}/cgroup").read_text()
    with leakcheck(c):
        res = nodeimage.run_node("docker", [f"docker://{c.name}", "--", "cat", "/proc/self/cgroup"],
                                 ref=node_ref, host_cgroupns=False)  # fmt: skip
    assert res.returncode == 0, out(res)
    assert res.stdout.decode() == want, out(res)


@pytest.mark.parametrize("runner", ["docker", "containerd"])
def test_session_into_a_cri_pod_container(
    node_tar: Path, runner: str, kubelet: Kubelet, leakcheck: lc.LeakCheckFn
) -> None:
    ref = _ref(node_tar, runner)
    pod = kubelet.run_pod(PodSpec(cri.pod_name("node"), cri.pod_name("ns"), [ContainerSpec("app")]))
    app = pod["app"]
    with leakcheck(app.container(pod)):
        ss = nodeimage.run_node(runner, [f"containerd://k8s.io/{app.id}", "--", "ss", "-tlnp"],
                                ref=ref)  # fmt: skip
        status = nodeimage.run_node(runner, [pod.target(), "--", "bash", "-c", "exit 9"],
                                    ref=ref)  # fmt: skip
    assert ss.returncode == 0, out(ss)
    assert ":8080" in out(ss) and '("server",pid=1,' in out(ss)
    assert status.returncode == 9, out(status)
    left = host_leftovers(app.id) + host_leftovers(pod.name)
    assert not left, left


def test_sideload_exec_unload(node_ref: str, busybox: Container, leakcheck: lc.LeakCheckFn) -> None:
    c = busybox
    with leakcheck(c):
        m = nodeimage.run_node("docker", ["-m", f"docker://{c.name}"], ref=node_ref)
        assert m.returncode == 0, out(m)
        ex = subprocess.run([DOCKER, "exec", c.name, "/dev/crashcart/bin/bash", "-c",
                             "strace -V | head -1; ps -o comm= | sort -u"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
        st = nodeimage.run_node("docker", ["status", "--json"], ref=node_ref)
        host_st = ccrun.run("status", "--json")  # the record is in the host's /run/crashcart
        u = nodeimage.run_node("docker", ["-u", f"docker://{c.name}"], ref=node_ref)
    assert ex.returncode == 0, ex.stdout + ex.stderr
    assert "strace -- version" in ex.stdout, ex.stdout
    for status in (st, host_st):
        records = json.loads(status.stdout)["mounts"]
        assert any(r["name"] == c.name and r["mounted"] for r in records), records
    assert u.returncode == 0, out(u)
    assert " /dev/crashcart " not in Path(f"/proc/{c.pid}/mountinfo").read_text()


class _DockerPty(ccrun.PtySession):
    """`docker run -it` of the node image in a real pseudo-terminal (ccrun.PtySession's
    reading and waiting; only what runs differs)."""

    def __init__(self, argv: list[str], rows: int = 40, cols: int = 120) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                import fcntl
                import struct
                import termios

                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.output = b""
        self.status = None


def test_interactive_session_through_a_pty(
    node_ref: str, busybox: Container, leakcheck: lc.LeakCheckFn
) -> None:
    c = busybox
    with leakcheck(c):
        s = _DockerPty(nodeimage.node_argv([f"docker://{c.name}"], ref=node_ref, tty=True))
        try:
            s.wait_prompt(timeout=60)
            s.send(b"echo READY-$((40+2))\n")
            s.read_until(b"READY-42")
            s.send(b"tty; stty size; echo DONE-$((20+3))\n")
            text = s.read_until(b"DONE-23").decode(errors="replace")
            s.send(b"exit 5\n")
            status = s.wait(timeout=60)
        finally:
            s.kill()
    assert status == 5, text
    assert "/dev/pts/0" in text, text
    assert "40 120" in text, text  # the test's window size reached the session's pty


@pytest.mark.parametrize(
    ("what", "flags", "message", "hint"),
    [
        ("privileged", {"privileged": False},
         "the node container is not privileged (lacks CAP_SYS_ADMIN", "--privileged"),
        ("host pid", {"host_pid": False}, "does not share the host's pid namespace", "--pid=host"),
    ],
)  # fmt: skip
def test_missing_node_pod_settings_are_one_line_and_125(
    node_ref: str, busybox: Container, what: str, flags: dict[str, bool], message: str, hint: str
) -> None:
    res = nodeimage.run_node("docker", [f"docker://{busybox.name}", "--", "true"], ref=node_ref,
                             **flags)  # type: ignore[arg-type]  # fmt: skip
    err = res.stderr.decode()
    lines = err.strip().splitlines()
    assert res.returncode == 125, (what, err)
    assert len(lines) == 2 and message in lines[0] and lines[0].startswith("crashcart: "), err
    assert lines[1].startswith("crashcart: hint: ") and hint in lines[1], err
    assert "Traceback" not in err

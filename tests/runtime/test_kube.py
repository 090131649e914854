"""`kubectl crashcart` end to end: the plugin, a stand-in for kubectl and the API server
(tests/testbed/fakekube: it runs the node pod spec the plugin sends as the real node image
in Docker, refusing what it does not understand), real CRI pods of this host as targets,
the leak checker on the target. What did NOT run here: a real API server and kubelet."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ccrun
from tests.testbed import cri, nodeimage, runtimes
from tests.testbed import leakcheck as lc
from tests.testbed.cri import ContainerSpec, Kubelet, Pod, PodSpec
from tests.testbed.fakekube.fake import LABEL
from tests.testbed.require import missing, require_runtime
from tests.testbed.runtimes import DOCKER

pytestmark = pytest.mark.runtime

FAKE_BIN = Path(__file__).resolve().parents[1] / "testbed" / "fakekube"
NODE = socket.gethostname()


@pytest.fixture(scope="module")
def node_ref() -> str:
    require_runtime("docker", "containerd")
    try:
        return nodeimage.load("docker", nodeimage.ensure_node_image())
    except runtimes.TestbedError as e:
        missing(f"the node image cannot be built: {e}")


class Fake:
    """One stand-in API server: its state dir, the env the plugin runs with, its records."""

    def __init__(self, root: Path, node_ref: str) -> None:
        self.root, self.node_ref = root, node_ref
        (root / "pods").mkdir(parents=True)
        self.env = dict(ccrun.env(), FAKEKUBE_DIR=str(root), FAKEKUBE_PYTHON=sys.executable,
                        FAKEKUBE_NODE=NODE, PATH=f"{FAKE_BIN}:{os.environ['PATH']}")  # fmt: skip

    def register(self, pod: Pod, **status: Any) -> dict[str, Any]:
        """The pod object a kubelet would report for a real CRI pod of this host."""
        statuses = [{"name": c.name, "containerID": f"containerd://{c.id}", "ready": True,
                     "restartCount": c.attempt, "image": c.image,
                     "state": {"running": {"startedAt": "2026-12-03T00:00:00Z"}}}
                    for c in pod.containers.values()]  # fmt: skip
        obj = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.spec.uid},
               "spec": {"nodeName": NODE, "containers": [{"name": c.name, "image": c.image}
                                                         for c in pod.containers.values()]},
               "status": {"phase": "Running", "containerStatuses": statuses, **status}}  # fmt: skip
        return self.put(obj)

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        (self.root / "pods" / f"{meta['namespace']}_{meta['name']}.json").write_text(
            json.dumps(obj)
        )
        return obj

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "crashcart.kube", "--node-image", self.node_ref, *args]

    def run(
        self, *args: str, timeout: float = 120, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*args), env={**self.env, **env}, capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=timeout)  # fmt: skip

    def popen(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.argv(*args), env={**self.env, **env}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)  # fmt: skip

    def calls(self) -> list[list[str]]:
        path = self.root / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def verbs(self) -> list[str]:
        return [next(a for a in c if not a.startswith("-")) for c in self.calls()]

    def node_pods(self) -> list[str]:
        """Node pods the stand-in still has, and their docker containers."""
        left = [p.name for p in (self.root / "pods").glob("*_crashcart-*.json")]
        ps = subprocess.run([DOCKER, "ps", "-aq", "--filter", f"label={LABEL}={self.root}"],
                            capture_output=True, text=True, check=True)  # fmt: skip
        return left + ps.stdout.split()

    def wait_call(self, verb: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while verb not in self.verbs():
            assert time.monotonic() < end, f"no kubectl {verb} in {timeout}s: {self.verbs()}"
            time.sleep(0.1)


@pytest.fixture
def fake(tmp_path: Path, node_ref: str) -> Iterator[Fake]:
    f = Fake(tmp_path / "fakekube", node_ref)
    yield f
    left = f.node_pods()
    subprocess.run([DOCKER, "rm", "-f", *[x for x in left if not x.endswith(".json")]],
                   capture_output=True, check=False)  # fmt: skip
    assert not left, f"node pods left behind: {left}"


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode(errors="replace")


@pytest.fixture
def pod(kubelet: Kubelet) -> Pod:
    side = ContainerSpec("side", "busybox", command=["/bin/sleep", "3600"])
    spec = PodSpec(cri.pod_name("kube"), cri.pod_name("ns"), [ContainerSpec("app"), side])
    return kubelet.run_pod(spec)


def test_one_shot_command_exit_status(fake: Fake, pod: Pod, leakcheck: lc.LeakCheckFn) -> None:
    fake.register(pod)
    with leakcheck(pod["side"].container(pod)):
        res = fake.run("-n", pod.namespace, pod.name, "-c", "side", "--", "sh", "-c",
                       "echo id=$CRASHCART_TARGET_ID; cat /proc/1/cmdline; exit 3")  # fmt: skip
    assert res.returncode == 3, err(res)
    assert f"id={pod['side'].id}" in res.stdout.decode() and b"sleep" in res.stdout, res.stdout
    assert f"node pod {pod.namespace}/crashcart-" in err(res) and f"on node {NODE}" in err(res)
    assert fake.verbs()[:3] == ["get", "create", "get"] and fake.verbs()[-1] == "delete"
    exec_call = next(c for c in fake.calls() if "exec" in c)
    assert "-i" in exec_call and "-it" not in exec_call  # no terminal here: no -t
    assert exec_call[exec_call.index("--") + 1 :][:2] == [
        "crashcart",
        f"containerd://k8s.io/{pod['side'].id}",
    ]
    # The default container is the first one, said on stderr as kubectl says it.
    res = fake.run("-n", pod.namespace, pod.name, "--", "true")
    assert res.returncode == 0 and "defaulted container app out of: app, side" in err(res), err(res)


def test_interactive_session_through_a_pty(fake: Fake, pod: Pod, leakcheck: lc.LeakCheckFn) -> None:
    fake.register(pod)
    with leakcheck(pod["side"].container(pod)):
        s = _Pty(fake.argv("-n", pod.namespace, pod.name, "-c", "side"), fake.env)
        try:
            s.wait_prompt(timeout=90)
            s.send(b"echo READY-$((40+2)); tty\n")
            text = s.read_until(b"READY-42").decode(errors="replace")
            s.read_until(b"/dev/pts/")
            s.send(b"exit 4\n")
            status = s.wait(timeout=60)
        finally:
            s.kill()
    assert status == 4, s.output[-2000:]
    exec_call = next(c for c in fake.calls() if "exec" in c)
    assert "-it" in exec_call, exec_call  # terminals on both sides: kubectl exec -it
    assert "READY-42" in text


def test_ctrl_c_while_the_node_pod_starts(fake: Fake, pod: Pod) -> None:
    fake.register(pod)
    proc = fake.popen("-n", pod.namespace, pod.name, FAKEKUBE_NEVER_START="1")
    fake.wait_call("create")
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert fake.verbs()[-1] == "delete" and not fake.node_pods()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_session(
    fake: Fake, pod: Pod, leakcheck: lc.LeakCheckFn, sig: signal.Signals
) -> None:
    fake.register(pod)
    with leakcheck(pod["side"].container(pod)):
        proc = fake.popen("-n", pod.namespace, pod.name, "-c", "side", "--", "sh", "-c",
                          "echo STARTED; exec sleep 120")  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"STARTED\n"
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # Ctrl-C
        else:
            proc.send_signal(sig)  # a SIGTERM to the plugin alone (a CI job's timeout)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    assert fake.verbs()[-1] == "delete" and not fake.node_pods()


def test_a_node_pod_that_never_starts(fake: Fake, pod: Pod) -> None:
    fake.register(pod)
    res = fake.run("-n", pod.namespace, pod.name, "--timeout", "3", "--", "true",
                   FAKEKUBE_NEVER_START="1")  # fmt: skip
    assert res.returncode == 125, err(res)
    assert "did not start within 3s (Pending (ContainerCreating))" in err(res), err(res)
    assert "event: Warning FailedCreatePodSandBox: fakekube: told never to start" in err(res)
    assert "hint: load or push the node image" in err(res)
    assert fake.verbs()[-1] == "delete" and not fake.node_pods()
    # An image the node does not have: ErrImagePull ends the wait at once, with its event.
    res = fake.run("-n", pod.namespace, pod.name, "--node-image", "localhost/no-such:1",
                   "--", "true")  # fmt: skip
    assert res.returncode == 125 and "cannot run: Pending (ErrImagePull" in err(res), err(res)
    assert "event: Warning ErrImagePull: Failed to pull image" in err(res)
    assert not fake.node_pods()


def test_errors_are_one_line_and_125_and_start_nothing(fake: Fake, pod: Pod) -> None:
    fake.register(pod)
    cases = {
        ("-c", "nope"): f"pod {pod.namespace}/{pod.name} has no container 'nope'; its "
                        "containers: app, side",
        (): f'pods "{pod.name}" not found',  # in another namespace
    }  # fmt: skip
    for extra, message in cases.items():
        args = ["-n", pod.namespace] if extra else []
        res = fake.run(*args, pod.name, *extra, "--", "true")
        lines = err(res).strip().splitlines()
        assert res.returncode == 125 and message in lines[0], err(res)
        assert len(lines) <= 2 and "Traceback" not in err(res)
    dead = fake.register(pod)
    dead["status"]["containerStatuses"][0]["state"] = {"terminated": {
        "exitCode": 2, "reason": "Error", "finishedAt": "2026-12-03T00:00:00Z"}}  # fmt: skip
    fake.put(dead)
    res = fake.run("-n", pod.namespace, pod.name, "-c", "app", "--", "true")
    assert res.returncode == 125, err(res)
    assert "container app of pod" in err(res) and "exited with code 2 (Error)" in err(res)
    assert "create" not in fake.verbs() and not fake.node_pods()


def test_node_session_and_cleanup(fake: Fake, pod: Pod) -> None:
    res = fake.run("node", NODE, "--", "sh", "-c",
                   "test -d /target/var/lib/containerd && cat /proc/1/comm")  # fmt: skip
    assert res.returncode == 0, err(res)
    # The host's pid namespace: its PID 1 is the host's init.
    assert res.stdout.strip() == Path("/proc/1/comm").read_bytes().strip(), res.stdout
    # A plugin killed outright leaves its node pod: cleanup finds it by label.
    fake.register(pod)
    proc = fake.popen("-n", pod.namespace, pod.name, "-c", "side", "--", "sh", "-c",
                      "echo STARTED; exec sleep 120")  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"STARTED\n"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert len(fake.node_pods()) == 2  # the record and its container
    res = fake.run("cleanup")
    assert res.returncode == 0 and b"deleted" in res.stdout, err(res)
    assert not fake.node_pods()


class _Pty(ccrun.PtySession):
    def __init__(self, argv: list[str], env: dict[str, str]) -> None:  # noqa: D107
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                import fcntl
                import struct
                import termios

                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.output = b""
        self.status = None

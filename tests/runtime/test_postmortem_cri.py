"""Post-mortem sessions of Kubernetes containers on containerd's real CRI (tests/testbed/cri.py
plays the kubelet): a container that segfaulted, one that wrote a file then exited, one that
crash-looped (attempts 1 and 2 dead: attempt 2 is chosen). Nothing may leak (host mounts,
loop devices, crashcart processes) and the container's writable layer (its containerd
snapshot) has the same checksum before and after."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from tests import ccrun
from tests.runtime.test_postmortem import (
    COREDUMP_STORE,
    _build_crashy,
    nothing_left,
    real_systemd_coredump,
    record,
    stored_cores,
)
from tests.testbed import cri, runtimes
from tests.testbed.cri import ContainerSpec, Kubelet, Pod, PodSpec
from tests.testbed.require import missing, require_runtime

pytestmark = pytest.mark.runtime

CRI_STATUS = Path("/var/lib/containerd/io.containerd.grpc.v1.cri/containers")


@pytest.fixture(scope="module")
def crashy_k8s() -> Path:
    require_runtime("containerd")
    if importlib.util.find_spec("grpc") is None:
        missing("grpcio is not installed (the test extra: pip install '.[test]')")
    tar = _build_crashy()
    try:
        cri.check_host()
        cri.ensure_images()
        runtimes.run(["ctr", "-n", cri.K8S_NS, "images", "import", str(tar)], timeout=120)
    except runtimes.TestbedError as e:
        missing(f"containerd's CRI test bed is not ready: {e}")
    return tar.parent / "segv"


@pytest.fixture
def kubelet(crashy_k8s: Path, kubelet: Kubelet) -> Kubelet:
    """conftest's kubelet, with the segfault image imported first."""
    return kubelet


class CriDead:
    """A CRI container with no process, for nothing_left: its snapshot's upper directory."""

    def __init__(self, cid: str) -> None:
        self.id = cid

    def upper(self) -> Path:
        line = runtimes.run(["ctr", "-n", cri.K8S_NS, "snapshots", "mounts", "/x", self.id]).stdout
        return Path(line.split("upperdir=")[1].split(",")[0])


def run_to_end(k: Kubelet, pod: Pod, c: ContainerSpec, attempt: int = 0) -> CriDead:
    """CreateContainer + StartContainer as the kubelet does, then wait for the CRI to record
    the exit (its status checkpoint's FinishedAt)."""
    (cri.log_dir(pod.spec) / c.name).mkdir(exist_ok=True)
    term = cri.STATE / pod.spec.uid / f"{c.name}-{attempt}.termination-log"
    term.parent.mkdir(parents=True, exist_ok=True)
    term.touch()
    config = cri.container_config(pod.spec, c, attempt, term)
    cid = k.cri.create_container(pod.sandbox_id, config, cri.sandbox_config(pod.spec))
    k.cri.start_container(cid)
    for _ in range(200):
        status = json.loads((CRI_STATUS / cid / "status").read_text())
        if status.get("FinishedAt"):
            return CriDead(cid)
        time.sleep(0.05)
    raise AssertionError(f"CRI container {cid[:12]} did not exit")


def empty_pod(k: Kubelet, hint: str) -> Pod:
    return k.run_pod(PodSpec(cri.pod_name(hint), cri.pod_name("ns"), []))


def sh(script: str) -> ContainerSpec:
    return ContainerSpec("app", "crashy", command=["sh", "-c", script])


RECORD = "/run/crashcart/postmortem.json"
SHOW = f"cat {RECORD}; echo; cat /run/crashcart/log"


def test_segfaulted_pod_container(kubelet: Kubelet, crashy_k8s: Path) -> None:
    pod = empty_pod(kubelet, "pm-segv")
    d = run_to_end(kubelet, pod, ContainerSpec("app", "crashy"))
    with nothing_left(d):  # type: ignore[arg-type]
        script = f"{SHOW}; sha256sum /target/segv; hostname; ip -o link | wc -l; touch /target/x"
        proc = ccrun.run(pod.target("app"), "--", "sh", "-c", script + " || echo READ-ONLY")
        pty = ccrun.PtySession(pod.target("app"))
        try:
            pty.wait_prompt()
            pty.send(b"exit 3\n")
            status = pty.wait()
        finally:
            pty.kill()
        replay = ccrun.run("--replay", pod.target("app"), "--", "strace", "-f", "-e", "trace=none")
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    rec = record(out)
    assert (rec["runtime"], rec["id"], rec["name"]) == (
        "k8s", d.id, f"{pod.namespace}/{pod.name}/app"), rec  # fmt: skip
    assert rec["exit_code"] == 139 and rec["signal_name"] == "SIGSEGV", rec
    assert rec["status"] == "exited" and rec["oom_killed"] is False, rec
    assert rec["cmd"] == ["/segv"] and str(rec["image"]).endswith("crashy:latest"), rec
    assert rec["restart_count"] == 0 and rec["started_at"] and rec["finished_at"], rec
    pod_rec = rec["pod"]
    assert isinstance(pod_rec, dict) and pod_rec["uid"] == pod.spec.uid, rec
    assert rec["log_path"] == str(cri.log_dir(pod.spec) / "app" / "0.log"), rec
    # The CRI log line, its `F` tag gone: TIME stdout text.
    assert " stdout segv: about to crash\n" in out, out
    assert hashlib.sha256(crashy_k8s.read_bytes()).hexdigest() in out, out
    assert out.split()[-3] == pod.name and out.split()[-2] == "1" and "READ-ONLY" in out, out
    text = pty.output.decode(errors="replace")
    assert status == 3, text
    assert "exited with code 139 (128+11: killed by SIGSEGV)" in text, text
    assert "attempt 0 (restart count 0)" in text, text
    assert replay.returncode == 139, replay
    assert b"segv: about to crash" in replay.stdout, replay
    assert b"+++ killed by SIGSEGV +++" in replay.stderr, replay


def test_a_written_file_is_visible_read_only(kubelet: Kubelet) -> None:
    pod = empty_pod(kubelet, "pm-wrote")
    script = "mkdir -p /var/out && echo kept-42 > /var/out/f"
    d = run_to_end(kubelet, pod, sh(script))
    with nothing_left(d):  # type: ignore[arg-type]
        script = "cat /target/var/out/f; echo more >> /target/var/out/f; echo $?"
        proc = ccrun.run(pod.target(), "--", "sh", "-c", f"cat {RECORD}; {script}")
        by_id = ccrun.run(f"containerd://k8s.io/{d.id}", "--", "cat", "/target/var/out/f")
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    rec = record(out)
    assert rec["exit_code"] == 0 and rec["signal"] is None, rec
    kept, status = out.rsplit("}", 1)[1].split()
    assert kept == "kept-42" and status != "0", proc
    assert b"Read-only file system" in proc.stderr, proc.stderr
    assert ccrun.text(by_id) == "kept-42\n", by_id


def test_crash_looping_container_the_newest_attempt(kubelet: Kubelet) -> None:
    pod = empty_pod(kubelet, "pm-loop")
    # The kubelet restarts one spec; each attempt says which it is here, to tell them apart.
    first = run_to_end(kubelet, pod, sh("echo first-attempt; exit 3"), attempt=1)
    second = run_to_end(kubelet, pod, sh("echo second-attempt >&2; exit 4"), attempt=2)
    assert first.id != second.id
    with nothing_left(second):  # type: ignore[arg-type]
        proc = ccrun.run(pod.target("app"), "--", "sh", "-c", SHOW)
        whole_pod = ccrun.run(pod.target(), "--", "sh", "-c", "echo $CRASHCART_TARGET_ID")
        pty = ccrun.PtySession(pod.target("app"))
        try:
            pty.wait_prompt()
            pty.send(b"exit\n")
            pty.wait()
        finally:
            pty.kill()
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    rec = record(out)
    assert rec["id"] == second.id and rec["restart_count"] == 2 and rec["exit_code"] == 4, rec
    assert rec["pod"]["attempt"] == 2, rec  # type: ignore[index]
    assert " stderr second-attempt\n" in out and "first-attempt" not in out, out
    assert ccrun.text(whole_pod).strip() == second.id, whole_pod
    text = pty.output.decode(errors="replace")
    assert "attempt 2 (restart count 2), the most recent of the attempts kept (1 too)" in text, text


def test_dead_container_beside_a_running_one(kubelet: Kubelet) -> None:
    """A pod whose app container died while its sidecar runs: naming the app opens its
    post-mortem; the bare pod is the running sidecar's live session."""
    spec = PodSpec(cri.pod_name("pm-side"), cri.pod_name("ns"),
                   [ContainerSpec("side", "busybox", command=["/bin/sleep", "3600"])])  # fmt: skip
    pod = kubelet.run_pod(spec)
    d = run_to_end(kubelet, pod, sh("echo app-died; exit 2"))
    with nothing_left(d):  # type: ignore[arg-type]
        app = ccrun.run(pod.target("app"), "--", "sh", "-c", SHOW)
        side = ccrun.run(pod.target(), "--", "sh", "-c", "echo $CRASHCART_TARGET_ID; ps -o args")
    rec = record(ccrun.text(app))
    assert app.returncode == 0 and rec["id"] == d.id and rec["exit_code"] == 2, app
    assert " stdout app-died\n" in ccrun.text(app), app
    assert side.returncode == 0, side
    assert ccrun.text(side).split()[0] == pod["side"].id and "sleep 3600" in ccrun.text(side)


def test_systemd_coredump_core_of_a_pod_container(kubelet: Kubelet) -> None:
    """Debian's real systemd-coredump (see real_systemd_coredump) keeps the segfaulted pod
    container's core; the post-mortem finds it by time and the pod's hostname."""
    pod = empty_pod(kubelet, "pm-core")
    before = set(os.listdir(COREDUMP_STORE)) if COREDUMP_STORE.is_dir() else set()
    made: list[Path] = []
    try:
        with real_systemd_coredump():
            d = run_to_end(kubelet, pod, ContainerSpec("app", "crashy"))
            made = stored_cores(before)
        assert len(made) == 1, made
        assert os.getxattr(made[0], "user.coredump.hostname") == pod.name.encode()
        with nothing_left(d):  # type: ignore[arg-type]
            proc = ccrun.run(pod.target("app"), "--", "sh", "-c", "cat /run/crashcart/cores; "
                             f"ls /run/crashcart/{made[0].name}")  # fmt: skip
        out = ccrun.text(proc)
        assert proc.returncode == 0, (out, proc.stderr)
        assert out.startswith("cores (systemd-coredump, matched by time"), out
        assert f"zstd -dc /run/crashcart/{made[0].name} > /tmp/core" in out, out
    finally:
        for p in made:
            p.unlink(missing_ok=True)


def test_cri_status_checkpoint_fields() -> None:
    """The CRI's status file as containerd 1.6 writes it (fields inlined beside Version);
    Reason OOMKilled after a TaskOOM event. No runtime: the parsing alone."""
    from crashcart.postmortem import cri as pm_cri
    from crashcart.postmortem.record import Record

    r = Record("k8s", "d" * 64, "x")
    pm_cri.apply_status(r, {"Version": "v1", "Pid": 0, "CreatedAt": 1796306909798894445,
                            "StartedAt": 1796306909968650045, "FinishedAt": 1796306909968336194,
                            "ExitCode": 137, "Reason": "OOMKilled", "Message": ""})  # fmt: skip
    assert (r.status, r.exit_code, r.signal, r.oom_killed) == ("exited", 137, 9, True)
    assert r.started_at == r.finished_at == "2026-12-03T14:08:29Z"
    pm_cri.apply_status(r, {"CreatedAt": 1796306909798894445})
    assert (r.status, r.exit_code, r.oom_killed) == ("created", None, False)

"""Kubernetes pods on containerd's real CRI (tests/testbed/cri.py plays the kubelet):
k8s://NAMESPACE/POD[/CONTAINER] sessions, sideload and the runtime's exec, container
choice, restarts, `ps`, and a name shared with a Docker container. Leak checker throughout;
every pod is stopped and removed however the test ends."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests import ccrun
from tests.testbed import cri
from tests.testbed import leakcheck as lc
from tests.testbed.cri import ContainerSpec, Kubelet, Pod, PodSpec
from tests.testbed.runtimes import ContainerFactory

pytestmark = pytest.mark.runtime

SIDECAR = ContainerSpec("side", "busybox", command=["/bin/sleep", "3600"])


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return ccrun.run(*args, timeout=90)


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")


def ps_json() -> list[dict[str, object]]:
    res = run("ps", "--json")
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, object]] = json.loads(res.stdout)
    return rows


def session_id(target: str) -> str:
    """The container ID a session on ``target`` reached (CRASHCART_TARGET_ID inside)."""
    res = run(target, "--", "bash", "-c", "echo $CRASHCART_TARGET_ID")
    assert res.returncode == 0, out(res)
    return res.stdout.decode().strip()


def test_one_container_distroless_pod(kubelet: Kubelet, leakcheck: lc.LeakCheckFn) -> None:
    pod = kubelet.run_pod(PodSpec(cri.pod_name("one"), cri.pod_name("ns"), [ContainerSpec("app")]))
    app = pod["app"]
    with leakcheck(app.container(pod)):
        ss = run(pod.target(), "--", "ss", "-tlnp")
        gdb = run(pod.target(), "--", "gdb", "-p", "1", "-batch", "-ex", "bt")
        status = run(pod.target(), "--", "bash", "-c", "exit 7")
        missing_cmd = run(pod.target(), "--", "no-such-tool")
        bare = run(pod.name, "--", "bash", "-c", "echo $CRASHCART_TARGET_ID")
        by_pid = run(str(app.pid), "--", "bash", "-c", "echo $CRASHCART_RUNTIME $CRASHCART_TARGET")
    assert ss.returncode == 0, out(ss)
    assert ":8080" in out(ss) and '("server",pid=1,' in out(ss)
    assert gdb.returncode == 0, out(gdb)
    assert "#0 " in out(gdb)
    assert (status.returncode, missing_cmd.returncode) == (7, 127)
    assert bare.returncode == 0 and bare.stdout.decode().strip() == app.id, out(bare)
    # A host PID is named after its pod container (its cgroup names the container's ID).
    assert by_pid.returncode == 0 and by_pid.stdout.decode().split() == ["k8s", str(app.pid)]


def test_ps_names_pod_containers(kubelet: Kubelet) -> None:
    pod = kubelet.run_pod(PodSpec(cri.pod_name("ps"), containers=[ContainerSpec("app")]))
    table = run("ps")
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in out(table).splitlines() if pod.name in ln)
    assert line.split()[:3] == ["k8s", "(containerd)", f"default/{pod.name}/app"]
    row = next(r for r in ps_json() if r["id"] == pod["app"].id)
    assert {k: row[k] for k in ("runtime", "namespace", "pod", "pod_uid", "container")} == {
        "runtime": "k8s", "namespace": "default", "pod": pod.name, "pod_uid": pod.spec.uid,
        "container": "app",
    }  # fmt: skip
    assert (row["attempt"], row["cri"], row["target"]) == (0, "containerd", pod.target("app"))
    # The pause sandbox is never a pod target, nor reached by its ID.
    assert not [r for r in ps_json() if r["runtime"] == "k8s" and r["pid"] == pod.sandbox_pid]
    pause = run(pod.sandbox_id, "--", "true")
    assert pause.returncode == 125
    assert f"sandbox (pause) container of pod default/{pod.name}, never a target" in out(pause)


def _two(kubelet: Kubelet, hint: str, **kw: object) -> Pod:
    spec = PodSpec(cri.pod_name(hint), cri.pod_name("ns"), [ContainerSpec("app"), SIDECAR])
    for key, value in kw.items():
        setattr(spec, key, value)
    return kubelet.run_pod(spec)


def _procs(target: str) -> str:
    res = run(target, "--", "ps", "-eo", "pid,args")
    assert res.returncode == 0, out(res)
    return res.stdout.decode()


def test_two_container_pod(kubelet: Kubelet, leakcheck: lc.LeakCheckFn) -> None:
    pod = _two(kubelet, "two")
    with leakcheck(pod["app"].container(pod)), leakcheck(pod["side"].container(pod)):
        undecided = run(pod.target(), "--", "true")
        bare = run(pod.name, "--", "true")
        app, side = _procs(pod.target("app")), _procs(pod.target("side"))
    assert undecided.returncode == 125
    assert f"pod {pod.namespace}/{pod.name} has 2 running containers: app, side" in out(undecided)
    assert f"k8s://{pod.namespace}/{pod.name}/app" in out(undecided)  # how to pick one
    assert bare.returncode == 125 and "matches 2 containers" in out(bare), out(bare)
    # Each container has its own pid namespace: its own processes only.
    assert "/server" in app and "sleep" not in app
    assert "sleep 3600" in side and "/server" not in side


def test_shared_process_namespace_and_default_container(
    kubelet: Kubelet, leakcheck: lc.LeakCheckFn
) -> None:
    notes = {"kubectl.kubernetes.io/default-container": "side"}
    pod = _two(kubelet, "share", share_process_namespace=True, annotations=notes)
    with leakcheck(pod["app"].container(pod)):
        app = _procs(pod.target("app"))
        chosen = session_id(pod.target())
    # One pid namespace for the pod: the pause process is its PID 1, both containers in it.
    for name in ("/pause", "/server", "sleep 3600"):
        assert name in app
    assert chosen == pod["side"].id


def test_non_root_read_only_no_capabilities(kubelet: Kubelet, leakcheck: lc.LeakCheckFn) -> None:
    locked = ContainerSpec("app", run_as_user=65532, read_only=True, drop_all=True)
    pod = kubelet.run_pod(PodSpec(cri.pod_name("locked"), cri.pod_name("ns"), [locked]))
    status = Path(f"/proc/{pod['app'].pid}/status").read_text()
    assert "\nUid:\t65532\t" in status and "\nCapBnd:\t0000000000000000" in status
    script = "id -u; ps -o user= -p 1; timeout -s INT 1 strace -p 1; echo strace-done"
    with leakcheck(pod["app"].container(pod)):
        res = run(pod.target(), "--", "bash", "-c", script)
    text = out(res)
    assert res.returncode == 0, text
    assert "Process 1 attached" in text and "strace-done" in text
    assert "65532" in text


def test_restarted_container_the_live_attempt_is_chosen(
    kubelet: Kubelet, leakcheck: lc.LeakCheckFn
) -> None:
    spec = PodSpec(cri.pod_name("restart"), containers=[ContainerSpec("app")])
    pod = kubelet.run_pod(spec)
    first = pod["app"]
    # Attempt 0 exits and the kubelet starts attempt 1, keeping the dead one for a while...
    kubelet.stop_container(pod, "app", remove=False)
    second = kubelet.start_container(pod, spec.containers[0], attempt=1)
    assert second.id != first.id
    with leakcheck(second.container(pod)):
        while_kept = session_id(pod.target())
        kubelet.cri.remove_container(first.id)  # ... and removes it later.
        after_removal = session_id(pod.target("app"))
    assert while_kept == after_removal == second.id
    row = next(r for r in ps_json() if r["id"] == second.id)
    assert row["attempt"] == 1


def test_sideload_then_ctr_task_exec(kubelet: Kubelet, leakcheck: lc.LeakCheckFn) -> None:
    pod = kubelet.run_pod(PodSpec(cri.pod_name("side"), cri.pod_name("ns"), [ContainerSpec("app")]))
    app = pod["app"]
    c = app.container(pod)
    exec_argv = ["ctr", "-n", "k8s.io", "task", "exec", "--exec-id", f"t{app.pid}", app.id]
    with leakcheck(c):
        m = run("-m", pod.target())
        assert m.returncode == 0, out(m)
        assert "ctr -n k8s.io task exec --exec-id crashcart-" in out(m)
        res = subprocess.run([*exec_argv, "/dev/crashcart/bin/bash", "-c", "ps; strace -V"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        u = run("-u", pod.target())
        e = run("-e", pod.target(), "--", "strace", "-V")
        m2 = run("-m", pod.target("app"))
        st = run("status", "--json")
        clean = run("cleanup")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "strace -- version" in res.stdout and " server\n" in res.stdout
    assert u.returncode == 0, out(u)
    assert e.returncode == 0 and "strace -- version" in out(e), out(e)
    assert m2.returncode == 0, out(m2)
    mounts = json.loads(st.stdout)["mounts"]
    assert any(r["target"] == pod.target("app") and r["runtime"] == "k8s" for r in mounts), mounts
    assert clean.returncode == 0, out(clean)
    assert " /dev/crashcart " not in Path(f"/proc/{app.pid}/mountinfo").read_text()


def test_pod_named_like_a_docker_container(
    kubelet: Kubelet, start_container: ContainerFactory, leakcheck: lc.LeakCheckFn
) -> None:
    docker = start_container("docker", "distroless")
    name = docker.name
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name  # a DNS label
    pod = kubelet.run_pod(PodSpec(name, name, [ContainerSpec("app")]))  # namespace too
    rows = ps_json()
    assert [r["runtime"] for r in rows if r["name"] == name] == ["docker"]
    assert [r["runtime"] for r in rows if r["name"] == f"{name}/{name}/app"] == ["k8s"]
    with leakcheck(pod["app"].container(pod)), leakcheck(docker):
        both = run(name, "--", "true")
        to_docker = session_id(f"docker://{name}")
        to_pod = session_id(f"k8s://{name}/{name}")
    assert both.returncode == 125, out(both)
    assert f"docker://{docker.id}" in out(both) and f"k8s://{name}/{name}/app" in out(both)
    assert (to_docker, to_pod) == (docker.id, pod["app"].id)

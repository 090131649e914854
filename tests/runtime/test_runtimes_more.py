"""Target lookup on real runtimes: exact names, near matches, containers that exist but do
not run; and the runtimes beyond Docker/Podman/containerd/runc (LXC, systemd-nspawn,
rootless Podman, Podman pods, crun), attached for real under the leak checker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import ccrun
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.require import require_runtime
from tests.testbed.runtimes import DOCKER, Container, ContainerFactory


def crashcart(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return ccrun.run(*args, timeout=timeout)


def err(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stderr.decode(errors="replace")


@pytest.fixture
def made() -> Iterator[list[tuple[str, str]]]:
    """(runtime, name) of containers a test makes by hand; removed at teardown."""
    out: list[tuple[str, str]] = []
    yield out
    for rt, name in out:
        runtimes.remove_by_name(rt, name)


def test_a_name_prefix_never_picks_a_container(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """The bug: with task X-ctrd and containers X-thin, X-bb running, `crashcart X -- true`
    attached to the containerd task. A name (or an ID that is a name) matches exactly."""
    thin = start_container("docker", "busybox")
    bb = start_container("docker", "distroless")
    ctrd = start_container("containerd", "busybox")
    common = os.path.commonprefix([thin.name, bb.name, ctrd.name])
    assert len(common) > len("cc-test-")
    with leakcheck(ctrd), leakcheck(thin):
        proc = crashcart(common, "--", "true")
        exact = crashcart(ctrd.name, "--", "cat", "/proc/1/cmdline")
    assert proc.returncode == 125, err(proc)
    assert f"no container matches {common!r}" in err(proc)
    hint = err(proc).split("hint: ", 1)[1]
    for c in (thin, bb, ctrd):
        assert f"{c.name} ({c.runtime})" in hint, hint
    assert exact.returncode == 0, err(exact)
    assert exact.stdout.startswith(b"/bin/busybox"), exact.stdout
    # A hex ID's prefix still works, as with docker itself.
    assert crashcart(thin.id[:10], "--", "true").returncode == 0


def test_an_id_prefix_of_digits_is_not_taken_for_a_pid(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """A hex ID can start with digits (CI once drew a Docker ID whose first ten were): a
    bare number larger than any PID, or one no process has, is a container ID prefix."""
    require_runtime("containerd")
    free = [str(n) for n in range(3999999, 3000000, -1) if not os.path.exists(f"/proc/{n}")]
    # Its first 7 digits a PID no process has; its first 10 more than any PID can be.
    ident = free[0] + "0" * 6 + os.urandom(26).hex()[:51]
    c = start_container("containerd", "busybox", name=ident)
    with leakcheck(c):
        for prefix in (ident[:10], ident[:7]):
            proc = crashcart(prefix, "--", "cat", "/proc/1/cmdline")
            assert proc.returncode == 0 and b"httpd" in proc.stdout, (prefix, err(proc))
    # A number no process has and no ID starts with: the PID error, not a search listing.
    proc = crashcart(free[1], "--", "true")
    assert proc.returncode == 125 and f"no process with PID {free[1]}" in err(proc), err(proc)
    # pid:// is a PID, always.
    proc = crashcart(f"pid://{ident[:10]}", "--", "true")
    assert proc.returncode == 125 and "no process with PID" in err(proc), err(proc)


def test_a_hex_prefix_of_two_containers_lists_both(
    start_container: ContainerFactory, toolbox: str
) -> None:
    a = start_container("docker", "busybox")
    for _ in range(40):  # two IDs sharing a first hex digit: a handful of tries at most
        b = start_container("docker", "busybox")
        if b.id[0] == a.id[0]:
            break
        start_container.remove(b)
    else:
        pytest.fail("no two docker IDs with the same first digit in 40 tries")
    proc = crashcart(f"docker://{a.id[0]}", "--", "true")
    assert proc.returncode == 125 and "matches 2 containers" in err(proc), err(proc)
    assert a.name in err(proc) and b.name in err(proc)


def _docker(*args: str) -> str:
    return runtimes.run([DOCKER, *args]).stdout.strip()


_DEATH = ["sh", "-c", "test -x /target/bin/busybox && cat /run/crashcart/postmortem.json"]


def _death(*target: str) -> dict[str, Any]:
    """The post-mortem session's death record, read from inside the session (which also
    checks the container's files are at /target)."""
    proc = crashcart(*target, "--", *_DEATH)
    assert proc.returncode == 0, (target, err(proc))
    record: dict[str, Any] = json.loads(proc.stdout)
    return record


def test_containers_that_do_not_run_say_so(
    start_container: ContainerFactory, made: list[tuple[str, str]], toolbox: str
) -> None:
    """Stopped (exit code, when), created: a post-mortem session with the runtime's record
    (it used to be "no running container matches"). Paused: the session attaches (outside
    its freezer cgroup) and says so."""
    img = runtimes.image_ref("docker", "busybox")
    runtimes.ensure_image("docker", "busybox")
    exited, created = runtimes.new_name("exited"), runtimes.new_name("created")
    made += [("docker", exited), ("docker", created)]
    runtimes.run([DOCKER, "run", "--name", exited, "--network", "none", img, "sh", "-c", "exit 3"],
                 check=False)  # fmt: skip
    _docker("create", "--name", created, "--network", "none", img)
    paused = start_container("docker", "busybox")
    _docker("pause", paused.name)
    try:
        death = _death(exited)
        assert (death["name"], death["exit_code"], death["signal"]) == (exited, 3, None), death
        assert str(death["finished_at"]).startswith("20"), death
        death = _death(created)
        assert (death["name"], death["status"], death["exit_code"]) == (created, "created", None)
        session = crashcart(paused.name, "--", "true")
        assert session.returncode == 0 and "is paused" in err(session), err(session)
        ps = ccrun.text(crashcart("ps"))
        row = next(line for line in ps.splitlines() if paused.name in line)
        assert " paused " in row and ps.splitlines()[0].split()[4] == "STATE", ps
    finally:
        _docker("unpause", paused.name)


def test_podman_stopped_and_containerd_stopped_tasks(
    start_container: ContainerFactory, made: list[tuple[str, str]], toolbox: str
) -> None:
    """Podman's stopped containers used to get "no running container matches"; now they,
    like a containerd task whose process exited, get a post-mortem session."""
    require_runtime("podman", "containerd")
    runtimes.ensure_image("podman", "busybox")
    name = runtimes.new_name("pexit")
    made.append(("podman", name))
    ref = runtimes.image_ref("podman", "busybox")
    runtimes.run(["podman", "run", "--name", name, "--network", "none", ref, "sh", "-c", "exit 7"],
                 check=False)  # fmt: skip
    death = _death(name)
    assert (death["runtime"], death["name"], death["exit_code"]) == ("podman", name, 7), death
    created = runtimes.new_name("pcreated")
    made.append(("podman", created))
    runtimes.run(["podman", "create", "--name", created, "--network", "none", ref, "true"])
    death = _death(f"podman://{created}")
    assert (death["name"], death["status"], death["exit_code"]) == (created, "created", None)
    paused = start_container("podman", "busybox")
    runtimes.run(["podman", "pause", paused.name])
    try:  # podman pause freezes the cgroup: a session attaches outside it and says so
        proc = crashcart(paused.name, "--", "true")
        assert proc.returncode == 0 and "is paused" in err(proc), err(proc)
    finally:
        runtimes.run(["podman", "unpause", paused.name])
    # A containerd task whose process exited stays until `ctr task rm`: stopped, not missing.
    task = start_container("containerd", "busybox")
    runtimes.run(runtimes.ctr("tasks", "kill", "-s", "SIGKILL", task.id))
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{task.pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    death = _death(f"containerd://{task.namespace}/{task.id}")
    assert (death["id"], death["exit_code"], death["signal"]) == (task.id, 137, 9), death


def test_pid_in_an_unknown_container(toolbox: str, leakcheck: lc.LeakCheckFn) -> None:
    """A PID whose cgroup names a 64-hex ID no runtime knows is "a container crashcart does
    not know", not a host process: a runc container in a CRI-O-shaped cgroup, under a runc
    root crashcart does not read."""
    require_runtime("runc")
    hexid = os.urandom(32).hex()
    name = runtimes.new_name("unknown")
    wd = runtimes.workdir(name)
    try:
        c = _runc_own_root(name, wd, f"/crio-{hexid}.scope")
        with leakcheck(c):
            proc = crashcart("--debug", f"pid://{c.pid}", "--", "true")
        assert proc.returncode == 0, err(proc)
        assert f"in a container crashcart does not know (cgroup names {hexid[:12]})" in err(proc)
    finally:
        for args in (["kill", name, "KILL"], ["delete", "-f", name]):
            runtimes.run(["runc", "--root", str(wd / "root"), *args], check=False)
        shutil.rmtree(wd, ignore_errors=True)


def _runc_own_root(name: str, wd: Path, cgroup: str) -> Container:
    built = runtimes.ensure_image("runc", "busybox")
    wd.mkdir(parents=True)
    rootfs = wd / "rootfs"
    shutil.copytree(built.rootfs, rootfs, symlinks=True)
    runtimes.run(["runc", "spec", "--bundle", str(wd)])
    spec = json.loads((wd / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["sleep", "1000"]
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["linux"]["cgroupsPath"] = cgroup
    (wd / "config.json").write_text(json.dumps(spec))
    with open(wd / "log", "ab") as log:
        subprocess.run(["runc", "--root", str(wd / "root"), "run", "-d", "--pid-file",
                        str(wd / "pid"), "--bundle", str(wd), name], stdin=subprocess.DEVNULL,
                       stdout=log, stderr=log, check=True, timeout=30)  # fmt: skip
    return Container("runc", name, name, int((wd / "pid").read_text()), "busybox")


# ---------------------------------------------------------------------------------------------
# System containers: LXC and systemd-nspawn (busybox init as PID 1, three services)


@pytest.fixture(scope="module", params=["lxc", "machine"])
def system(request: pytest.FixtureRequest) -> Iterator[Container]:
    from tests.testbed import system_containers as sc
    from tests.testbed.require import missing

    if reason := sc.unavailable_reason(request.param):
        missing(f"{request.param}: {reason}")
    with sc.system_container(request.param, "sys") as c:
        yield c


def _mounted(c: Container) -> bool:
    return " /dev/crashcart " in Path(f"/proc/{c.pid}/mountinfo").read_text()


def test_system_container_session(
    system: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """The session sees init as PID 1 and its services, nothing of the host; a command's
    status comes back; the network is the container's (its own 127.0.0.1:8080)."""
    c = system
    with leakcheck(c):
        ps = crashcart(f"{c.runtime}://{c.name}", "--", "ps", "-eo", "pid=,args=")
        bare = crashcart(c.name, "--", "sh", "-c", "exit 5")
        web = crashcart(c.name, "--", "/target/bin/busybox", "wget", "-qO-",
                        "http://127.0.0.1:8080/")  # fmt: skip
        listing = crashcart("ps")
    assert ps.returncode == 0, err(ps)
    rows = dict(line.split(None, 1) for line in ccrun.text(ps).splitlines() if line.strip())
    assert rows["1"].endswith("init"), rows
    services = [a for a in rows.values() if a.startswith(("/bin/httpd", "/bin/sleep"))]
    assert len(services) == 3, rows
    assert len(rows) == 6, rows  # init, 3 services, the session's supervisor and ps
    assert bare.returncode == 5, err(bare)
    assert web.returncode == 0 and b"system container" in web.stdout, err(web)
    row = next(line.split() for line in ccrun.text(listing).splitlines() if c.name in line)
    assert row[0] == c.runtime and "running" in row and str(c.pid) in row, row


def test_system_container_sideload(
    system: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """-m, status, -e through the runtime's own exec (lxc-attach; nsenter for nspawn
    without machined), -u."""
    c = system
    ref = f"{c.runtime}://{c.name}"
    with leakcheck(c):
        m = crashcart("-m", ref)
        assert m.returncode == 0, err(m)
        assert _mounted(c)
        status = ccrun.text(crashcart("status"))
        e = crashcart("-e", ref, "--", "sh", "-c", "strace -V >/dev/null && exit 9")
        u = crashcart("-u", ref)
    assert f"{c.runtime} {c.name}: /dev/crashcart mounted" in status, status
    assert e.returncode == 9, err(e)
    assert u.returncode == 0, err(u)
    assert not _mounted(c)


# ---------------------------------------------------------------------------------------------
# crun (needs hugetlb off the v2 tree: scripts/runtimes install does it)


@pytest.fixture
def crun_container() -> Iterator[Container]:
    from tests.testbed import system_containers as sc
    from tests.testbed.require import missing

    if reason := sc.crun_unavailable_reason():
        missing(f"crun: {reason}")
    with sc.system_container("crun", "crun") as c:
        yield c


def test_crun_session_and_sideload(
    crun_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = crun_container
    with leakcheck(c):
        ps = crashcart(f"crun://{c.name}", "--", "ps", "-eo", "pid=,args=")
        bare = crashcart(c.name, "--", "sh", "-c", "exit 4")
        e = crashcart("-e", f"crun://{c.name}", "--", "sh", "-c", "strace -V >/dev/null && exit 9")
        listing = ccrun.text(crashcart("ps"))
    assert ps.returncode == 0, err(ps)
    assert ccrun.text(ps).split("\n", 1)[0].split(None, 1) == [
        "1",
        "/bin/busybox httpd -f -p 8080 -h /www",
    ]
    assert bare.returncode == 4, err(bare)
    assert e.returncode == 9, err(e)
    assert not _mounted(c)
    row = next(line.split() for line in listing.splitlines() if c.name in line)
    assert row[0] == "crun" and "running" in row, row


# ---------------------------------------------------------------------------------------------
# Podman pods and rootless Podman


def test_podman_pod_members_and_the_pod_itself(leakcheck: lc.LeakCheckFn, toolbox: str) -> None:
    from tests.testbed import podman_more as pm

    require_runtime("podman")
    with pm.pod("pod", members=2) as (pod, apps):
        app = apps[0]
        infra = pm.infra_name(pod)
        with leakcheck(app):
            two = crashcart(f"podman://{pod}/{app.name}", "--", "cat", "/proc/1/cmdline")
            bare = crashcart(app.name, "--", "true")
            whole = crashcart(pod, "--", "true")
            by_infra = crashcart(infra, "--", "true")
            wrong_pod = crashcart(f"podman://{pod}x/{app.name}", "--", "true")
            listing = ccrun.text(crashcart("ps"))
    # The pod's containers share its ipc/net/uts: PID 1 of its own pid namespace is its own.
    assert two.returncode == 0 and two.stdout.startswith(b"sleep\x00100000"), err(two)
    assert bare.returncode == 0, err(bare)
    assert whole.returncode == 125 and f"{pod!r} is a podman pod" in err(whole), err(whole)
    for a in apps:
        assert f"podman://{pod}/{a.name}" in err(whole)
    assert by_infra.returncode == 125 and "is the infra container of pod" in err(by_infra)
    assert wrong_pod.returncode == 125 and "no container matches" in err(wrong_pod)
    rows = [line for line in listing.splitlines() if f"podman ({pod})" in line]
    assert sorted(r.split()[2] for r in rows) == sorted(a.name for a in apps), listing
    assert infra[:12] not in listing


@pytest.fixture(scope="module")
def rootless() -> Iterator[Container]:
    from tests.testbed import podman_more as pm

    require_runtime("podman")
    with pm.rootless_container("rl") as c:
        yield c


def test_rootless_podman_by_name_id_and_pid(
    rootless: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """Found in its user's store (/run/user/UID/containers, ~/.local/share/containers):
    by name, ID prefix, podman://, and by PID named after the container."""
    c = rootless
    with leakcheck(c):
        results = {t: crashcart(t, "--", "sh", "-c", "echo $CRASHCART_TARGET_NAME; exit 3")
                   for t in (c.name, c.id[:12], f"podman://{c.name}", str(c.pid))}  # fmt: skip
        listing = ccrun.text(crashcart("ps"))
    for t, proc in results.items():
        assert proc.returncode == 3, (t, err(proc))
        assert ccrun.text(proc).strip() == c.name, (t, proc.stdout)
    row = next(line for line in listing.splitlines() if c.name in line)
    assert row.startswith("podman (uid ") and " running " in row, row


def test_rootless_podman_sideload(
    rootless: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """-m into a container with its own user namespace, the user's own `podman exec`, -u."""
    c = rootless
    with leakcheck(c):
        m = crashcart("-m", c.name)
        assert m.returncode == 0, err(m)
        assert _mounted(c)
        assert b"setpriv" in m.stdout  # the usage hint runs podman as the container's user
        e = crashcart("-e", c.name, "--", "sh", "-c", "strace -V >/dev/null && exit 9")
        u = crashcart("-u", c.name)
    assert e.returncode == 9, err(e)
    assert u.returncode == 0, err(u)
    assert not _mounted(c)

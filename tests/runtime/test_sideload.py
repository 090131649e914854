"""Sideload mode on real containers: -m, the runtime's own exec, -u, -e, status, cleanup,
hostile mount points, kills at each phase, and concurrent runs. Leak checker throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests import ccrun
from tests.runtime.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.runtimes import Container, ContainerFactory

TOOLS = "ps; ls /; strace -V; gdb --version; tcpdump --version"


def mounted(c: Container) -> bool:
    return " /dev/crashcart " in Path(f"/proc/{c.pid}/mountinfo").read_text()


def dev_listing(c: Container) -> dict[str, lc.FileInfo]:
    return lc.list_tree(Path(f"/proc/{c.pid}/root/dev"))


def runtime_exec(c: Container, *argv: str) -> subprocess.CompletedProcess[str]:
    return runtimes.exec_in(c, list(argv), timeout=60)


@pytest.fixture(params=[(rt, img) for rt in runtimes.RUNTIMES for img in ("distroless", "musl")],
                ids=lambda p: f"{p[0]}-{p[1]}")  # fmt: skip
def tooless(start_container: ContainerFactory, request: pytest.FixtureRequest) -> Container:
    """Containers with no usable tools of their own: distroless and musl, every runtime."""
    runtime, image = request.param
    return start_container(runtime, image)


def test_mount_then_the_runtimes_own_exec_runs_the_tools(
    tooless: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = tooless
    with leakcheck(c):
        m = ccrun.run("-m", target(c))
        assert m.returncode == 0, m.stderr
        assert mounted(c)
        assert b"/dev/crashcart/shell" in m.stdout  # how to use it, for this runtime
        res = runtime_exec(c, "/dev/crashcart/bin/bash", "-c", TOOLS)
        u = ccrun.run("-u", target(c))
        assert u.returncode == 0, u.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    assert "strace -- version" in res.stdout and "GNU gdb" in res.stdout
    assert "tcpdump version" in res.stdout + res.stderr
    assert not mounted(c)


def test_exec_mode_returns_the_commands_status(
    tooless: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = tooless
    with leakcheck(c):
        e = ccrun.run("-e", target(c), "--", "sh", "-c", "strace -V >/dev/null && exit 9")
    assert e.returncode == 9, e.stderr
    assert not mounted(c)


def test_second_mount_is_a_noop_and_unmount_is_idempotent(
    distroless_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = distroless_container
    with leakcheck(c):
        assert ccrun.run("-m", target(c)).returncode == 0
        again = ccrun.run("-m", target(c))
        assert again.returncode == 0 and b"already mounted" in again.stdout
        assert Path(f"/proc/{c.pid}/mountinfo").read_text().count(" /dev/crashcart ") == 1
        assert ccrun.run("-u", target(c)).returncode == 0
        twice = ccrun.run("-u", target(c))
        assert twice.returncode == 0 and b"not mounted" in twice.stderr


def test_exec_keeps_a_mount_made_before(
    busybox_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = busybox_container
    with leakcheck(c):
        assert ccrun.run("-m", target(c)).returncode == 0
        assert ccrun.run("-e", target(c), "--", "true").returncode == 0
        assert mounted(c)  # -e did not mount it, so -e does not remove it
        assert ccrun.run("-u", target(c)).returncode == 0


@pytest.mark.parametrize("link", ["/etc", "/proc/1/root", "../.."])
def test_symlink_mount_point_is_refused(
    start_container: ContainerFactory, link: str, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = start_container("docker", "busybox")
    made = runtime_exec(c, "ln", "-s", link, "/dev/crashcart")
    assert made.returncode == 0, made.stderr
    etc = lc.list_tree(Path(f"/proc/{c.pid}/root/etc"))
    with leakcheck(c):
        m = ccrun.run("-m", target(c))
    assert m.returncode == 125
    assert b"is a symlink" in m.stderr and link.encode() in m.stderr
    assert lc.list_tree(Path(f"/proc/{c.pid}/root/etc")) == etc
    assert os.readlink(f"/proc/{c.pid}/root/dev/crashcart") == link
    assert not mounted(c)


def test_regular_file_and_nonempty_dir_are_refused(
    start_container: ContainerFactory, toolbox: str
) -> None:
    c = start_container("podman", "busybox")
    assert runtime_exec(c, "sh", "-c", "echo hi > /dev/crashcart").returncode == 0
    f = ccrun.run("-m", target(c))
    assert f.returncode == 125 and b"not a directory" in f.stderr
    assert runtime_exec(c, "sh", "-c", "rm /dev/crashcart; mkdir /dev/crashcart; "
                        "touch /dev/crashcart/x").returncode == 0  # fmt: skip
    d = ccrun.run("-m", target(c))
    assert d.returncode == 125 and b"not empty" in d.stderr
    assert runtime_exec(c, "ls", "/dev/crashcart").stdout.split() == ["x"]


def test_unmount_refuses_while_in_use_and_force_detaches(
    busybox_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = busybox_container
    with leakcheck(c):
        assert ccrun.run("-m", target(c)).returncode == 0
        user = subprocess.Popen(
            runtimes_exec_argv(c, ["/dev/crashcart/bin/bash", "-c", "sleep 30"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: busy_users(c) != "")  # sleep, exec'd by bash -c, runs from it
            refused = ccrun.run("-u", target(c))
            assert refused.returncode == 125 and b"in use by" in refused.stderr
            assert mounted(c)
            forced = ccrun.run("-u", "--force", target(c))
            assert forced.returncode == 0 and b"lazily" in forced.stderr
            assert not mounted(c)
        finally:
            user.kill()
            user.wait()
            runtime_exec(c, "sh", "-c", "kill $(pidof sleep) 2>/dev/null; true")


def runtimes_exec_argv(c: Container, argv: list[str]) -> list[str]:
    if c.runtime == "docker":
        return [runtimes.DOCKER, "exec", c.name, *argv]
    if c.runtime == "podman":
        return ["podman", "exec", c.name, *argv]
    if c.runtime == "containerd":
        return runtimes.ctr("tasks", "exec", "--exec-id", f"u{os.getpid()}", c.id, *argv)
    return ["runc", "exec", c.id, *argv]


def busy_users(c: Container) -> str:
    out = []
    for p in lc.pidns_procs(c.pid):
        try:
            if "/dev/crashcart" in os.readlink(f"/proc/{p.pid}/exe"):
                out.append(str(p))
        except OSError:
            continue
    return " ".join(out)


def wait_for(cond: object, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met")


@pytest.mark.parametrize("phase", ["mount:after-record", "mount:after-mkdir", "mount:after-attach"])
def test_killed_mount_is_found_by_status_and_removed_by_cleanup(
    start_container: ContainerFactory, phase: str, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = start_container("docker", "distroless")
    with leakcheck(c):
        env = ccrun.env() | {"CRASHCART_FAULT": phase}
        killed = subprocess.run(ccrun.argv("-m", target(c)), env=env, cwd=ccrun.REPO,
                                capture_output=True, timeout=60)  # fmt: skip
        assert killed.returncode == -signal.SIGKILL
        st = ccrun.run("status", "--json")
        assert st.returncode == 0, st.stderr
        if phase == "mount:after-attach":
            assert mounted(c) and c.name.encode() in st.stdout
        clean = ccrun.run("cleanup")
        assert clean.returncode == 0, clean.stderr
        assert not mounted(c)
        assert not Path(f"/proc/{c.pid}/root/dev/crashcart").exists()
    assert b'"mounts": []' in ccrun.run("status", "--json").stdout


def test_concurrent_mounts_end_consistent(
    distroless_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = distroless_container
    with leakcheck(c):
        procs = [subprocess.Popen(ccrun.argv("-m", target(c)), env=ccrun.env(), cwd=ccrun.REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for _ in range(4)]  # fmt: skip
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        assert sum(b"already mounted" in o for o, _ in outs) == 3
        assert Path(f"/proc/{c.pid}/mountinfo").read_text().count(" /dev/crashcart ") == 1
        assert ccrun.run("-u", target(c)).returncode == 0


def test_unmount_does_not_break_a_live_exec(
    busybox_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = busybox_container
    with leakcheck(c):
        result: dict[str, subprocess.CompletedProcess[bytes]] = {}
        script = "sleep 3; strace -V >/dev/null"
        t = threading.Thread(
            target=lambda: result.setdefault(
                "e", ccrun.run("-e", target(c), "--", "sh", "-c", script)
            )
        )
        t.start()
        wait_for(lambda: mounted(c))
        time.sleep(0.5)
        u = ccrun.run("-u", target(c))
        t.join(60)
        assert u.returncode == 125 and b"crashcart -e" in u.stderr, u.stderr
        assert result["e"].returncode == 0, result["e"].stderr
    assert not mounted(c)


def test_user_namespaced_container(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = start_container("podman", "distroless", userns=True)
    with leakcheck(c):
        assert ccrun.run("-m", target(c)).returncode == 0
        res = runtime_exec(c, "/dev/crashcart/bin/bash", "-c", "id -u; ls -ld /dev/crashcart; ps")
        assert ccrun.run("-u", target(c)).returncode == 0
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # root inside; the toolbox's files belong to the host's root, unmapped in the container's
    # user namespace, so they show as nobody, world-readable and executable
    assert lines[0] == "0", res.stdout
    assert lines[1].startswith("dr") and lines[1][1:10].count("x") == 3, res.stdout
    assert " server" in res.stdout


def test_session_in_a_user_namespaced_container(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = start_container("podman", "musl", userns=True)
    with leakcheck(c):
        proc = ccrun.run(target(c), "--", "sh", "-c",
                         "id -u; cat /proc/self/uid_map; strace -V | head -1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = ccrun.text(proc).split()
    assert out[0] == "0" and out[1:4] == ["0", str(runtimes.USERNS_HOST_ID), "65536"], out


def test_many_mounts_mountinfo_longer_than_a_page(leakcheck: lc.LeakCheckFn, toolbox: str) -> None:
    """Regression (found by bench P3): with a mount table over 4 KiB, -u read one page of
    it, said "not mounted" and left the toolbox in the container."""
    runtimes.require("docker")
    name = runtimes.new_name("many-mounts")
    tmpfs = [arg for i in range(16) for arg in ("--tmpfs", f"/mnt/t{i:02d}")]
    runtimes.run([runtimes.DOCKER, "run", "-d", "--name", name, "--network", "none", *tmpfs,
                  "--label", "crashcart-test=1", "crashcart-test/distroless"])  # fmt: skip
    try:
        pid = int(runtimes.run([runtimes.DOCKER, "inspect", "-f", "{{.State.Pid}}", name]).stdout)
        c = Container("docker", name, name, pid, "distroless")
        assert len(Path(f"/proc/{pid}/mountinfo").read_bytes()) > 4096
        with leakcheck(c):
            assert ccrun.run("-m", target(c)).returncode == 0
            assert b"mounted, image" in ccrun.run("status", target(c)).stdout
            u = ccrun.run("-u", target(c))
            assert u.returncode == 0 and b"unmounted" in u.stderr, u.stderr
        assert not mounted(c)
    finally:
        runtimes.remove_by_name("docker", name)


def test_cleanup_spares_live_sessions_and_exec_users(
    start_container: ContainerFactory, toolbox: str
) -> None:
    """cleanup removes what killed runs left, never what live runs use: a session's own
    private namespace (its /dev/crashcart) and a running -e are left alone."""
    left = start_container("docker", "distroless")
    sess = start_container("podman", "distroless")
    live = start_container("docker", "busybox")
    assert ccrun.run("-m", target(left)).returncode == 0
    session = subprocess.Popen(
        ccrun.argv(target(sess), "--", "sh", "-c", "sleep 4; /dev/crashcart/usr/bin/strace -V"),
        env=ccrun.env(), cwd=ccrun.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    execing = subprocess.Popen(
        ccrun.argv("-e", target(live), "--", "sh", "-c", "sleep 4; strace -V"),
        env=ccrun.env(), cwd=ccrun.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for(lambda: mounted(live))
        time.sleep(1)
        clean = ccrun.run("cleanup")
        assert clean.returncode == 0, clean.stderr
        assert not mounted(left)
        assert mounted(live) and b"in use by crashcart -e" in clean.stdout
        out, err = session.communicate(timeout=60)
        assert session.returncode == 0 and b"strace -- version" in out, err
        out, err = execing.communicate(timeout=60)
        assert execing.returncode == 0 and b"strace -- version" in out, err
    finally:
        for p in (session, execing):
            p.kill()
            p.wait()
    assert not mounted(live)


def test_read_only_rootfs(
    readonly_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    """--read-only containers: the root filesystem cannot take a mount point, /dev (a tmpfs)
    can; session mode needs neither."""
    c = readonly_container
    with leakcheck(c):
        session = ccrun.run(target(c), "--", "sh", "-c", "touch /target/x 2>&1; ps -e | wc -l")
        m = ccrun.run("-m", target(c))
        res = runtime_exec(c, "/dev/crashcart/bin/bash", "-c", "strace -V | head -1")
        u = ccrun.run("-u", target(c))
    assert session.returncode == 0 and b"Read-only file system" in session.stdout, session.stdout
    assert m.returncode == 0 and u.returncode == 0, m.stderr + u.stderr
    assert res.returncode == 0 and "strace -- version" in res.stdout, res.stdout + res.stderr

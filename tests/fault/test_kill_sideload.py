"""SIGKILL of crashcart at each phase of -m, -e and -u, on real containers, with the tiny
static toolbox (it runs from /dev/crashcart in any container, so -e really executes).
tests/runtime/test_sideload.py kills -m after the record, the mkdir and the attach with the
erofs toolbox on docker; here the same phases run with squashfs (a loop device could leak),
and -e and -u are killed too.

What each phase leaves, documented by the tests:

- -m killed after writing its record, before touching the container: nothing in the
  container; a record that `status` lists and `cleanup` forgets.
- -m killed after making the mount point: an empty /dev/crashcart; `cleanup` removes it.
- -m killed after the attach, -e killed after its mount: /dev/crashcart mounted (the -e
  run's lease is dead, so nothing keeps it); `cleanup` unmounts it and removes the mount
  point. No loop device beyond the mount's own (autoclear frees it on unmount).
- -e killed while the runtime's exec runs the command: the runtime's client gets SIGTERM
  (parent-death signal) and ends; the process the runtime started in the container is the
  runtime's and may outlive it (docker keeps it, ctr forwards the SIGTERM); /dev/crashcart
  stays mounted; `cleanup` detaches it (lazily while that process still runs).
- -u killed after the unmount, before removing the mount point and the record: an empty
  /dev/crashcart; `cleanup` removes it.
In every case: no crashcart process, no host mount, no loop device once cleanup ran.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container, ContainerFactory

MOUNT_PHASES = ["mount:after-record", "mount:after-mkdir", "mount:after-attach"]


def point_exists(c: Container) -> bool:
    try:
        return "crashcart" in kit.in_container(c, ["ls", "/dev"]).split()
    except Exception:
        return False


def killed(*args: str, fault: str, image: str) -> None:
    p = kit.popen(*args, fault=fault, image=image)
    status, err = kit.finish(p, timeout=60)
    assert status == -signal.SIGKILL, (status, err)


def clean_up(image: str) -> None:
    res = ccrun.run("cleanup", image=image)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("phase", MOUNT_PHASES)
def test_mount_killed_with_a_loop_device_toolbox(
    shared: Container, tiny_squashfs: str, phase: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        killed("-m", target(shared), fault=phase, image=tiny_squashfs)
        assert kit.mounted(shared) == (phase == "mount:after-attach")
        assert point_exists(shared) == (phase != "mount:after-record")
        status = ccrun.run("status", "--json")
        assert shared.name.encode() in status.stdout, status.stdout
        clean_up(tiny_squashfs)
        assert not kit.mounted(shared) and not point_exists(shared)


@pytest.mark.parametrize("runtime", ["docker", "containerd"])
def test_exec_killed_after_its_mount(
    start_container: ContainerFactory, runtime: str, any_tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    c = start_container(runtime, "busybox")
    with leakcheck(c):
        killed("-e", target(c), "--", "true", fault="exec:after-mount", image=any_tiny)
        assert kit.mounted(c)
        clean_up(any_tiny)
        assert not kit.mounted(c) and not point_exists(c)


@pytest.mark.parametrize("runtime", ["docker", "containerd", "podman"])
def test_exec_killed_mid_command(
    start_container: ContainerFactory, runtime: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    c = start_container(runtime, "busybox")
    with leakcheck(c, settle=5):
        p = kit.popen("-e", target(c), "--", "/dev/crashcart/bin/sleep", "3", image=tiny)
        kit.wait_for(lambda: any("sleep 3" in x.cmdline for x in lc.pidns_procs(c.pid)),
                     what="the command to run in the container")  # fmt: skip
        client = [x for x in kit.descendants(p.pid)]
        kit.kill(p.pid)
        p.wait(10)
        # The runtime's client follows crashcart (SIGTERM); it is no orphan.
        kit.wait_for(lambda: all(kit.proc_state(x) in ("gone", "Z") for x in client),
                     timeout=10, what="the runtime client to end")  # fmt: skip
        assert kit.mounted(c)
        clean_up(tiny)
        kit.wait_for(lambda: not any("sleep 3" in x.cmdline for x in lc.pidns_procs(c.pid)),
                     timeout=10, what="the runtime's process to end")  # fmt: skip
        assert not kit.mounted(c)


def test_unmount_killed_after_the_detach(
    shared: Container, any_tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        assert ccrun.run("-m", target(shared), image=any_tiny).returncode == 0
        killed("-u", target(shared), fault="unmount:after-detach", image=any_tiny)
        assert not kit.mounted(shared) and point_exists(shared)
        clean_up(any_tiny)
        assert not point_exists(shared)


def test_stale_record_of_a_dead_namespace_is_never_acted_upon(
    start_container: ContainerFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """Records are keyed by mount namespace inode, which the kernel reuses: a record left
    by a killed -m in a container that is gone must not make crashcart remove a directory
    of the next container that gets the same inode number."""
    from crashcart.sideload import state

    c = start_container("docker", "busybox")
    kit.in_container(c, ["mkdir", "/dev/crashcart"])  # the container's own, empty
    key = state.mnt_ns_key(c.pid)
    forged = {
        "target": "docker://gone",
        "runtime": "docker",
        "name": "gone",
        "pid": 999999,
        "pid_start": 1,
        "image": tiny,
        "since": "x",
        "created_dir": True,
        "leases": [],
    }
    record = state.Record.from_json(forged)
    assert record is not None
    state.write_record(key, record)
    try:
        with leakcheck(c):
            status = ccrun.run("status", "--json")
            clean = ccrun.run("cleanup")
            unmount = ccrun.run("-u", target(c))
    finally:
        state.drop_record(key)
    assert b'"gone"' not in status.stdout
    assert clean.returncode == 0 and unmount.returncode == 0, (clean.stderr, unmount.stderr)
    assert point_exists(c)  # the container's directory is still there


def test_failed_mount_leaves_no_record(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A mount point the container made (a file) is refused: no record stays behind."""
    kit.in_container(shared, ["touch", "/dev/crashcart"])
    try:
        with leakcheck(shared):
            m = ccrun.run("-m", target(shared), image=tiny)
            status = ccrun.run("status", "--json")
    finally:
        kit.in_container(shared, ["rm", "-f", "/dev/crashcart"])
    assert m.returncode == 125 and b"not a directory" in m.stderr
    assert shared.name.encode() not in status.stdout


@pytest.mark.parametrize("runtime", ["docker", "containerd"])
def test_exec_passes_sigterm_to_the_runtime_and_cleans_up_after_it(
    start_container: ContainerFactory, runtime: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """SIGTERM to `crashcart -e` goes to the runtime's client and crashcart waits for it,
    then removes the toolbox -- unless the process the runtime started still uses it:
    ctr passes the signal on (the command ends, the toolbox goes), docker does not (the
    command runs on; crashcart leaves the toolbox and says so)."""
    c = start_container(runtime, "busybox")
    with leakcheck(c, settle=5):
        p = kit.popen("-e", target(c), "--", "/dev/crashcart/bin/sleep", "4", image=tiny)
        kit.wait_for(lambda: any("sleep 4" in x.cmdline for x in lc.pidns_procs(c.pid)),
                     what="the command to run")  # fmt: skip
        time.sleep(0.2)
        p.send_signal(signal.SIGTERM)
        status, err = kit.finish(p, timeout=30)
        if runtime == "docker":
            assert "toolbox left mounted: the toolbox is in use by sleep" in err, err
            assert kit.mounted(c)
        else:
            assert status == 128 + signal.SIGTERM, (status, err)
            assert not kit.mounted(c), err
        kit.wait_for(lambda: not any("sleep 4" in x.cmdline for x in lc.pidns_procs(c.pid)),
                     timeout=10, what="the command to end")  # fmt: skip
        clean_up(tiny)


def test_unmount_with_a_user_crashcart_cannot_see(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A process outside the target's pid namespace (nsenter -m) working in the toolbox:
    crashcart's users() cannot see it and the unmount is EBUSY. -u says so; --force (and
    `cleanup`, found by the soak failing there) detaches lazily."""
    with leakcheck(shared, settle=5):
        assert ccrun.run("-m", target(shared), image=tiny).returncode == 0
        user = subprocess.Popen(["nsenter", "-t", str(shared.pid), "-m", "--", "sh", "-c",
                                 "cd /dev/crashcart && exec sleep 30"])  # fmt: skip
        try:
            kit.wait_for(lambda: kit.cmdline(user.pid) == "sleep 30", what="the user to start")
            time.sleep(0.2)
            refused = ccrun.run("-u", target(shared))
            forced = ccrun.run("-u", "--force", target(shared))
        finally:
            user.kill()
            user.wait()
    assert refused.returncode == 125, refused.stderr
    assert b"in use by a process crashcart cannot see" in refused.stderr
    assert forced.returncode == 0 and b"lazily" in forced.stderr, forced.stderr

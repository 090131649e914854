"""The target goes away: its main process exits or is killed, or its container is removed,
during a session, while the toolbox is sideloaded, and in the middle of an attach.

- Mid-session: the kernel ends every process of a pid namespace whose init dies, the
  supervisor and the command included; crashcart exits 137 and says the target ended.
  Nothing stays on the host: the session's private mount namespace (and with it the
  toolbox mount and its loop device) dies with its last process.
- While mounted (-m): the mount dies with the container's mount namespace; the record
  left in /run/crashcart names a dead namespace: `status` does not list it, `cleanup`
  forgets it.
- Mid-attach (stopped right before the fork into the target): "TARGET exited while
  crashcart attached", exit 125, no traceback.
"""

from __future__ import annotations

import signal

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import runtimes
from tests.testbed.runtimes import ContainerFactory

ENDINGS = ["main-process-exits", "main-process-killed", "container-removed"]


# A main process that exits when /tmp/stop appears (an init ignores SIGTERM it has no
# handler for, even from the host).
STOPPABLE = ["sh", "-c", "while [ ! -e /tmp/stop ]; do sleep 0.1; done"]


def end_target(factory: ContainerFactory, c: runtimes.Container, how: str) -> None:
    if how == "main-process-exits":
        open(f"/proc/{c.pid}/root/tmp/stop", "w").close()
    elif how == "main-process-killed":
        kit.kill(c.pid, signal.SIGKILL)
    else:
        factory.remove(c)


@pytest.mark.parametrize("how", ENDINGS)
def test_target_ends_mid_session(
    start_container: ContainerFactory, how: str, tiny_squashfs: str
) -> None:
    c = start_container("docker", "busybox", command=STOPPABLE)
    before = kit.host_state()
    p = kit.popen(target(c), "--", "sh", "-c", "sleep 31 & sleep 32", image=tiny_squashfs)
    kit.wait_for(lambda: any("sleep 32" in x.cmdline for x in kit.session_procs(c)),
                 what="the session to run")  # fmt: skip
    end_target(start_container, c, how)
    status, err = kit.finish(p, timeout=30)
    assert status == 128 + signal.SIGKILL, err
    assert "ended; the session ended with it" in err, err
    assert kit.host_leaks(before) == []


@pytest.mark.parametrize("how", ENDINGS)
def test_target_ends_while_mounted(
    start_container: ContainerFactory, how: str, tiny_squashfs: str
) -> None:
    c = start_container("docker", "busybox", command=STOPPABLE)
    before = kit.host_state()
    assert ccrun.run("-m", target(c), image=tiny_squashfs).returncode == 0
    end_target(start_container, c, how)
    kit.wait_for(lambda: kit.proc_state(c.pid) == "gone", what="the container to end")
    status = ccrun.run("status", "--json")
    clean = ccrun.run("cleanup")
    assert c.name.encode() not in status.stdout, status.stdout
    assert clean.returncode == 0, clean.stderr
    assert kit.host_leaks(before) == []
    if how != "container-removed":
        start_container.remove(c)


def test_target_exits_mid_attach(start_container: ContainerFactory, tiny: str) -> None:
    c = start_container("docker", "busybox")
    before = kit.host_state()
    p = kit.popen(target(c), "--", "true", image=tiny, fault="stop:session:before-fork")
    stopped = kit.stopped_process(p.pid)
    kit.kill(c.pid, signal.SIGKILL)
    kit.wait_for(lambda: kit.proc_state(c.pid) == "gone", what="the target to end")
    kit.kill(stopped, signal.SIGCONT)
    status, err = kit.finish(p)
    assert status == 125, err
    assert "exited while crashcart attached" in err and "Traceback" not in err, err
    assert kit.host_leaks(before) == []


def test_target_exits_mid_mount(start_container: ContainerFactory, tiny_squashfs: str) -> None:
    c = start_container("docker", "busybox")
    before = kit.host_state()
    p = kit.popen("-m", target(c), image=tiny_squashfs, fault="stop:mount:after-record")
    stopped = kit.stopped_process(p.pid)
    kit.kill(c.pid, signal.SIGKILL)
    kit.wait_for(lambda: kit.proc_state(c.pid) == "gone", what="the target to end")
    kit.kill(stopped, signal.SIGCONT)
    status, err = kit.finish(p)
    assert status in (0, 125), err
    assert "Traceback" not in err and "internal error" not in err, err
    assert ccrun.run("cleanup").returncode == 0
    assert kit.host_leaks(before) == []

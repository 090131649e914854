"""SIGKILL at each phase of a session, on a real docker container, with the tiny toolbox
as erofs (file-backed) and squashfs (autoclear loop device).

What each phase leaves, documented by the tests:

- crashcart (the host process) killed before or right after the fork, during setup, or
  while the command runs: *nothing* -- no crashcart process, no loop device, no host
  mount, nothing in the container (no process, no mount, no file). The session's
  processes follow the host process: the supervisor's parent-death signal makes it end
  every process of the session (background jobs included) before it exits.
- the in-namespace child killed after any setup step: nothing; crashcart says the
  session ended before the command started and exits 125.
- the supervisor killed while the command runs (by the container, say): the command
  and everything it started end too; crashcart reports 137 (128 + SIGKILL).

A process of the session whose host parent died is re-parented to the *host's* init (it
was forked into the pid namespace from outside, so the target's init is not its reaper);
it shows as a zombie in the target's pid namespace until that init reaps it, which takes
up to ~2 s on this machine's init: those checks settle for 5 s.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container

HOST_PHASES = ["session:before-fork", "session:after-fork"]
CHILD_PHASES = [
    "session:after-clone_target_proc",
    "session:after-join_namespaces",
    "session:after-clone_target_root",
    "session:after-private_mount_namespace",
    "session:after-pivot_to_toolbox",
    "session:after-attach_target",
    "session:after-build_dev",
    "session:after-mount_tmp",
    "session:after-setup",
    "session:after-set_credentials",  # in the command's process, right before exec
]


@pytest.mark.parametrize("phase", HOST_PHASES)
def test_host_killed_before_the_session_exists_leaves_nothing(
    shared: Container, any_tiny: str, phase: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared, settle=5):
        p = kit.popen(target(shared), "--", "sleep", "30", fault=phase, image=any_tiny)
        status, err = kit.finish(p)
    assert status == -signal.SIGKILL, err


@pytest.mark.parametrize("phase", CHILD_PHASES)
def test_child_killed_during_setup_leaves_nothing_and_says_so(
    shared: Container, any_tiny: str, phase: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        p = kit.popen(target(shared), "--", "sleep", "30", fault=phase, image=any_tiny)
        status, err = kit.finish(p)
    assert status == 125, err
    assert "crashcart: the session ended before the command started" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("phase", ["session:after-pivot_to_toolbox", "session:after-setup"])
def test_host_killed_while_the_child_sets_up_leaves_nothing(
    shared: Container, any_tiny: str, phase: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared, settle=5):
        p = kit.popen(target(shared), "--", "sleep", "30", fault=f"stop:{phase}", image=any_tiny)
        child = kit.stopped_process(p.pid)
        kit.kill(p.pid)
        p.wait(10)
        kit.kill(child, signal.SIGCONT)
        kit.wait_for(lambda: kit.proc_state(child) in ("gone", "Z"), what="the child to end")


COMMANDS = {
    "foreground": ["sleep", "30"],
    "background-jobs": ["sh", "-c", "sleep 31 & sleep 32 & (sleep 33 &) ; wait"],
}


@pytest.mark.parametrize("what", COMMANDS)
def test_host_killed_mid_command_leaves_nothing(
    shared: Container, any_tiny: str, what: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared, settle=5):
        p = kit.popen(target(shared), "--", *COMMANDS[what], image=any_tiny)
        kit.wait_for(lambda: any("sleep 3" in x.cmdline for x in kit.session_procs(shared)),
                     what="the command to run")  # fmt: skip
        time.sleep(0.2)
        kit.kill(p.pid)
        p.wait(10)
        kit.wait_for(lambda: not kit.session_procs(shared), what="the session to end")


def test_host_killed_mid_command_as_another_user_leaves_nothing(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """setresuid clears the parent-death signal: it must be armed again after it."""
    with leakcheck(shared, settle=5):
        p = kit.popen("--user", "1000:1000", target(shared), "--", "sleep", "30", image=tiny)
        kit.wait_for(lambda: any("sleep 30" in x.cmdline for x in kit.session_procs(shared)),
                     what="the command to run")  # fmt: skip
        kit.kill(p.pid)
        p.wait(10)
        kit.wait_for(lambda: not kit.session_procs(shared), timeout=5, what="the session to end")


def test_supervisor_killed_mid_command_ends_the_session(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        p = kit.popen(target(shared), "--", *COMMANDS["background-jobs"], image=tiny)
        kit.wait_for(lambda: kit.supervisors(shared) and len(kit.session_procs(shared)) >= 4,
                     what="the session to run")  # fmt: skip
        for pid in kit.supervisors(shared):
            kit.kill(pid)
        status, err = kit.finish(p)
        kit.wait_for(lambda: not kit.session_procs(shared), timeout=5, what="the session to end")
    assert status == 128 + signal.SIGKILL, err

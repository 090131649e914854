"""SIGINT, SIGTERM and SIGHUP to crashcart during a session, with and without a pty.

- A signal to crashcart is forwarded to the command (through the supervisor); crashcart
  then exits with the command's status: 128+N when the signal killed it, the command's
  own status when it handled the signal.
- Asked a second time (SIGTERM/SIGINT), crashcart ends the whole session: the command
  and whatever it started are SIGKILLed, crashcart exits 137.
- With a pty the operator's terminal is back in its original mode afterwards (compared
  with `stty -g` before and after, in the same terminal).
- Hangup (the operator's terminal goes away): the session ends, nothing stays behind.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import time

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container

SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP}


def started(c: Container, needle: str) -> None:
    kit.wait_for(lambda: any(needle in p.cmdline for p in kit.session_procs(c)),
                 what=f"{needle!r} to run in the session")  # fmt: skip
    time.sleep(0.1)


@pytest.mark.parametrize("name", SIGNALS)
def test_signal_is_forwarded_without_a_pty(
    shared: Container, tiny: str, name: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        p = kit.popen(target(shared), "--", "sleep", "30", image=tiny)
        started(shared, "sleep 30")
        p.send_signal(SIGNALS[name])
        status, err = kit.finish(p)
    assert status == 128 + SIGNALS[name], err


def test_a_handled_signal_gives_the_commands_own_status(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    script = "trap 'echo got-TERM; exit 3' TERM; sleep 30 & wait"
    with leakcheck(shared):
        p = kit.popen(target(shared), "--", "sh", "-c", script, image=tiny)
        started(shared, "sleep 30")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 3, err
    assert out == b"got-TERM\n"


def test_second_sigterm_ends_the_whole_session(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A command that ignores SIGTERM (and a background job of it): the second SIGTERM
    ends everything."""
    with leakcheck(shared):
        p = kit.popen(target(shared), "--", "sh", "-c", "trap '' TERM; sleep 31 & sleep 32",
                      image=tiny)  # fmt: skip
        started(shared, "sleep 32")
        p.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.poll() is None  # ignored
        p.send_signal(signal.SIGTERM)
        status, err = kit.finish(p)
    assert status == 128 + signal.SIGKILL, err


def test_a_signal_ignored_by_crashcarts_caller_is_not_forwarded(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """`nohup crashcart ...`: SIGHUP is ignored when crashcart starts; a hangup must not
    end the session then (found by the soak, which runs under nohup)."""
    with leakcheck(shared):
        p = subprocess.Popen(
            ccrun.argv(target(shared), "--", "sh", "-c", "sleep 1; echo survived"),
            env=ccrun.env(tiny), cwd=ccrun.REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
        )  # fmt: skip
        started(shared, "sleep 1")
        p.send_signal(signal.SIGHUP)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and out == b"survived\n", (p.returncode, err)


class Terminal:
    """A shell in a pseudo-terminal that prints `stty -g`, runs crashcart, prints its
    status and `stty -g` again: the terminal's mode before and after, in one place."""

    def __init__(self, *args: str, image: str) -> None:
        cmd = " ".join(ccrun.argv(*args))
        script = f"stty -g; echo BEGIN; {cmd}; echo RC=$?; stty -g; echo END"
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.chdir(ccrun.REPO)
            os.execve("/bin/sh", ["sh", "-c", script], ccrun.env(image))
        self.out = b""

    def read_until(self, needle: bytes, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while needle not in self.out and time.monotonic() < end:
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:
                    break
        assert needle in self.out, self.out[-2000:]
        return self.out.decode(errors="replace")

    def crashcart(self) -> int:
        found: list[int] = []

        def look() -> bool:
            found[:] = [p for p in kit.descendants(self.pid) if "-m crashcart" in kit.cmdline(p)]
            return bool(found)

        kit.wait_for(look, what="crashcart under the shell")
        return found[0]

    def close(self) -> None:
        kit.kill(self.pid)
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


@pytest.mark.parametrize("name", SIGNALS)
def test_signal_with_a_pty_restores_the_terminal(
    shared: Container, tiny: str, name: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        t = Terminal(target(shared), "--", "sleep", "30", image=tiny)
        try:
            t.read_until(b"BEGIN")
            started(shared, "sleep 30")
            os.kill(t.crashcart(), SIGNALS[name])
            out = t.read_until(b"END")
        finally:
            t.close()
    lines = [ln.strip() for ln in out.splitlines()]
    before, after = lines[0], lines[lines.index("END") - 1]
    assert f"RC={128 + SIGNALS[name]}" in lines, out
    assert before == after, out


def test_hangup_of_the_operators_terminal_ends_the_session(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        s = ccrun.PtySession(target(shared), "--", "sh", "-c", "echo READY; sleep 30",
                             image=tiny)  # fmt: skip
        try:
            s.read_until(b"READY")
            os.close(s.fd)  # the terminal goes away: SIGHUP to crashcart, EIO on writes
            kit.wait_for(lambda: os.waitpid(s.pid, os.WNOHANG)[0] != 0, timeout=15,
                         what="crashcart to end on hangup")  # fmt: skip
        finally:
            kit.kill(s.pid)
        kit.wait_for(lambda: not kit.session_procs(shared), timeout=5, what="the session to end")

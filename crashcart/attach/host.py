"""The host side of a session: fork the setup process, relay the terminal or pipes, forward
signals, and return the command's exit status. Every wait here on a process the container
can see (the supervisor, the command) is bounded or interruptible: a container may stop,
freeze or ptrace them at any time.
"""

from __future__ import annotations

import os
import time

from crashcart import faults
from crashcart.attach import plan, record, relay, setup, wire
from crashcart.attach.child import SIG_END
from crashcart.attach.options import SessionOptions
from crashcart.defaults import SUPERVISOR_TITLE  # noqa: E402
from crashcart.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_NOT_FOUND,
    CannotExecute,
    CommandNotFound,
    CrashcartError,
    TargetGone,
)
from crashcart.linux import libc, ns, procfs, proctitle, sig, terminal
from crashcart.linux.fd import close_all
from crashcart.targets.model import Target
from crashcart.text import printable, safe_output

FORWARDED = (sig.SIGINT, sig.SIGTERM, sig.SIGHUP, sig.SIGQUIT, sig.SIGUSR1, sig.SIGUSR2)
STOPPED_GRACE = 2.0  # after the command's output ended, how long a stopped supervisor may lag
KILL_GRACE = 2.0  # after SIGKILL, how long to wait for a process that may be frozen


setup_timeout = setup.setup_timeout


def wants_tty(opts: SessionOptions) -> bool:
    if opts.tty is not None:
        return opts.tty
    return os.isatty(0) and os.isatty(1)


def say(text: str, *, raw: bool = False) -> None:
    """One message on stderr; with the terminal in raw mode, at the start of a line."""
    line = safe_output(text)
    if raw:
        line = "\r\n" + line.replace("\n", "\r\n") + "\r"
    try:
        os.write(2, (line + "\n").encode(errors="replace"))
    except OSError:
        pass


def run_session(target: Target, spec_text: str, opts: SessionOptions) -> int:
    tty = wants_tty(opts)
    prep = plan.prepare(target, spec_text, opts, tty=tty)
    try:
        if opts.debug:
            _print_plan(prep)
        if not opts.quiet:
            for note in prep.ctx.notes:
                say(f"crashcart: note: {note}")
        if tty:
            prep.ctx.winsize = terminal.get_winsize(0 if os.isatty(0) else 1)
        return Session(prep, tty).run()
    finally:
        prep.close()


def _print_plan(prep: plan.Prepared) -> None:
    t = prep.target
    tb = prep.toolbox
    lines = [f"+ target {t.describe()}, pid inside {prep.info.pid_inside}"]
    if tb is not None:
        how = f" via {tb.loop_device}" if tb.loop_device else " (file-backed)"
        lines.append(f"+ toolbox {tb.fmt} mounted detached{how}")
    lines += [
        "+ fork the setup process (in the host's pid namespace: the container cannot see it)",
        *(f"+ {s.what}" for s in prep.plan),
        "+ setns pid" + (" user" if "user" in prep.ctx.nss.foreign else "")
        + ", drop to the profile, scrub the title, fork the supervisor into the target",
        "+ move the supervisor into the target's cgroups" if prep.cgroup_fds else
        "+ (no cgroup to join)",
        "+ the supervisor forks the command, reaps it and ends what it leaves running",
        *(f"+ {s.what}" for s in prep.final),
        f"+ exec {' '.join(prep.ctx.argv)} (cwd {prep.ctx.workdir})",
    ]  # fmt: skip
    say("\n".join(printable(line) for line in lines))


class Session:
    """One session, from the fork of the setup process to the command's exit status."""

    def __init__(self, prep: plan.Prepared, tty: bool) -> None:
        self.prep = prep
        self.tty = tty
        self.setup_pid = -1
        self.setup_pidfd = -1
        self.sup_pid = -1
        self.sup_pidfd = -1
        self.master = -1
        self.session_ns: tuple[int, int] | None = None
        self.status: int | None = None  # the supervisor's wait status
        self.exec_seen = False
        self.error: tuple[int, str] | None = None
        self.ended: str | None = None  # why crashcart ended the session itself
        self.raw = False
        self.deadline = 0.0
        self.stopped_since = 0.0
        self.warned_stopped = False
        self.killed_at = 0.0
        self.stops = 0
        self.relay: relay.Relay | None = None

    # -- the whole session -------------------------------------------------------------

    def run(self) -> int:
        pipes = relay.Pipes() if self.tty else relay.Pipes.for_stdio()
        stdio = [pipes.ends[fd][0] for fd in (0, 1, 2)] if not self.tty else []
        libc.prctl(libc.PR_SET_DUMPABLE, 0)
        ctx = self.prep.ctx
        title = f"{SUPERVISOR_TITLE}{self.prep.target.ref}"
        areas = proctitle.areas()
        faults.point("session:before-fork")
        pid = os.fork()
        if pid == 0:
            setup.setup_main(ctx, self.prep.plan, self.prep.final, title, stdio, areas)
        self.setup_pid = pid
        self.setup_pidfd = os.pidfd_open(pid)
        pipes.close_child_ends()
        self.prep.close_child_ends()
        faults.point("session:after-fork")
        mode = None
        handlers = {}
        try:
            self._setup_phase()
            handlers = {signum: sig.handle(signum, self._signal) for signum in FORWARDED}
            for signum, old in handlers.items():
                if old == sig.SIG_IGN:  # ignored by whoever started us (nohup): keep it so
                    sig.handle(signum, sig.SIG_IGN)
            self._let_go()
            if self.master >= 0:
                mode = terminal.make_raw(0) if os.isatty(0) else None
                self.raw = mode is not None
            self._relay(pipes)
            return self._result()
        finally:
            terminal.restore(0, mode)
            for signum, old in handlers.items():
                sig.handle(signum, old)
            pipes.close_host_ends()
            self._finish()

    # -- phases --------------------------------------------------------------------------

    def _setup_phase(self) -> None:
        """Until the setup process reports the supervisor (or fails, or dies, or runs out
        of time: a FUSE mount or a frozen cgroup in the target can hang a step)."""
        import select

        sock = self.prep.host_sock
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        poller.register(self.setup_pidfd, select.POLLIN)
        end = time.monotonic() + setup_timeout()
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise CrashcartError(
                    f"setting up the session took more than {setup_timeout():g} s "
                    "(a hung filesystem in the target?)",
                    hint="CRASHCART_SETUP_TIMEOUT=SECONDS changes the limit",
                )
            events = dict(poller.poll(left * 1000))
            if sock.fileno() in events:
                kind, body, fds = wire.recv(sock)
                try:
                    if self._setup_message(kind, body, fds):
                        return
                finally:
                    close_all(fds)  # what the message carried and no step took (a FAILED)
            elif self.setup_pidfd in events:
                self._setup_died()

    def _setup_message(self, kind: bytes, body: bytes, fds: list[int]) -> bool:
        if kind == wire.PTY and fds:
            self.master = fds.pop(0)
        elif kind == wire.FAILED:
            _, text = wire.parse_failure(body)
            self._wait_setup(KILL_GRACE)
            if not self.prep.pinned.alive():  # ENOMEM: its pid namespace has no init any more
                raise TargetGone(f"{self.prep.target.describe()} exited while crashcart attached")
            raise CrashcartError(text)
        elif not kind:  # the setup process closed its socket: it forks the supervisor now
            self._find_supervisor()
        return self.sup_pid > 0

    def _find_supervisor(self) -> None:
        """The supervisor is the setup process's only child. It cannot be reaped (and its PID
        reused) before we let the setup process do so: pidfd first, then REAP_OK."""
        end = time.monotonic() + setup_timeout()
        path = f"{procfs.PROC}/{self.setup_pid}/task/{self.setup_pid}/children"
        while time.monotonic() < end:
            try:
                kids = procfs.read_text(path, limit=4096).split()
            except OSError:
                kids = []
            if kids and kids[0].isdigit():
                self.sup_pid = int(kids[0])
                self.sup_pidfd = os.pidfd_open(self.sup_pid)
                libc.pidfd_send_signal(self.setup_pidfd, setup.REAP_OK)
                self.session_ns = None if self.prep.in_place else _mnt_ns(self.sup_pid)
                self.deadline = time.monotonic() + setup_timeout()
                return
            if _state(self.setup_pid) in ("Z", "X", "gone"):
                self._setup_died()
            time.sleep(0.0005)
        raise CrashcartError(f"the session's supervisor did not start within {setup_timeout():g} s")

    def _setup_died(self) -> None:
        _, status = self._wait_setup(KILL_GRACE)
        code = os.waitstatus_to_exitcode(status) if status is not None else 0
        if not self.prep.pinned.alive():  # e.g. fork: ENOMEM in a pid namespace without init
            raise TargetGone(f"{self.prep.target.describe()} exited while crashcart attached")
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise CrashcartError(f"the session ended before the command started ({how})")

    def _let_go(self) -> None:
        """Move the supervisor into the target's cgroups (from here, outside them), then
        let it fork the command."""
        for fd in self.prep.cgroup_fds:
            try:
                os.write(fd, str(self.sup_pid).encode())
            except ProcessLookupError:
                break  # it died: the relay sees its pidfd
        try:
            os.write(self.prep.go_w, b"G")
        except OSError:
            pass
        os.close(self.prep.go_w)
        self.prep.go_w = -1

    def _relay(self, pipes: relay.Pipes) -> None:
        if self.master >= 0:
            master = self.master

            def resized(*_: object) -> None:
                terminal.copy_winsize(0, master)
                if record.active:
                    record.resized(0)

            sig.handle(sig.SIGWINCH, resized)
            terminal.copy_winsize(0, master)
            r = relay.Relay([(0, master)], [(master, 1)], self.sup_pidfd)
            r.tap = record.active.tap if record.active else None
            if self.raw:
                r.filter = relay.Escape(lambda: self._end("escape"), lambda t: say(t, raw=True))
        else:
            r = relay.Relay(pipes.inputs(), pipes.outputs(), self.sup_pidfd,
                            pipes.close_host_end)  # fmt: skip
        r.watch[self.prep.report_r] = self._on_report
        r.watch[self.setup_pidfd] = self._on_setup
        r.tick = self._tick
        self.relay = r
        r.run()

    def _result(self) -> int:
        if self.status is None and not self.ended:
            self._wait_waited(KILL_GRACE)
        if self.ended == "escape":
            raise CrashcartError("session ended from the terminal (~.)")
        if self.ended == "stuck":
            raise CrashcartError(
                f"the session's supervisor (pid {self._inside(self.sup_pid)} in the target) did "
                f"not start the command within {setup_timeout():g} s"
                + (
                    ": it is stopped (by a process in the container?)" if self.stopped_since else ""
                ),  # fmt: skip
            )
        if self.ended == "stopped":
            raise CrashcartError(
                "the session's supervisor was stopped from inside the container (SIGSTOP or "
                "ptrace): the session was ended and the command's exit status is lost"
            )
        if self.ended == "frozen" or self.status is None:
            raise CrashcartError(
                "the session did not end: its processes do not respond (frozen? the container "
                "may be paused); they end when it is unpaused"
            )
        code = os.waitstatus_to_exitcode(self.status)
        if code < 0:
            self._sweep()
        if code == -sig.SIGKILL and not self.prep.pinned.alive():
            # The kernel ends every process of a pid namespace whose init dies, ours included.
            gone = TargetGone(f"{self.prep.target.describe()} ended; the session ended with it")
            gone.exit_code = 128 + sig.SIGKILL
            raise gone
        if self.error:
            ecode, text = self.error
            if self.exec_seen and ecode == EXIT_NOT_FOUND:
                raise CommandNotFound(text)
            if self.exec_seen and ecode == EXIT_CANNOT_EXECUTE:
                raise CannotExecute(text)
            raise CrashcartError(text)
        if not self.exec_seen:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise CrashcartError(f"the session ended before the command started ({how})")
        return 128 - code if code < 0 else code

    # -- events --------------------------------------------------------------------------

    def _on_report(self) -> bool:
        """A line from the session (untrusted: the container may write here)."""
        try:
            data = os.read(self.prep.report_r, 4096)
        except OSError:
            data = b""
        if not data:
            return False
        for line in data.split(b"\n"):
            if line[:1] == wire.EXEC:
                self.exec_seen = True
            elif line[:1] == wire.FAILED and self.error is None:
                self.error = wire.parse_failure(line[1:])
        return True

    def _on_setup(self) -> bool:
        """The setup process ended: its wait status is the supervisor's (it mirrors it)."""
        pid, status = self._reap_setup()
        if pid:
            self.status = status
        return not pid

    def _tick(self) -> None:
        now = time.monotonic()
        stopped = _state(self.sup_pid) in ("T", "t")
        if stopped and not self.stopped_since:
            self.stopped_since = now
        elif not stopped:
            self.stopped_since = 0.0
        if stopped and not self.warned_stopped:
            self.warned_stopped = True
            say("crashcart: the session's supervisor was stopped from inside the container"
                + ("; type ~. to end the session" if self.raw else ""), raw=self.raw)  # fmt: skip
        if not self.exec_seen and not self.error and now > self.deadline:
            self._end("stuck")
        elif (
            stopped
            and self.relay
            and self.relay.outputs_done
            and (now - self.stopped_since > STOPPED_GRACE)
        ):
            self._end("stopped")
        elif self.killed_at and now - self.killed_at > KILL_GRACE:
            self._end("frozen")

    def _signal(self, signum: int, _frame: object) -> None:
        """Signals to crashcart go to the command (through the supervisor). Asked a second
        time to stop (SIGTERM/SIGINT), crashcart ends the whole session; a third time, it
        kills the supervisor outright and stops waiting for it soon after."""
        if signum in (sig.SIGTERM, sig.SIGINT):
            self.stops += 1
            if self.stopped_since:
                self._end("stopped")
                return
            if self.stops == 2:
                signum = SIG_END
            elif self.stops > 2:
                signum = sig.SIGKILL
                self.killed_at = self.killed_at or time.monotonic()
                _kill_pidfd(self.setup_pidfd)
        _kill_pidfd(self.sup_pidfd, signum)

    def _end(self, why: str) -> None:
        if self.ended:
            return
        self.ended = why
        _kill_pidfd(self.sup_pidfd)
        _kill_pidfd(self.setup_pidfd)
        if self.relay:
            self.relay.stop()

    # -- the end -------------------------------------------------------------------------

    def _finish(self) -> None:
        """Whatever happened: nothing of the session may outlive crashcart."""
        if self.ended or self.status is None:
            _kill_pidfd(self.sup_pidfd)
            _kill_pidfd(self.setup_pidfd)
            self._sweep()
        self._wait_setup(KILL_GRACE)
        close_all((self.master, self.sup_pidfd, self.setup_pidfd))
        self.master = self.sup_pidfd = self.setup_pidfd = -1

    def _reap_setup(self) -> tuple[int, int | None]:
        """(pid, wait status) of the setup process if it has ended, else (0, None)."""
        if self.setup_pid <= 0:
            return 0, None
        try:
            pid, status = os.waitpid(self.setup_pid, os.WNOHANG)
        except ChildProcessError:
            self.setup_pid = -1
            return 0, None
        if pid:
            self.setup_pid = -1
            return pid, status
        return 0, None

    def _wait_setup(self, timeout: float) -> tuple[int, int | None]:
        """Reap the setup process, killing it after `timeout` (it lives in the host and is
        never frozen: it ends once killed)."""
        end = time.monotonic() + timeout
        while self.setup_pid > 0:
            pid, status = self._reap_setup()
            if pid:
                return pid, status
            if time.monotonic() > end:
                _kill_pidfd(self.setup_pidfd)
                end = time.monotonic() + timeout
            time.sleep(0.002)
        return 0, None

    def _wait_waited(self, timeout: float) -> None:
        """The setup process reaps the supervisor and ends as it did: bounded, since a
        frozen supervisor would keep it waiting."""
        end = time.monotonic() + timeout
        while self.status is None and self.setup_pid > 0 and time.monotonic() < end:
            pid, status = self._reap_setup()
            if pid:
                self.status = status
                return
            time.sleep(0.002)

    def _sweep(self) -> None:
        """End what is left of the session (the supervisor was killed before it could):
        everything in the session's private mount namespace."""
        if self.session_ns is None:
            return
        for _ in range(100):
            left = [p for p in procfs.pids() if _mnt_ns(p) == self.session_ns]
            if not left:
                return
            for p in left:
                procfs.kill_quietly(p)
            time.sleep(0.01)

    def _inside(self, pid: int) -> str:
        try:
            status = procfs.read_text(f"{procfs.PROC}/{pid}/status")
        except OSError:
            return "?"
        nspids = procfs.ns_pids(status)
        return str(nspids[-1]) if nspids else "?"


def _kill_pidfd(pidfd: int, signum: int = sig.SIGKILL) -> None:
    if pidfd < 0:
        return
    try:
        libc.pidfd_send_signal(pidfd, signum)
    except (ProcessLookupError, OSError):
        pass


def _state(pid: int) -> str:
    try:
        stat = procfs.read_text(f"{procfs.PROC}/{pid}/stat", limit=4096)
    except OSError:
        return "gone"
    rest = stat[stat.rfind(")") + 2 :]
    return rest[:1]


def _mnt_ns(pid: int) -> tuple[int, int] | None:
    try:
        return ns.ns_id(pid, "mnt")
    except OSError:
        return None

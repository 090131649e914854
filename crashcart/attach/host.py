"""The host side of a session: fork into the target's pid namespace, then wait, relay the
terminal or pipes, forward signals, and return the command's exit status."""

from __future__ import annotations

import _socket
import os
import sys
import time

from crashcart import faults
from crashcart.attach import child, plan, record, relay
from crashcart.attach.options import SessionOptions
from crashcart.errors import (
    EXIT_CANNOT_EXECUTE,
    EXIT_CRASHCART,
    EXIT_NOT_FOUND,
    CannotExecute,
    CommandNotFound,
    CrashcartError,
    TargetGone,
)
from crashcart.linux import libc, procfs, proctitle, sig, terminal
from crashcart.targets.model import Target

SUPERVISOR_TITLE = "crashcart: session supervisor for "
FORWARDED = (
    sig.SIGINT,
    sig.SIGTERM,
    sig.SIGHUP,
    sig.SIGQUIT,
    sig.SIGUSR1,
    sig.SIGUSR2,
)


def wants_tty(opts: SessionOptions) -> bool:
    if opts.tty is not None:
        return opts.tty
    return os.isatty(0) and os.isatty(1)


def run_session(target: Target, spec_text: str, opts: SessionOptions) -> int:
    tty = wants_tty(opts)
    prep = plan.prepare(target, spec_text, opts, tty)
    try:
        if opts.debug:
            _print_plan(prep)
        if tty:
            prep.ctx.winsize = terminal.get_winsize(0 if os.isatty(0) else 1)
        return _fork_and_wait(prep, tty)
    finally:
        prep.close()


def _print_plan(prep: plan.Prepared) -> None:
    t = prep.target
    lines = [
        f"+ target {t.describe()}, pid inside {prep.info.pid_inside}",
        f"+ toolbox {prep.toolbox.fmt} mounted detached"
        + (f" via {prep.toolbox.loop_device}" if prep.toolbox.loop_device else " (file-backed)"),
        "+ non-dumpable, fork into the target's pid namespace",
        *(f"+ {step.what}" for step in prep.plan),
        "+ fork the command; this process reaps it and ends what it leaves running",
        *(f"+ {step.what}" for step in prep.final),
        f"+ exec {' '.join(prep.ctx.argv)} (cwd {prep.ctx.workdir})",
    ]
    print("\n".join(lines), file=sys.stderr)


def _fork_and_wait(prep: plan.Prepared, tty: bool) -> int:
    pipes = relay.Pipes.for_stdio() if not tty else relay.Pipes()
    own_pidns = os.open("/proc/self/ns/pid_for_children", os.O_RDONLY | os.O_CLOEXEC)
    libc.prctl(libc.PR_SET_DUMPABLE, 0)
    faults.point("session:before-fork")
    # The child is visible in the container from its first instant, and anyone may read a
    # process's cmdline: it is born with neither the host's argv nor its environment.
    title = proctitle.save()
    proctitle.scrub(f"{SUPERVISOR_TITLE}{prep.target.ref}")
    try:
        if "pid" in prep.ctx.nss.foreign:
            libc.setns(prep.ctx.nss.fds["pid"], libc.CLONE_NEWPID)
        try:
            pid = os.fork()
        except OSError as e:
            if not prep.pinned.alive():  # ENOMEM: its pid namespace has no init any more
                raise TargetGone(
                    f"{prep.target.describe()} exited while crashcart attached"
                ) from None
            raise CrashcartError(f"cannot fork into the target's pid namespace: {e}") from None
        if pid == 0:
            _child_main(prep, pipes, tty)
        libc.setns(own_pidns, libc.CLONE_NEWPID) if "pid" in prep.ctx.nss.foreign else None
    finally:
        os.close(own_pidns)
        proctitle.restore(title)
    faults.point("session:after-fork")
    pipes.close_child_ends()
    prep.ctx.sock.close()
    pidfd = os.pidfd_open(pid)
    try:
        return _supervise(prep, pid, pidfd, pipes)
    finally:
        os.close(pidfd)


def _child_main(prep: plan.Prepared, pipes: relay.Pipes, tty: bool) -> None:
    code = EXIT_CRASHCART
    faults.point("session:child-start")
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
        # A session of its own, without a controlling terminal: otherwise any process of
        # the session could open /dev/tty and reach the operator's terminal (TIOCSTI).
        os.setsid()
        prep.host_sock.close()
        # If crashcart died before PDEATHSIG was armed, its end of the socket is closed.
        # (getppid() is 0 across pid namespaces, and a pidfd cannot signal upwards.)
        if child.peer_gone(prep.ctx.sock):
            os._exit(EXIT_CRASHCART)
        for signum in (sig.SIGPIPE, sig.SIGXFSZ, *FORWARDED):
            sig.handle(signum, sig.SIG_DFL)  # Python ignores SIGPIPE; exec keeps ignores
        if tty:  # the host's terminal never enters the container; the pty replaces it
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
        pipes.install_child_ends()
        # Nothing of the host but what the session needs: no pidfd or /proc dirfd of the
        # host's procfs, no host namespace fd, nothing crashcart's caller passed in.
        procfs.close_fds_except({0, 1, 2, *prep.ctx.fds()})
        child.run_plan(prep.ctx, prep.plan)
        faults.point("session:after-setup")
        code = child.supervise(prep.ctx, prep.final, FORWARDED)
    except child.StepFailed as e:
        _report(prep.ctx.sock, e.code, f"failed to attach: {e}")
    except BaseException as e:  # noqa: BLE001 - the child must never unwind into the host's code
        _report(prep.ctx.sock, EXIT_CRASHCART, f"failed to attach: {e!r}")
    os._exit(code)


def _report(sock: _socket.socket, code: int, message: str) -> None:
    try:
        sock.send(f"E{code}:{message}".encode())
    except OSError:
        pass


def _supervise(prep: plan.Prepared, pid: int, pidfd: int, pipes: relay.Pipes) -> int:
    forward = _Forwarder(pidfd)
    old_handlers = {signum: sig.handle(signum, forward) for signum in FORWARDED}
    for signum, handler in old_handlers.items():
        if handler == sig.SIG_IGN:  # ignored by whoever started us (nohup): keep it so
            sig.handle(signum, sig.SIG_IGN)
    mode = None
    master = None
    try:
        master, error, started = _read_messages(prep.host_sock, pid)
        if master is not None:
            mode = terminal.make_raw(0) if os.isatty(0) else None

            def winch(signum: int, frame: object) -> None:
                terminal.copy_winsize(0, master)
                record.resized(0)

            sig.handle(sig.SIGWINCH, winch)
            terminal.copy_winsize(0, master)
            tap = record.active.tap if record.active else None
            relay.pump([(0, master)], [(master, 1)], pidfd, tap=tap)
        elif pipes.active():
            relay.pump(pipes.inputs(), pipes.outputs(), pidfd, pipes.close_host_end)
        _, status = os.waitpid(pid, 0)
    finally:
        terminal.restore(0, mode)
        for signum, handler in old_handlers.items():
            sig.handle(signum, handler)
        if master is not None:
            os.close(master)
        pipes.close_host_ends()
    code = os.waitstatus_to_exitcode(status)
    if code < 0 and started is not None:
        _sweep(started)
    if code == -sig.SIGKILL and not prep.pinned.alive():
        # The kernel ends every process of a pid namespace whose init dies, ours included.
        gone = TargetGone(f"{prep.target.describe()} ended; the session ended with it")
        gone.exit_code = 128 + sig.SIGKILL
        raise gone
    if error:
        ecode, _, message = error.partition(":")
        if ecode == str(EXIT_NOT_FOUND):
            raise CommandNotFound(message)
        if ecode == str(EXIT_CANNOT_EXECUTE):
            raise CannotExecute(message)
        raise CrashcartError(message)
    if started is None:
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise CrashcartError(f"the session ended before the command started ({how})")
    return 128 - code if code < 0 else code


def _read_messages(
    sock: _socket.socket, pid: int
) -> tuple[int | None, str | None, tuple[int, int] | None]:
    """Until the command execs (every copy of the child's end is close-on-exec or closed by
    the supervisor, so we read EOF) or the child dies: the pty master, an error, and, once
    the command is about to exec, the session's mount namespace (None before that)."""
    master = None
    error = None
    started = None
    while True:
        data, fds = _recv(sock)
        if not data:
            return master, error, started
        kind, body = data[:1], data[1:].decode(errors="replace")
        if kind == b"P" and fds:
            master = fds[0]
        elif kind == b"E":
            error = body
        elif kind == b"X":
            started = _mnt_ns(pid) or (0, 0)
        for fd in fds[1:] if kind == b"P" else fds:
            os.close(fd)


def _mnt_ns(pid: int) -> tuple[int, int] | None:
    try:
        st = os.stat(f"{procfs.PROC}/{pid}/ns/mnt")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _sweep(session_ns: tuple[int, int]) -> None:
    """The supervisor was killed (by the container, say) before it could end the session:
    end what is left of it, found by the session's private mount namespace."""
    if session_ns == (0, 0):
        return
    for _ in range(100):
        left = [p for p in procfs.pids() if _mnt_ns(p) == session_ns]
        if not left:
            return
        for p in left:
            procfs.kill_quietly(p)
        time.sleep(0.01)


def _recv(sock: _socket.socket) -> tuple[bytes, list[int]]:
    try:
        msg, anc, _, _ = sock.recvmsg(4096, _socket.CMSG_SPACE(4 * 4))
    except (ConnectionResetError, InterruptedError):
        return b"", []
    fds: list[int] = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4)
            ]
    return msg, fds


class _Forwarder:
    """Signals to crashcart go to the command (through the supervisor). Asked a second time
    to stop (SIGTERM/SIGINT), crashcart ends the whole session; a third time, it kills the
    supervisor outright."""

    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd
        self.stops = 0

    def __call__(self, signum: int, frame: object) -> None:
        if signum in (sig.SIGTERM, sig.SIGINT):
            self.stops += 1
            if self.stops == 2:
                signum = child.SIG_END
            elif self.stops > 2:
                signum = sig.SIGKILL
        try:
            libc.pidfd_send_signal(self.pidfd, signum)
        except ProcessLookupError:
            pass

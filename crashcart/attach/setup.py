"""The setup process: every privileged step of a session, where the container cannot see.

Forked by crashcart's host process and left in the host's pid namespace, it runs the plan
(namespace joins, the session's mount namespace, the pty), then setns(pid) and, for a
target with its own user namespace, setns(user); it drops to the session's capability
profile, scrubs what a container could read of it (command line, environment), closes
everything but what the supervisor needs, and only then forks the supervisor into the
target's pid namespace; then it waits for it and reports its status to the host. (The host
moves the supervisor into the target's cgroups from outside; this process never joins
them, so it is never frozen or limited with the target.)
"""

from __future__ import annotations

import _socket
import os
import select

from crashcart import faults
from crashcart.attach import child, wire
from crashcart.attach.context import Context, Step, StepFailed
from crashcart.errors import EXIT_CRASHCART
from crashcart.linux import caps, libc, ns, procfs, proctitle, sig
from crashcart.linux.fd import close_all

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn


REAP_OK = sig.SIGUSR1


def setup_timeout() -> float:
    """How long a session's setup may take ($CRASHCART_SETUP_TIMEOUT, seconds)."""
    try:
        return max(0.5, float(os.environ.get("CRASHCART_SETUP_TIMEOUT", "30")))
    except ValueError:
        return 30.0


def _nothing(ctx: Context) -> None:
    pass


# In a plan, the steps after this one run in the setup process once the supervisor exists
# (a session with a pid namespace of its own: its procfs needs that namespace's PID 1).
AFTER_FORK = Step("fork the supervisor; then, in the setup process:", _nothing)


def setup_main(ctx: Context, plan: list[Step], final: list[Step], title: str,
               stdio: list[int], areas: tuple[int, int, int, int]) -> NoReturn:  # fmt: skip
    """The setup process's whole life; never returns into the host's code."""
    code = EXIT_CRASHCART
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
        ctx.host_pid = os.getppid()
        sig.block(REAP_OK)  # the host's "I hold the supervisor's pidfd" waits here, pending
        faults.point("session:setup-start")
        os.setsid()  # no controlling terminal: nothing after us can reach the operator's
        # Nothing of the host's process but what the session needs (its end of our socket
        # included: with it gone, the socket's hang-up tells us if crashcart died before
        # PDEATHSIG was armed).
        procfs.close_fds_except({0, 1, 2, *ctx.fds(), *stdio})
        if peer_gone(ctx.sock):
            os._exit(EXIT_CRASHCART)
        for signum in (sig.SIGPIPE, sig.SIGXFSZ, *child.FORWARDED):
            sig.handle(signum, sig.SIG_DFL)  # Python ignores SIGPIPE; exec keeps ignores
        _install_stdio(stdio)
        before, after = split_plan(plan)
        child.run_plan(ctx, before)
        faults.point("session:after-setup")
        code = _start_supervisor(ctx, final, title, areas, after)
    except StepFailed as e:
        _failed(ctx.sock, e.code, f"failed to attach: {e}")
    except BaseException as e:  # noqa: BLE001 - the child must never unwind into the host's code
        _failed(ctx.sock, EXIT_CRASHCART, f"failed to attach: {e!r}")
    os._exit(code)


def split_plan(plan: list[Step]) -> tuple[list[Step], list[Step]]:
    """The steps before the supervisor's fork, and those after it (see AFTER_FORK)."""
    if AFTER_FORK not in plan:
        return plan, []
    i = plan.index(AFTER_FORK)
    return plan[:i], plan[i + 1 :]


def _install_stdio(stdio: list[int]) -> None:
    """0-2: the session's pipes (no pty) or /dev/null (pty: the command gets the pty)."""
    if not stdio:
        null = os.open("/dev/null", os.O_RDWR)
        stdio = [null, null, null]
    for fd, src in enumerate(stdio):
        os.dup2(src, fd)
    for src in set(stdio):
        if src > 2:
            os.close(src)


def _session_null() -> None:
    """Replace the host's /dev/null (pty sessions) with the session's own before anything
    the container can see inherits 0-2."""
    try:
        null = os.open("/dev/null", os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        r, w = os.pipe()
        os.close(w)
        null = r
    st = os.fstat(null)
    if not (st.st_mode & 0o170000 == 0o020000 and st.st_rdev == os.makedev(1, 3)):
        os.close(null)
        r, w = os.pipe()
        os.close(w)
        null = r
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _start_supervisor(ctx: Context, final: list[Step], title: str,
                      areas: tuple[int, int, int, int], after: list[Step]) -> int:  # fmt: skip
    if ctx.tty:
        _session_null()
    _enter_pid_and_user(ctx)
    _scrub(title, areas)
    _drop_privileges(ctx)
    # A change of credentials (setns(user), the capability drop) clears the parent-death
    # signal: arm it again, and make sure crashcart did not die in between.
    libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
    if os.getppid() != ctx.host_pid:
        return EXIT_CRASHCART
    # Nothing the supervisor inherits may lead to the host: the socket goes now (the host
    # reads its EOF as "setup done") and from here on the setup process speaks to the host
    # by signals and by its exit status only. A plan with steps after the fork (a session
    # with namespaces of its own: no container sees it) keeps it until they are done.
    if not after:
        ctx.sock.close()
    faults.point("session:before-supervisor")
    try:
        pid = os.fork()
    except OSError as e:
        raise StepFailed("fork into the target's pid namespace", e) from None
    if pid == 0:
        code = EXIT_CRASHCART
        try:
            ctx.sock.close()
            sig.unblock(REAP_OK)
            code = child.supervisor_main(ctx, final)
        finally:
            os._exit(code)
    if after:
        try:
            child.run_plan(ctx, after)  # the supervisor waits for the host's go, after EOF
        except StepFailed as e:
            procfs.kill_quietly(pid)
            _failed(ctx.sock, e.code, f"failed to attach: {e}")
            raise
        ctx.sock.close()
    close_all((ctx.report_w, ctx.pty_slave, ctx.go_r))
    os.closerange(0, 3)
    return _watch(pid)


def _enter_pid_and_user(ctx: Context) -> None:
    """setns(pid) affects only children: the fork below lands in the target's pid
    namespace. The user namespace last: from then on every capability is its own."""
    try:
        ns.join(ctx.nss, ("pid", "user"))
    except OSError as e:
        raise StepFailed("setns pid user", e) from None
    ctx.nss.close()
    close_all((ctx.root_fd,))
    ctx.root_fd = -1


def _scrub(title: str, areas: tuple[int, int, int, int]) -> None:
    """Anyone in the container may read the supervisor's cmdline and environ: the title
    replaces the host's command line, and the environment goes."""
    proctitle.scrub(title, areas)
    os.environ.clear()


def _drop_privileges(ctx: Context) -> None:
    """The bounding set becomes the profile's (what the command's exec gives a root
    process); effective and permitted keep the profile plus what the supervisor and the
    command need before exec (CAP_KILL; CAP_SETUID/SETGID for --user). Nothing inheritable,
    nothing ambient."""
    effective, permitted, _ = caps.current()
    if ctx.keep_caps is None:
        caps.set_current(effective, permitted, 0)
        return
    caps.drop_bounding(ctx.keep_caps)
    keep = ctx.keep_caps | ctx.extra_caps
    caps.set_current(effective & keep, permitted & keep, 0)


def _watch(pid: int) -> int:
    """Wait until the host holds the supervisor's pidfd (it finds the supervisor among our
    children and sends REAP_OK: until we reap it, its PID cannot be reused), then wait for
    it and end the way it ended, so our exit status is its exit status."""
    if not sig.wait(REAP_OK, setup_timeout() + 30):  # crashcart is gone or stuck: end it all
        procfs.kill_quietly(pid)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        if -code not in (sig.SIGKILL, sig.SIGSTOP):
            sig.handle(-code, sig.SIG_DFL)
            sig.unblock(-code)
        os.kill(os.getpid(), -code)  # non-dumpable: no core file
        return EXIT_CRASHCART
    return code


def _failed(sock: _socket.socket, code: int, message: str) -> None:
    try:
        sock.send(wire.failure(code, message))
    except OSError:
        pass


def peer_gone(sock: _socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return bool(poller.poll(0))

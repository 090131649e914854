"""The only code that runs inside the target: the session supervisor and the command.

Both are forked by the setup process once everything privileged is done: they are born in
the target's pid namespace, inside the session's private mount namespace, with the
profile's capabilities and no fd of the host. The container can see them (and, with
CAP_SYS_PTRACE, control them): nothing here may trust the container or wait on it without
a bound. No module may be imported any more (after pivot_root its source is unreachable).
"""

from __future__ import annotations

import errno
import os
import select

from crashcart import faults
from crashcart.attach import wire
from crashcart.attach.context import Context, Step, StepFailed, step
from crashcart.errors import EXIT_CANNOT_EXECUTE, EXIT_CRASHCART, EXIT_NOT_FOUND
from crashcart.linux import caps, libc, procfs, sig, terminal
from crashcart.linux.fd import close_quietly, closing

# "End the session now": the supervisor's parent-death signal, and what the host sends when
# asked twice to stop. The supervisor kills the command and everything it left running.
SIG_END = sig.SIGRTMIN
FORWARDED = (sig.SIGINT, sig.SIGTERM, sig.SIGHUP, sig.SIGQUIT, sig.SIGUSR1, sig.SIGUSR2)


def supervisor_main(ctx: Context, final: list[Step]) -> int:
    """The supervisor: the command's parent and the session's subreaper.

    Orphans re-parent to the nearest subreaper of their own pid namespace, which no host
    process is: without this process they would become the target's children (and zombies,
    if its init does not reap). When the command exits, whatever it left running in the
    session is killed and reaped, so the private mount namespace and the toolbox mount go
    away with the session. `ctx.go_r` is read once: a byte when the host has moved us into
    the target's cgroups, EOF if it died. Returns the command's status as exit code.
    """
    libc.prctl(libc.PR_SET_PDEATHSIG, SIG_END)
    sig.handle(SIG_END, sig.SIG_DFL)
    faults.point("session:child-start")
    if os.read(ctx.go_r, 1) != b"G":
        return EXIT_CRASHCART
    os.close(ctx.go_r)
    ctx.go_r = -1
    libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    supervisor = os.getpid()
    gate, opener = os.pipe2(os.O_CLOEXEC)  # the command execs once this process is bare
    try:
        pid = os.fork()
    except BlockingIOError:  # EAGAIN: we are in the target's cgroups, at its pids limit
        return report(ctx, EXIT_CRASHCART, "failed to attach: fork the command: the target's "
                      "cgroup allows no more processes (its pids limit); --no-cgroup runs the "
                      "session outside it")  # fmt: skip
    if pid == 0:
        code = EXIT_CRASHCART
        try:
            os.close(opener)
            code = _command(ctx, final, supervisor, gate)
        finally:
            os._exit(code)
    os.close(gate)
    for signum in FORWARDED:
        sig.handle(signum, lambda signum, _frame: procfs.kill_quietly(pid, signum))
    sig.handle(SIG_END, lambda _signum, _frame: procfs.kill_quietly(pid, sig.SIGKILL))
    close_quietly((ctx.report_w, ctx.pty_slave))
    _detach_stdio()
    caps.reduce_to(caps.mask(("kill",)))
    os.close(opener)
    while True:
        wpid, status = os.waitpid(-1, 0)
        if wpid == pid:
            break
    _end_leftovers()
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _command(ctx: Context, final: list[Step], supervisor: int, gate: int) -> int:
    libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
    if os.getppid() != supervisor:
        return EXIT_CRASHCART
    for signum in (sig.SIGPIPE, sig.SIGXFSZ, sig.SIGINT, sig.SIGTERM):
        sig.handle(signum, sig.SIG_DFL)
    try:
        if ctx.pty_slave >= 0:
            terminal.make_controlling(ctx.pty_slave)
            ctx.pty_slave = -1
        run_plan(ctx, final)
    except StepFailed as e:
        return report(ctx, e.code, f"failed to attach: {e}")
    # A change of uid or capabilities clears the parent-death signal: arm it again.
    libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
    os.read(gate, 1)  # EOF when the supervisor has dropped what it held
    os.close(gate)
    if os.getppid() != supervisor:
        return EXIT_CRASHCART
    return exec_command(ctx)


@step("drop to the profile's capabilities, set uid/gid")
def set_credentials(ctx: Context) -> None:
    """The bounding set is already the profile's (the setup process dropped it); here the
    effective and permitted sets lose what the supervisor needed beyond it (CAP_KILL, and
    CAP_SETUID/CAP_SETGID for --user), after the uid change they served."""
    if ctx.gid is not None:
        if ctx.groups is not None:
            os.setgroups(ctx.groups)
        os.setresgid(ctx.gid, ctx.gid, ctx.gid)
    if ctx.uid is not None:
        os.setresuid(ctx.uid, ctx.uid, ctx.uid)
    if ctx.keep_caps is not None:
        effective, permitted, _ = caps.current()
        caps.set_current(effective & ctx.keep_caps, permitted & ctx.keep_caps, 0)
    else:
        caps.clear_inheritable()


@step("apply the target's LSM label")
def apply_label(ctx: Context) -> None:
    """The target's AppArmor/SELinux label for the exec'd command."""
    if ctx.label is None:
        return
    value = ctx.label if ":" in ctx.label else f"exec {ctx.label}"
    with closing(os.open("/proc/thread-self/attr/exec", os.O_WRONLY | os.O_CLOEXEC)) as fd:
        os.write(fd, value.encode())


def report(ctx: Context, code: int, message: str) -> int:
    """Tell the host why the command did not start (best effort); return `code`."""
    try:
        os.write(ctx.report_w, wire.session_line(wire.FAILED, f"{code}:{message}".encode()))
    except OSError:
        pass
    return code


def _detach_stdio() -> None:
    """Point 0-2 at /dev/null: the session's pipes stay with the command alone."""
    try:
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        os.closerange(0, 3)
        return
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def _end_leftovers() -> None:
    """SIGKILL whatever the command left running, and reap it. All of it descends from this
    process (orphans re-parent to the subreaper), which /proc/PID/stat tells without the
    ptrace access that reading another user's /proc/PID/ns would need."""
    me = os.getpid()
    while True:
        for pid in _descendants(me):
            procfs.kill_quietly(pid)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        select.select([], [], [], 0.01)  # a child being killed: let it die


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with closing(os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)) as fd:
                data = os.read(fd, 1024)
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[1].isdigit():
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            out.append(pid)
            todo.append(pid)
    return out


def run_plan(ctx: Context, steps: list[Step]) -> None:
    for s in steps:
        try:
            s.run(ctx)
        except OSError as e:
            raise StepFailed(s.what, e) from None
        if faults.ARMED:
            faults.point(f"session:after-{s.run.__name__}")


def exec_command(ctx: Context) -> int:
    """chdir and exec; returns only on failure, with docker exec's exit code (127 not found,
    126 cannot execute), after telling the host why."""
    try:
        os.chdir(ctx.workdir)
    except OSError as e:
        if ctx.workdir_given:
            return report(
                ctx,
                EXIT_CRASHCART,
                f"cannot change to working directory {ctx.workdir}: {e.strerror}",
            )
        os.chdir(ctx.fallback_dir)  # the target's own cwd is gone or unreachable
    argv0 = ctx.argv[0]
    candidates = [argv0] if "/" in argv0 else _path_candidates(argv0, ctx.env)
    last: OSError | None = None
    try:
        os.write(ctx.report_w, wire.session_line(wire.EXEC))
    except OSError:
        pass
    for path in candidates:
        try:
            os.execve(path, ctx.argv, ctx.env)
        except OSError as e:
            if last is None or e.errno != errno.ENOENT:
                last = e
    if last is None or last.errno in (errno.ENOENT, errno.ENOTDIR):
        where = "" if "/" in argv0 else " in $PATH"
        return report(ctx, EXIT_NOT_FOUND, f"{argv0}: executable file not found{where}")
    return report(ctx, EXIT_CANNOT_EXECUTE, f"{argv0}: cannot execute: {last.strerror}")


def _path_candidates(name: str, env: dict[str, str]) -> list[str]:
    return [os.path.join(d or ".", name) for d in env.get("PATH", "").split(":")]

"""The in-namespace side of a session: the only code that runs after entering the target.

It runs in a child forked into the target's pid namespace. Everything it needs was opened
on the host beforehand (namespace fds, the target's root, the detached toolbox mount,
cgroup files): after pivot_root no host path is reachable, and no module may be imported
any more (its source file would not be found).
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import stat
import sys

from crashcart import faults
from crashcart.errors import EXIT_CANNOT_EXECUTE, EXIT_CRASHCART, EXIT_NOT_FOUND
from crashcart.linux import caps, libc, mountapi, ns, sig, terminal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PR_SET_CHILD_SUBREAPER = 36
# "End the session now": the supervisor's parent-death signal, and what the host sends when
# asked twice to stop. The supervisor kills the command and everything it left running.
SIG_END = sig.SIGRTMIN
PROC_ATTRS = libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV | libc.MOUNT_ATTR_NOEXEC


class Context:
    """What the child needs, opened on the host before the fork."""

    def __init__(
        self,
        nss: ns.Namespaces,
        root_fd: int,  # the target's root directory (O_PATH); right for chroot runtimes too
        toolbox_fd: int,  # detached read-only toolbox mount
        cgroup_fds: list[int],  # cgroup.procs of each of the target's cgroups, for writing
        sock: _socket.socket,  # to the host: pty master, errors; closed on exec
        tty: bool,
        argv: list[str],
        env: dict[str, str],
        workdir: str,
        uid: int | None,
        gid: int | None,
        groups: list[int] | None,  # None: setgroups is denied in the target's user ns
        keep_caps: int | None,  # bounding set to keep; None keeps everything
        label: str | None,  # LSM label of the target to apply on exec
    ) -> None:
        self.nss = nss
        self.root_fd = root_fd
        self.toolbox_fd = toolbox_fd
        self.cgroup_fds = cgroup_fds
        self.sock = sock
        self.tty = tty
        self.winsize: bytes | None = None
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.workdir_given = False  # -w: failing to enter it is an error, not a fallback
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.keep_caps = keep_caps
        self.label = label
        self.target_tree = -1  # detached copy of the target's root tree
        self.pty_slave = -1

    def fds(self) -> list[int]:
        return [
            *self.nss.fds.values(), self.root_fd, self.toolbox_fd, *self.cgroup_fds,
            self.sock.fileno(),
        ]  # fmt: skip


class Step:
    """One thing the child does, with the words --debug prints for it."""

    __slots__ = ("what", "run")

    def __init__(self, what: str, run: Callable[[Context], None]) -> None:
        self.what = what
        self.run = run

    def __repr__(self) -> str:
        return f"Step({self.what!r})"


class StepFailed(Exception):
    def __init__(self, step: str, err: BaseException, code: int = EXIT_CRASHCART) -> None:
        super().__init__(f"{step}: {err}")
        self.code = code


def join_cgroups(ctx: Context) -> None:
    """Writing 0 to cgroup.procs moves the writer: the session is accounted and limited
    with the container, and `ps`/`top` inside see it where the container's processes are."""
    for fd in ctx.cgroup_fds:
        os.write(fd, b"0")
    _close_all(ctx.cgroup_fds)  # host cgroupfs files: nothing later in the session needs them


def join_namespaces(kinds: tuple[str, ...]) -> Callable[[Context], None]:
    def join_namespaces(ctx: Context) -> None:
        ns.join(ctx.nss, kinds)

    return join_namespaces


def clone_target_root(ctx: Context) -> None:
    """Copy the target's mount tree while still in its namespace (open_tree only clones
    mounts of the caller's own namespace), and make the copy private so nothing mounted
    under /target in the session can propagate back into the container."""
    ctx.target_tree = mountapi.clone_tree(ctx.root_fd, "")
    libc.mount_setattr(
        ctx.target_tree, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, 0, 0, libc.MS_PRIVATE
    )


def private_mount_namespace(ctx: Context) -> None:
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


def pivot_to_toolbox(ctx: Context) -> None:
    """Stack the toolbox on / and pivot into it; the old root (which, for chroot-based
    runtimes, holds the host's filesystems) is detached, not merely hidden."""
    libc.move_mount(ctx.toolbox_fd, "", libc.AT_FDCWD, "/", libc.MOVE_MOUNT_F_EMPTY_PATH)
    os.fchdir(ctx.toolbox_fd)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def attach_target(ctx: Context) -> None:
    mountapi.attach(ctx.target_tree, libc.AT_FDCWD, "/target")


def mount_proc(ctx: Context) -> None:
    """A procfs of the target's pid namespace (we were forked into it)."""
    fd = mountapi.fs_mount("proc", {}, PROC_ATTRS)
    mountapi.attach(fd, libc.AT_FDCWD, "/proc")
    os.close(fd)


# Names every program takes at their word: in the session they are crashcart's own, never
# the container's. A container that made /dev/tty a file or FIFO it writes could feed
# keystrokes to `less` or `vi` in the session (`!cmd`); a /dev/null it reads would collect
# what the operator's tools throw away.
STANDARD_NODES = {
    "null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
    "tty": (5, 0),
}  # fmt: skip
STANDARD_LINKS = {
    "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
}  # fmt: skip


def build_dev(ctx: Context) -> None:
    """/dev: a private tmpfs holding a bind of each entry of the target's /dev, plus the
    toolbox at /dev/crashcart (where its relocated programs find their loader). The target's
    /dev itself is never written to; the standard nodes and links are crashcart's own."""
    fd = mountapi.fs_mount("tmpfs", {"mode": "0755", "size": "4m"}, libc.MOUNT_ATTR_NOEXEC)
    mountapi.attach(fd, libc.AT_FDCWD, "/dev")
    os.close(fd)
    dev = os.open("/dev", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        src = os.open("/target/dev", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        src = -1
    try:
        if src >= 0:
            for entry in os.scandir(src):
                if ctx.tty and entry.name in ("pts", "ptmx"):
                    continue
                if entry.name in STANDARD_NODES or entry.name in STANDARD_LINKS:
                    continue
                _mirror(entry, src, dev)
        _standard_entries(src, dev)
        os.mkdir("crashcart", 0o755, dir_fd=dev)
        toolbox = mountapi.clone_tree(libc.AT_FDCWD, "/", False)
        mountapi.attach(toolbox, dev, "crashcart")
        os.close(toolbox)
    finally:
        if src >= 0:
            os.close(src)
        os.close(dev)


def _standard_entries(src: int, dev: int) -> None:
    for name, (major, minor) in STANDARD_NODES.items():
        rdev = os.makedev(major, minor)
        try:
            os.mknod(name, stat.S_IFCHR | 0o666, rdev, dir_fd=dev)
            os.chmod(name, 0o666, dir_fd=dev)  # whatever the umask
        except OSError:  # a device cgroup that forbids mknod: the target's node, if genuine
            _bind_if_device(src, dev, name, rdev)
    for name, link in STANDARD_LINKS.items():
        os.symlink(link, name, dir_fd=dev)


def _bind_if_device(src: int, dev: int, name: str, rdev: int) -> None:
    if src < 0:
        return
    try:
        tree = mountapi.clone_tree(src, name, recursive=False)
    except OSError:
        return
    try:
        st = os.fstat(tree)  # the very inode that would be bound, not a path checked earlier
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dev))
            mountapi.attach(tree, dev, name)
    except OSError:
        pass
    finally:
        os.close(tree)


def _mirror(entry: os.DirEntry[str], src: int, dev: int) -> None:
    """One /dev entry: symlinks copied, everything else bind-mounted (same inode, so the
    device cgroup and the node's owner and mode apply as in the container)."""
    name = entry.name
    try:
        if entry.is_symlink():
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dev)
            return
        tree = mountapi.clone_tree(src, name, recursive=True)
        try:
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(name, 0o755, dir_fd=dev)
            else:
                os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dev))
            mountapi.attach(tree, dev, name)
        finally:
            os.close(tree)
    except OSError:
        pass  # an entry that vanished or changed under us: the session goes without it


def bind_dev_into_target(ctx: Context) -> None:
    """The same /dev at /target/dev, so `chroot /target` (container-shell) finds the
    toolbox at /dev/crashcart; the container's own /dev is untouched."""
    tree = mountapi.clone_tree(libc.AT_FDCWD, "/dev")
    try:
        mountapi.attach(tree, libc.AT_FDCWD, "/target/dev")
    except (FileNotFoundError, NotADirectoryError):
        pass
    finally:
        os.close(tree)


def bind_sys(ctx: Context) -> None:
    try:
        tree = mountapi.clone_tree(libc.AT_FDCWD, "/target/sys")
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        mountapi.attach(tree, libc.AT_FDCWD, "/sys")
    finally:
        os.close(tree)


def mount_tmp(ctx: Context) -> None:
    """The session's own writable places: side files of its tools (history, swap, caches,
    configuration) go here, never into the target or the read-only toolbox."""
    for path, mode in (("/tmp", "1777"), ("/run", "0755"), ("/root", "0700")):
        fd = mountapi.fs_mount("tmpfs", {"mode": mode}, libc.MOUNT_ATTR_NOSUID)
        try:
            mountapi.attach(fd, libc.AT_FDCWD, path)
        except FileNotFoundError:
            if path != "/root":  # an image without /root: HOME stays read-only
                raise
        finally:
            os.close(fd)


def allocate_pty(ctx: Context) -> None:
    """A devpts instance of our own at /dev/pts; the master goes to the host."""
    fd = mountapi.fs_mount(
        "devpts",
        {"ptmxmode": "0666", "mode": "0620"},
        libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NOEXEC,
    )
    os.mkdir("/dev/pts", 0o755)
    mountapi.attach(fd, libc.AT_FDCWD, "/dev/pts")
    os.close(fd)
    os.symlink("pts/ptmx", "/dev/ptmx")
    master, slave = terminal.open_pty("/dev/pts/ptmx")
    if ctx.winsize:
        terminal.set_winsize(slave, ctx.winsize)
    rights = master.to_bytes(4, sys.byteorder)
    ctx.sock.sendmsg([b"P"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])
    os.close(master)
    ctx.pty_slave = slave


def join_user_namespace(ctx: Context) -> None:
    """Last: from here on we hold capabilities only inside the container's user namespace."""
    ns.join(ctx.nss, ("user",))


def set_credentials(ctx: Context) -> None:
    if ctx.keep_caps is not None:
        caps.drop_bounding(ctx.keep_caps)
    caps.clear_inheritable()
    if ctx.gid is not None:
        if ctx.groups is not None:
            os.setgroups(ctx.groups)
        os.setresgid(ctx.gid, ctx.gid, ctx.gid)
    if ctx.uid is not None:
        os.setresuid(ctx.uid, ctx.uid, ctx.uid)


def apply_label(ctx: Context) -> None:
    """The target's AppArmor/SELinux label for the exec'd command."""
    if ctx.label is None:
        return
    value = ctx.label if ":" in ctx.label else f"exec {ctx.label}"
    fd = os.open("/proc/thread-self/attr/exec", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def supervise(ctx: Context, final: list[Step], forwarded: tuple[int, ...]) -> int:
    """Fork the command and stay as its reaper, inside the session.

    Orphans re-parent to the nearest subreaper of their own pid namespace, which the host
    process is not: without this process they would become the target's children (and
    zombies, if its init does not reap). When the command exits, whatever it left running
    in the session is killed and reaped, so the private mount namespace and the toolbox
    mount go away with the session. Returns the command's status as an exit code.

    This process is visible in the container, so once the command is forked it keeps
    nothing a container process could use through it: no fd of the host (stdio included),
    no capability but CAP_KILL (bounding set too, and no_new_privs).
    """
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    supervisor = os.getpid()
    gate, opener = os.pipe2(os.O_CLOEXEC)  # the command execs once this process is bare
    try:
        pid = os.fork()
    except BlockingIOError:  # EAGAIN: we are in the target's cgroups, at its pids limit
        raise StepFailed(
            "fork the command",
            RuntimeError("the target's cgroup allows no more processes (its pids limit); "
                         "--no-cgroup runs the session outside it"),
        ) from None  # fmt: skip
    if pid == 0:
        code = EXIT_CRASHCART
        try:
            os.close(opener)
            code = _command(ctx, final, supervisor, gate)
        finally:
            os._exit(code)
    os.close(gate)
    for signum in forwarded:
        sig.handle(signum, lambda signum, _frame: _kill(pid, signum))
    sig.handle(SIG_END, lambda _signum, _frame: _kill(pid, sig.SIGKILL))
    # From here on the host's death ends the whole session (background jobs too), where
    # SIGKILL would have ended this process alone and orphaned the rest into the target.
    libc.prctl(libc.PR_SET_PDEATHSIG, SIG_END)
    if peer_gone(ctx.sock):
        _kill(pid, sig.SIGKILL)
    ctx.sock.close()
    ctx.nss.close()
    _close_all([ctx.root_fd, ctx.toolbox_fd, ctx.target_tree, ctx.pty_slave])
    _detach_stdio()
    caps.limit_to(caps.mask(("kill",)))
    os.close(opener)
    while True:
        wpid, status = os.waitpid(-1, 0)
        if wpid == pid:
            break
    _end_leftovers()
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def peer_gone(sock: _socket.socket) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return bool(poller.poll(0))


def _command(ctx: Context, final: list[Step], supervisor: int, gate: int) -> int:
    libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
    if os.getppid() != supervisor:
        return EXIT_CRASHCART
    for signum in (sig.SIGPIPE, sig.SIGXFSZ, sig.SIGINT, sig.SIGTERM):
        sig.handle(signum, sig.SIG_DFL)
    try:
        if ctx.pty_slave >= 0:
            terminal.make_controlling(ctx.pty_slave)
        run_plan(ctx, final)
    except StepFailed as e:
        return _fail(ctx, e.code, f"failed to attach: {e}")
    # A change of uid or capabilities clears the parent-death signal: arm it again.
    libc.prctl(libc.PR_SET_PDEATHSIG, sig.SIGKILL)
    os.read(gate, 1)  # EOF when the supervisor has dropped what it held
    os.close(gate)
    if os.getppid() != supervisor:
        return EXIT_CRASHCART
    return exec_command(ctx)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    fds.clear()


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _detach_stdio() -> None:
    """Point 0-2 at the session's /dev/null (crashcart's own node): the host's files,
    pipes or sockets stay with the command alone."""
    try:
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
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
            _kill(pid, sig.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        select.select([], [], [], 0.01)  # a child being killed: let it die


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            data = os.read(fd, 1024)
        except OSError:
            continue
        finally:
            os.close(fd)
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), ()):
            out.append(pid)
            todo.append(pid)
    return out


def run_plan(ctx: Context, steps: list[Step]) -> None:
    for step in steps:
        try:
            step.run(ctx)
        except OSError as e:
            raise StepFailed(step.what, e) from None
        if faults.ARMED:
            faults.point(f"session:after-{step.run.__name__}")


def exec_command(ctx: Context) -> int:
    """chdir and exec; returns only on failure, with docker exec's exit code (127 not found,
    126 cannot execute), after telling the host why."""
    try:
        os.chdir(ctx.workdir)
    except OSError as e:
        if ctx.workdir_given:
            return _fail(ctx, EXIT_CRASHCART, f"cannot change to working directory: {e}")
        os.chdir("/target")  # the target's own cwd is gone or unreachable
    argv0 = ctx.argv[0]
    candidates = [argv0] if "/" in argv0 else _path_candidates(argv0, ctx.env)
    last: OSError | None = None
    try:
        ctx.sock.send(b"X")  # setup is over: from here on a failure is the command's own
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
        return _fail(ctx, EXIT_NOT_FOUND, f"{argv0}: executable file not found{where}")
    return _fail(ctx, EXIT_CANNOT_EXECUTE, f"{argv0}: cannot execute: {last.strerror}")


def _path_candidates(name: str, env: dict[str, str]) -> list[str]:
    return [os.path.join(d or ".", name) for d in env.get("PATH", "").split(":")]


def _fail(ctx: Context, code: int, message: str) -> int:
    try:
        ctx.sock.send(f"E{code}:{message}".encode())
    except OSError:
        pass
    return code

"""The session's mount namespace, built by the setup process.

The setup process lives in the host's pid namespace: the container cannot see it, ptrace
it or read its /proc entries while it holds host root's capabilities, the host's fds and
(until setns) the host's mount namespace. It joins the target's namespaces, copies the
target's mount tree, unshares a private mount namespace, pivots into the toolbox and builds
the session's filesystem. Everything it needed was opened on the host beforehand.
"""

from __future__ import annotations

import os
import stat

from crashcart.attach import wire
from crashcart.attach.context import Context, Step, step
from crashcart.linux import libc, mountapi, ns, terminal
from crashcart.linux.fd import Fd, closing

PROC_ATTRS = libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV | libc.MOUNT_ATTR_NOEXEC
RESOLVE_SAFE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS


def join(kinds: tuple[str, ...]) -> Step:
    """A step that joins the target's `kinds` namespaces (those it does not share with us)."""

    @step(f"setns {' '.join(kinds)}")
    def join_namespaces(ctx: Context) -> None:
        ns.join(ctx.nss, kinds)

    return join_namespaces


@step("clone the target's root tree (private)")
def clone_target_root(ctx: Context) -> None:
    """Copy the target's mount tree while still in its namespace (open_tree only clones
    mounts of the caller's own namespace), and make the copy private so nothing mounted
    under /target in the session can propagate back into the container."""
    ctx.target_tree = mountapi.clone_tree(ctx.root_fd, "")
    libc.mount_setattr(
        ctx.target_tree, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, 0, 0, libc.MS_PRIVATE
    )


@step("take the target's own /proc (a procfs of its pid namespace, with its masks)")
def clone_target_proc(ctx: Context) -> None:
    """/proc for the session without a mount after the fork: the container's own procfs,
    cloned with whatever the runtime put over it (read-only /proc/sys, masked kcore...), if
    it really is a procfs of the target's pid namespace; else a fresh one for that pid
    namespace (procfs's pidns=, Linux >= 6.18), read-only; else none."""
    tree = _container_proc(ctx)
    if tree < 0:
        tree = _fresh_proc(ctx)
    ctx.proc_tree = tree


def _container_proc(ctx: Context) -> int:
    try:
        fd = libc.openat2(ctx.root_fd, "/proc", os.O_PATH | os.O_DIRECTORY, RESOLVE_SAFE)
    except OSError:
        return -1
    try:
        with closing(fd):
            tree = Fd(mountapi.clone_tree(fd, ""))
    except OSError:
        return -1
    with tree:
        if not _is_procfs_of_target(ctx, tree.fd):
            return -1
        flags = libc.AT_EMPTY_PATH | libc.AT_RECURSIVE
        libc.mount_setattr(tree.fd, "", flags, 0, 0, libc.MS_PRIVATE)
        return tree.take()


def _is_procfs_of_target(ctx: Context, tree: int) -> bool:
    """The target itself, found in this procfs under its PID inside, with its start time
    and its pid namespace: a tmpfs of fake files cannot produce an nsfs inode, and a procfs
    of another pid namespace has another process (or none) under that number."""
    pid = str(ctx.pid_inside)
    try:
        fd = os.open(f"{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=tree)
        with closing(fd):
            theirs = os.fstat(fd)
        with open(os.open(f"{pid}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=tree), "rb") as f:
            stat_line = f.read(4096)
    except OSError:
        return False
    ours = os.fstat(ctx.nss.fds["pid"]) if "pid" in ctx.nss.fds else None
    fields = stat_line[stat_line.rfind(b")") + 2 :].split()
    start = int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else -1
    same_ns = ours is not None and (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
    return same_ns and start == ctx.start_time


def _fresh_proc(ctx: Context) -> int:
    if "pid" not in ctx.nss.fds:
        return -1
    try:
        return mountapi.fs_mount(
            "proc", {}, PROC_ATTRS | libc.MOUNT_ATTR_RDONLY, fds={"pidns": ctx.nss.fds["pid"]}
        )
    except OSError:
        ctx.notes.append("no /proc in the session: the target has no procfs of its pid "
                         "namespace, and this kernel cannot make one from outside it")  # fmt: skip
        return -1


@step("unshare a private mount namespace, make / rprivate")
def private_mount_namespace(ctx: Context) -> None:
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)


@step("pivot_root into the toolbox (ro, nosuid, nodev)")
def pivot_to_toolbox(ctx: Context) -> None:
    """Stack the toolbox on / and pivot into it; the old root (which, for chroot-based
    runtimes, holds the host's filesystems) is detached, not merely hidden."""
    tree, ctx.toolbox_fd = ctx.toolbox_fd, -1
    pivot_onto(tree)


def pivot_onto(tree: int) -> None:
    """Stack the detached mount `tree` on /, pivot into it, detach the old root; `tree`
    is consumed (closed, on the error path too)."""
    with closing(tree):
        libc.move_mount(tree, "", libc.AT_FDCWD, "/", libc.MOVE_MOUNT_F_EMPTY_PATH)
        os.fchdir(tree)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


@step("attach the target's root at /target")
def attach_target(ctx: Context) -> None:
    tree, ctx.target_tree = ctx.target_tree, -1
    mountapi.attach_and_close(tree, libc.AT_FDCWD, "/target")


@step("attach the target's /proc at /proc")
def attach_proc(ctx: Context) -> None:
    if ctx.proc_tree >= 0:
        tree, ctx.proc_tree = ctx.proc_tree, -1
        mountapi.attach_and_close(tree, libc.AT_FDCWD, "/proc")


@step("enter the target's root (as nsenter -r does)")
def enter_root(ctx: Context) -> None:
    """The in-place plan: the target's own mount namespace and root, no private copy."""
    root, ctx.root_fd = ctx.root_fd, -1
    with closing(root):
        os.fchdir(root)
        libc.chroot(".")


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


@step("tmpfs /dev with binds of the target's /dev, toolbox at /dev/crashcart")
def build_dev(ctx: Context) -> None:
    """/dev: a private tmpfs holding a bind of each entry of the target's /dev, plus the
    toolbox at /dev/crashcart (where its relocated programs find their loader). The target's
    /dev itself is never written to; the standard nodes and links are crashcart's own."""
    fd = mountapi.fs_mount("tmpfs", {"mode": "0755", "size": "4m"}, libc.MOUNT_ATTR_NOEXEC)
    mountapi.attach_and_close(fd, libc.AT_FDCWD, "/dev")
    try:
        src = os.open("/target/dev", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        src = -1
    with Fd(src), closing(_open_path("/dev")) as dev:
        if src >= 0:
            for entry in os.scandir(src):
                if _skip_in_dev(ctx, entry.name):
                    continue
                _mirror(entry, src, dev)
        _standard_entries(src, dev)
        os.mkdir("crashcart", 0o755, dir_fd=dev)
        toolbox = mountapi.clone_tree(libc.AT_FDCWD, "/", recursive=False)
        mountapi.attach_and_close(toolbox, dev, "crashcart")


def _open_path(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _skip_in_dev(ctx: Context, name: str) -> bool:
    """Entries of the target's /dev the session does not bind: its own pty (with -t),
    the standard nodes and links, and crashcart (the session's own toolbox goes there)."""
    if ctx.tty and name in ("pts", "ptmx"):
        return True
    return name in STANDARD_NODES or name in STANDARD_LINKS or name == "crashcart"


def _touch(name: str, dir_fd: int) -> None:
    """A new empty file to bind a non-directory onto."""
    os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600, dir_fd=dir_fd))


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
        with closing(tree):
            st = os.fstat(tree)  # the very inode that would be bound, not a path checked earlier
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev:
                _touch(name, dev)
                mountapi.attach(tree, dev, name)
    except OSError:
        pass


def _mirror(entry: os.DirEntry[str], src: int, dev: int) -> None:
    """One /dev entry: symlinks copied, everything else bind-mounted (same inode, so the
    device cgroup and the node's owner and mode apply as in the container)."""
    name = entry.name
    try:
        if entry.is_symlink():
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dev)
            return
        with closing(mountapi.clone_tree(src, name, recursive=True)) as tree:
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(name, 0o755, dir_fd=dev)
            else:
                _touch(name, dev)
            mountapi.attach(tree, dev, name)
    except OSError:
        pass  # an entry that vanished or changed under us: the session goes without it


@step("bind /dev at /target/dev")
def bind_dev_into_target(ctx: Context) -> None:
    """The same /dev at /target/dev, so `chroot /target` (container-shell) finds the
    toolbox at /dev/crashcart; the container's own /dev is untouched."""
    tree = mountapi.clone_tree(libc.AT_FDCWD, "/dev")
    try:
        mountapi.attach_and_close(tree, libc.AT_FDCWD, "/target/dev")
    except (FileNotFoundError, NotADirectoryError):
        pass


@step("bind /target/sys at /sys")
def bind_sys(ctx: Context) -> None:
    try:
        tree = mountapi.clone_tree(libc.AT_FDCWD, "/target/sys")
    except (FileNotFoundError, NotADirectoryError):
        return
    mountapi.attach_and_close(tree, libc.AT_FDCWD, "/sys")


@step("tmpfs at /tmp, /run and /root")
def mount_tmp(ctx: Context) -> None:
    """The session's own writable places: side files of its tools (history, swap, caches,
    configuration) go here, never into the target or the read-only toolbox."""
    for path, mode in (("/tmp", "1777"), ("/run", "0755"), ("/root", "0700")):
        fd = mountapi.fs_mount("tmpfs", {"mode": mode}, libc.MOUNT_ATTR_NOSUID)
        try:
            mountapi.attach_and_close(fd, libc.AT_FDCWD, path)
        except FileNotFoundError:
            if path != "/root":  # an image without /root: HOME stays read-only
                raise


@step("devpts instance at /dev/pts, pty to the host")
def allocate_pty(ctx: Context) -> None:
    """A devpts instance of our own at /dev/pts; the master goes to the host."""
    with Fd(_devpts()) as fd:
        os.mkdir("/dev/pts", 0o755)
        mountapi.attach_and_close(fd.take(), libc.AT_FDCWD, "/dev/pts")
    os.symlink("pts/ptmx", "/dev/ptmx")
    _open_pty(ctx, "/dev/pts/ptmx", None)


@step("a pty from a devpts instance mounted nowhere, master to the host")
def detached_pty(ctx: Context) -> None:
    """The in-place plan never mounts anything in the container: the pty comes from a
    detached devpts instance (its files are reached through the mount fd)."""
    with closing(_devpts()) as fd:
        _open_pty(ctx, "ptmx", fd)


def _devpts() -> int:
    return mountapi.fs_mount(
        "devpts",
        {"ptmxmode": "0666", "mode": "0620"},
        libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NOEXEC,
    )


def _open_pty(ctx: Context, ptmx: str, dir_fd: int | None) -> None:
    master, slave = terminal.open_pty(ptmx, dir_fd)
    ctx.pty_slave = slave  # the context owns it from here (the child's stdio)
    with closing(master):  # the host holds its own copy once sent
        if ctx.winsize:
            terminal.set_winsize(slave, ctx.winsize)
        wire.send(ctx.sock, wire.PTY, fd=master)

"""Plan steps for a session with namespaces of its own (a container with no process left:
post-mortem, replay), run by the setup process instead of the namespace joins.

The setup process unshares mnt, uts, ipc, net, cgroup and pid (pid affects only its
children: the supervisor it forks becomes PID 1 of the new namespace), names the uts
namespace after the container, brings up `lo` (the only interface a new net namespace
has), and builds the container's filesystem from the runtime's layer directories with an
overlay made by the mount API: read-only (every layer a lower layer, no upperdir) for a
post-mortem session, or over a private tmpfs upper layer for a replay, whose writes vanish
with it. Nothing is attached in the host's mount namespace: the overlay, the volumes and
the tmpfs are detached mounts until the private namespace exists. The procfs of the new pid
namespace can only be made once that namespace has a process (its PID 1, the supervisor):
that step runs in the setup process right after the fork (setup.AFTER_FORK).
"""

from __future__ import annotations

import _socket
import fcntl
import os
import struct

from crashcart.attach import mounts
from crashcart.attach.context import Context, Step, step
from crashcart.attach.mounts import PROC_ATTRS, STANDARD_LINKS, STANDARD_NODES
from crashcart.linux import libc, mountapi
from crashcart.linux.fd import Fd, closing

UNSHARED = (libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWNET
            | libc.CLONE_NEWCGROUP | libc.CLONE_NEWPID)  # fmt: skip
SIOCGIFFLAGS = 0x8913
O_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
RESOLVE_INSIDE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
ROOT_ATTRS = libc.MOUNT_ATTR_NOSUID | libc.MOUNT_ATTR_NODEV


class Layout:
    """What the session's filesystem is made of: host paths, read by the setup process
    while it still sees the host's mount namespace."""

    def __init__(self, layers: list[str], mounts: list[tuple[str, str]], hostname: str,
                 files: dict[str, bytes], *, writable: bool) -> None:  # fmt: skip
        self.layers = layers  # topmost first: the container's writable layer, then the image's
        self.mounts = mounts  # (host source, destination in the container), read-only
        self.hostname = hostname
        self.files = files  # path in the session (under /run/crashcart) -> contents
        self.writable = writable  # replay: a tmpfs upper layer over all of them
        self.mount_fds: list[tuple[int, str]] = []
        self.ns_dir = -1  # the setup process's /proc/self/ns, for pid_for_children


def unshare_namespaces(own_net: bool = True) -> Step:
    kinds = "mnt uts ipc net cgroup pid" if own_net else "mnt uts ipc cgroup pid"
    flags = UNSHARED if own_net else UNSHARED & ~libc.CLONE_NEWNET

    @step(f"unshare {kinds} (the session's own), make / rprivate")
    def unshare_own(ctx: Context) -> None:
        libc.unshare(flags)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)

    return unshare_own


def hostname(name: str, own_net: bool = True) -> Step:
    @step(f"hostname {name} in the session's uts namespace" + (", lo up" if own_net else ""))
    def set_hostname(ctx: Context) -> None:
        _socket.sethostname(name)
        if own_net:
            loopback_up()

    return set_hostname


def loopback_up() -> None:
    """A new network namespace has `lo`, down: up it (ioctl SIOCSIFFLAGS on a socket)."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | IFF_UP, b""))
    finally:
        s.close()


def overlay(layout: Layout) -> Step:
    how = "over a private tmpfs upper layer" if layout.writable else "read-only, no upperdir"
    n = len(layout.layers)

    @step(f"overlay of the container's {n} layer{'s' * (n != 1)} ({how}), detached")
    def make_overlay(ctx: Context) -> None:
        ctx.target_tree = overlay_mount(layout.layers, writable=layout.writable)

    return make_overlay


def overlay_mount(layers: list[str], *, writable: bool) -> int:
    """Each layer as `lowerdir+` (Linux >= 6.8: no colon-list parsing, no length limit of
    one option string). Read-only: an overlay needs two lower layers without an upper one,
    so a single layer is a plain read-only bind. Writable: upperdir and workdir are fds of a
    detached tmpfs (Linux >= 6.13), never a path anyone else can reach."""
    if len(layers) == 1 and not writable:
        return read_only_clone(layers[0])
    with closing(libc.fsopen("overlay")) as fsfd:
        for layer in layers:
            libc.fsconfig_string(fsfd, "lowerdir+", layer)
        with Fd(_tmpfs_upper(fsfd) if writable else -1):
            libc.fsconfig_create(fsfd)  # the tmpfs must still be open: overlay takes it here
            fd = Fd(libc.fsmount(fsfd))
    with fd:
        attrs = ROOT_ATTRS if writable else ROOT_ATTRS | libc.MOUNT_ATTR_RDONLY
        libc.mount_setattr(fd.fd, "", libc.AT_EMPTY_PATH, attrs)
        return fd.take()


def read_only_clone(source: str) -> int:
    """A detached recursive bind of `source`, read-only, nosuid, nodev."""
    with Fd(mountapi.clone_tree(libc.AT_FDCWD, source)) as fd:
        libc.mount_setattr(fd.fd, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE,
                           libc.MOUNT_ATTR_RDONLY | ROOT_ATTRS)  # fmt: skip
        return fd.take()


def _tmpfs_upper(fsfd: int) -> int:
    """upperdir and workdir on a new detached tmpfs; returns its mount fd."""
    with Fd(mountapi.fs_mount("tmpfs", {"mode": "0755"})) as tmp:
        for name in ("upper", "work"):
            os.mkdir(name, 0o755, dir_fd=tmp.fd)
            with closing(os.open(name, O_DIR, dir_fd=tmp.fd)) as fd:
                libc.fsconfig_fd(fsfd, f"{name}dir", fd)
        return tmp.take()


def clone_mounts(layout: Layout) -> Step:
    @step(f"clone the container's {len(layout.mounts)} volumes and binds (read-only)")
    def clone_volumes(ctx: Context) -> None:
        for source, dest in layout.mounts:
            try:
                fd = read_only_clone(source)
            except FileNotFoundError:
                ctx.notes.append(f"volume source {source} is gone: {dest} is left out")
                continue
            layout.mount_fds.append((fd, dest))

    return clone_volumes


def keep_ns_dir(layout: Layout) -> Step:
    @step("hold the setup process's /proc/self/ns (for the new pid namespace's procfs)")
    def open_ns_dir(ctx: Context) -> None:
        layout.ns_dir = os.open("/proc/self/ns", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    return open_ns_dir


def attach_mounts(layout: Layout, root: str) -> Step:
    @step(f"attach the volumes and binds at their places under {root}")
    def attach_volumes(ctx: Context) -> None:
        owned = [Fd(fd) for fd, _ in layout.mount_fds]
        dests = [dest for _, dest in layout.mount_fds]
        layout.mount_fds = []
        try:
            with closing(os.open(root, O_DIR)) as base:
                for fd, dest in zip(owned, dests, strict=True):
                    with fd:
                        _attach_inside(ctx, base, fd.fd, dest)
        finally:
            for fd in owned:  # those after a failed one
                fd.close()

    return attach_volumes


def _attach_inside(ctx: Context, base: int, fd: int, dest: str) -> None:
    """The mount point resolved as the container would (its symlinks cannot leave it)."""
    try:
        point = libc.openat2(base, dest, os.O_PATH | os.O_CLOEXEC, RESOLVE_INSIDE)
    except OSError as e:
        ctx.notes.append(f"no mount point {dest} in the container's files ({e.strerror}): "
                         "that volume is left out")  # fmt: skip
        return
    with closing(point):
        mountapi.attach(fd, point)


@step("pivot_root into the copy of the container (the old root detached)")
def pivot_to_copy(ctx: Context) -> None:
    tree, ctx.target_tree = ctx.target_tree, -1
    mounts.pivot_onto(tree)


@step("tmpfs /dev with crashcart's own standard nodes, toolbox at /dev/crashcart")
def own_dev(ctx: Context) -> None:
    """Nothing of the host's /dev and nothing the container's image put in its /dev:
    null, zero, full, random, urandom, tty and the fd links, made here."""
    fd = mountapi.fs_mount("tmpfs", {"mode": "0755", "size": "4m"}, libc.MOUNT_ATTR_NOEXEC)
    with Fd(fd) as owned:
        _ensure_dir("/dev")
        mountapi.attach_and_close(owned.take(), libc.AT_FDCWD, "/dev")
    for name, (major, minor) in STANDARD_NODES.items():
        os.mknod(f"/dev/{name}", 0o020666, os.makedev(major, minor))
        os.chmod(f"/dev/{name}", 0o666)  # whatever the umask
    for name, link in STANDARD_LINKS.items():
        os.symlink(link, f"/dev/{name}")
    os.mkdir("/dev/crashcart", 0o755)
    mountapi.attach_and_close(_toolbox_tree(ctx), libc.AT_FDCWD, "/dev/crashcart")


def _toolbox_tree(ctx: Context) -> int:
    """The toolbox: its detached mount if not attached yet (replay), else a clone of /."""
    if ctx.toolbox_fd >= 0:
        fd, ctx.toolbox_fd = ctx.toolbox_fd, -1
        return fd
    return mountapi.clone_tree(libc.AT_FDCWD, "/", recursive=False)


def _ensure_dir(path: str) -> None:
    """A mount point the copy lacks (a distroless image has no /dev, /proc): only in a
    writable copy, whose writes land in the session's tmpfs."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass


def write_files(layout: Layout) -> Step:
    @step("write the death record and the last log lines under /run/crashcart")
    def write_session_files(ctx: Context) -> None:
        os.makedirs("/run/crashcart", 0o755, exist_ok=True)
        for path, data in layout.files.items():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with closing(fd):
                os.write(fd, data)

    return write_session_files


def fresh_proc(layout: Layout, path: str) -> Step:
    @step(f"procfs of the session's pid namespace at {path} (read-only)")
    def mount_own_proc(ctx: Context) -> None:
        """After the fork: the new pid namespace exists once its PID 1 does."""
        ns_dir, layout.ns_dir = layout.ns_dir, -1
        with closing(ns_dir):
            nsfd = os.open("pid_for_children", os.O_RDONLY | os.O_CLOEXEC, dir_fd=ns_dir)
        with closing(nsfd):
            fd = mountapi.fs_mount("proc", {}, PROC_ATTRS | libc.MOUNT_ATTR_RDONLY,
                                   fds={"pidns": nsfd})  # fmt: skip
        with Fd(fd) as owned:
            _ensure_dir(path)
            mountapi.attach_and_close(owned.take(), libc.AT_FDCWD, path)

    return mount_own_proc

"""The host side's preparation of a session, and the session described as data.

`prepare()` opens everything the in-namespace child will need while we still see the
host (pidfd, namespace fds, the target's root, the detached toolbox mount, cgroup files)
and decides credentials, capabilities, environment and command. `steps()` lists what the
child will do, in order, so `--debug` can print it and tests can check it without root.
"""

from __future__ import annotations

import _socket
import os
import stat

from crashcart.attach import child
from crashcart.attach.options import DEBUG_CAPS, RC_FILE, SESSION_PATH, SessionOptions
from crashcart.errors import TargetError, TargetGone, UsageError
from crashcart.linux import caps, cgroups, libc, mountapi, ns, procfs
from crashcart.targets.model import Target, check_identity
from crashcart.toolbox import open_toolbox

NS_BEFORE_MOUNT = ("cgroup", "ipc", "uts", "net")


class TargetInfo:
    """What /proc says about the target, read once through the pinned /proc/PID dirfd."""

    def __init__(
        self,
        pid_inside: int,  # the target's PID as seen in its own pid namespace
        cap_bounding: int,
        cgroups: list[tuple[str, str, str]],
        setgroups_allowed: bool,
        label: str | None,
        cwd: str,
    ) -> None:
        self.pid_inside = pid_inside
        self.cap_bounding = cap_bounding
        self.cgroups = cgroups
        self.setgroups_allowed = setgroups_allowed
        self.label = label
        self.cwd = cwd


def read_target(pinned: procfs.Pinned) -> TargetInfo:
    fd = pinned.proc_fd
    try:
        status = procfs.read_text("status", fd)
        cgroups = procfs.parse_cgroup(procfs.read_text("cgroup", fd))
        setgroups = procfs.read_text("setgroups", fd).strip() != "deny"
        cwd = _inside(os.readlink("cwd", dir_fd=fd), os.readlink("root", dir_fd=fd))
    except (FileNotFoundError, ProcessLookupError):
        raise TargetGone(f"process {pinned.pid} exited while crashcart attached") from None
    nspids = procfs.ns_pids(status)
    return TargetInfo(
        nspids[-1] if nspids else pinned.pid,
        procfs.cap_bounding(status),
        cgroups,
        setgroups,
        _lsm_label(fd),
        cwd,
    )


def _inside(path: str, root: str) -> str:
    """A path as the target sees it: /proc/PID/cwd reads relative to *our* root, so for a
    chroot-based container it carries the host path of the container's root first."""
    if root in ("", "/"):
        return path
    if path == root:
        return "/"
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) :]
    return "/"  # outside its root (or unreachable): start at the top


def _lsm_label(proc_fd: int) -> str | None:
    try:
        label = procfs.read_text("attr/current", proc_fd).strip("\0\n ")
    except OSError:
        return None  # EINVAL: no LSM on this host
    label = label.removesuffix(" (enforce)").removesuffix(" (complain)")
    return None if label in ("", "unconfined", "kernel") else label


def open_cgroup_files(info: TargetInfo) -> list[int]:
    ours = {(c, p) for _, c, p in procfs.parse_cgroup(procfs.read_text("/proc/self/cgroup"))}
    mounts = cgroups.mounts()
    fds = []
    try:
        for _, ctrls, path in info.cgroups:
            if (ctrls, path) in ours:
                continue
            base = cgroups.find(mounts, ctrls)
            if base is None:
                continue
            try:
                fds.append(os.open(f"{base}{path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                raise TargetGone(
                    "the target's cgroup disappeared (the container stopped?)"
                ) from None
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def read_in_root(root_fd: int, path: str, limit: int = 1 << 20) -> str | None:
    """A file of the container, resolved as if its root were / (symlinks cannot leave it,
    /proc magic links are refused): what the container controls is never followed on the
    host."""
    flags = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
    try:
        # O_NONBLOCK: a FIFO the container put there must not hang crashcart.
        fd = libc.openat2(root_fd, path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def resolve_user(spec: str | None, root_fd: int) -> tuple[int, int, list[int]]:
    """--user UID[:GID] or NAME[:GROUP] (names from the target's /etc/passwd, /etc/group)."""
    if spec is None:
        return 0, 0, []
    user, _, group = spec.partition(":")
    passwd = read_in_root(root_fd, "/etc/passwd") or ""
    uid, gid = _lookup(user, passwd, "user")
    if group:
        gid = _lookup(group, read_in_root(root_fd, "/etc/group") or "", "group")[0]
    return uid, gid, []


def _lookup(name: str, table: str, kind: str) -> tuple[int, int]:
    if name.isdigit():
        for line in table.splitlines():
            f = line.split(":")
            if len(f) > 3 and f[2] == name and f[3].isdigit():
                return int(name), int(f[3])
        return int(name), int(name) if kind == "group" else 0
    for line in table.splitlines():
        f = line.split(":")
        if len(f) > 3 and f[0] == name and f[2].isdigit():
            if kind == "group":  # name:x:GID:members
                return int(f[2]), int(f[2])
            if f[3].isdigit():  # name:x:UID:GID:...
                return int(f[2]), int(f[3])
    raise UsageError(
        f"no {kind} {name!r} in the target's /etc/{'passwd' if kind == 'user' else 'group'}"
    )


def keep_caps(profile: str, info: TargetInfo, uid: int = 0) -> int | None:
    if profile == "privileged":
        return None
    if profile == "restricted" or uid != 0:
        # A user other than root holds no capability after setuid; the debugging ones
        # would only serve a set-user-ID program of the target's, run from /target.
        return info.cap_bounding
    return info.cap_bounding | caps.mask(DEBUG_CAPS)


def default_command(toolbox_fd: int) -> list[str]:
    flags = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
    try:
        os.close(libc.openat2(toolbox_fd, "/bin/bash", os.O_PATH, flags))
    except OSError:
        return ["/bin/sh", "-i"]
    return ["/bin/bash", "--rcfile", RC_FILE, "-i"]


SESSION_ENV_FILE = "/.crashcart/session.env"


def toolbox_environment(toolbox_fd: int) -> dict[str, str]:
    """KEY=VALUE lines the image sets for every session command (the image builder decides
    how its tools behave: where they keep side files, what they must not load from cwd)."""
    out: dict[str, str] = {}
    for line in (read_in_root(toolbox_fd, SESSION_ENV_FILE, 64 << 10) or "").split("\n"):
        key, eq, value = line.strip().partition("=")
        if eq and key and not key.startswith("#") and key.replace("_", "a").isalnum():
            out[key] = value
    return out


def environment(
    target: Target, spec_text: str, info: TargetInfo, opts: SessionOptions, toolbox_fd: int = -1
) -> dict[str, str]:
    env = {
        "PATH": SESSION_PATH,
        "HOME": "/root",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "TERM": os.environ.get("TERM", "xterm"),
    }
    if toolbox_fd >= 0:
        env.update(toolbox_environment(toolbox_fd))
    env |= {
        "CRASHCART_MODE": "session",
        "CRASHCART_TARGET": spec_text,
        "CRASHCART_TARGET_ID": target.id,
        "CRASHCART_TARGET_NAME": target.name,
        "CRASHCART_RUNTIME": target.runtime,
        "CRASHCART_TARGET_PID": str(info.pid_inside),
        "CRASHCART_TARGET_ROOT": "/target",
    }
    env.update(opts.env)
    return env


def workdir(opts: SessionOptions, info: TargetInfo) -> str:
    if opts.workdir:
        return opts.workdir
    cwd = info.cwd if info.cwd.startswith("/") and "\0" not in info.cwd else "/"
    return "/target" + (cwd if cwd != "/" else "")


def steps(
    nss: ns.Namespaces, ctx_tty: bool, join_cgroup: bool, joins_user: bool
) -> list[child.Step]:
    """The session, in order. Names the namespaces actually joined (the foreign ones)."""
    before = tuple(k for k in NS_BEFORE_MOUNT if k in nss.foreign)
    out = []
    if before:
        out.append(child.Step(f"setns {' '.join(before)}", child.join_namespaces(before)))
    if "mnt" in nss.foreign:
        out.append(child.Step("setns mnt", child.join_namespaces(("mnt",))))
    out += [
        child.Step("clone the target's root tree (private)", child.clone_target_root),
        child.Step(
            "unshare a private mount namespace, make / rprivate", child.private_mount_namespace
        ),
        child.Step("pivot_root into the toolbox (ro, nosuid, nodev)", child.pivot_to_toolbox),
        child.Step("attach the target's root at /target", child.attach_target),
        child.Step("mount proc of the target's pid namespace at /proc", child.mount_proc),
        child.Step(
            "tmpfs /dev with binds of the target's /dev, toolbox at /dev/crashcart", child.build_dev
        ),
        child.Step("bind /dev at /target/dev", child.bind_dev_into_target),
        child.Step("bind /target/sys at /sys", child.bind_sys),
        child.Step("tmpfs at /tmp, /run and /root", child.mount_tmp),
    ]
    if join_cgroup:
        # Late: the RCU grace period the first cgroup.procs write may wait for (see
        # linux/cgroups.py) then overlaps the mount work above instead of preceding it.
        out.append(child.Step("join the target's cgroups", child.join_cgroups))
    if ctx_tty:
        out.append(child.Step("devpts instance at /dev/pts, pty to the host", child.allocate_pty))
    return out


def final_steps(joins_user: bool) -> list[child.Step]:
    """In the command's own process, after the supervisor forked it."""
    out = []
    if joins_user:
        out.append(child.Step("setns user", child.join_user_namespace))
    out += [
        child.Step("drop capabilities, set uid/gid", child.set_credentials),
        child.Step("apply the target's LSM label", child.apply_label),
    ]
    return out


class Prepared:
    """Everything opened for a session, and its plan."""

    def __init__(
        self,
        target: Target,
        pinned: procfs.Pinned,
        info: TargetInfo,
        ctx: child.Context,
        host_sock: _socket.socket,
        plan: list[child.Step],
        final: list[child.Step],
        toolbox: mountapi.ImageMount,
    ) -> None:
        self.target = target
        self.pinned = pinned
        self.info = info
        self.ctx = ctx
        self.host_sock = host_sock
        self.plan = plan
        self.final = final
        self.toolbox = toolbox

    def close(self) -> None:
        self.ctx.nss.close()
        for fd in (self.ctx.root_fd, *self.ctx.cgroup_fds):
            os.close(fd)
        self.toolbox.close()
        self.ctx.sock.close()
        self.host_sock.close()
        self.pinned.close()


def prepare(target: Target, spec_text: str, opts: SessionOptions, tty: bool) -> Prepared:
    try:
        pinned = procfs.pin(target.pid)
    except procfs.ProcessGone:
        raise TargetGone(f"{target.describe()} is not running any more") from None
    opened: list[int] = []
    try:
        nss = ns.open_namespaces(
            pinned.proc_fd, ("cgroup", "ipc", "uts", "net", "pid", "mnt", "user")
        )
        opened += nss.fds.values()
        if nss.is_host() and not opts.allow_host:
            raise TargetError(
                f"PID {target.pid} is not in a container (it shares every namespace with the host)",
                hint="pass --allow-host to debug a host process anyway",
            )
        root_fd = os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pinned.proc_fd)
        opened.append(root_fd)
        info = read_target(pinned)
        check_identity(target, [path for _, _, path in info.cgroups])
        cgroup_fds = open_cgroup_files(info) if opts.join_cgroup else []
        opened += cgroup_fds
        uid, gid, groups = resolve_user(opts.user, root_fd)
        toolbox = open_toolbox(opts.image)
        opened.append(toolbox.fd)
        if not pinned.alive():
            raise TargetGone(f"{target.describe()} exited while crashcart attached")
        host_sock, child_sock = _socket.socketpair(
            _socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC
        )
    except BaseException:
        for fd in opened:
            os.close(fd)
        pinned.close()
        raise
    argv = opts.command or default_command(toolbox.fd)
    ctx = child.Context(
        nss=nss,
        root_fd=root_fd,
        toolbox_fd=toolbox.fd,
        cgroup_fds=cgroup_fds,
        sock=child_sock,
        tty=tty,
        argv=argv,
        env=environment(target, spec_text, info, opts, toolbox.fd),
        workdir=workdir(opts, info),
        uid=uid,
        gid=gid,
        groups=groups if info.setgroups_allowed else None,
        keep_caps=keep_caps(opts.caps, info, uid),
        label=info.label,
    )
    ctx.workdir_given = bool(opts.workdir)
    plan = steps(nss, tty, bool(cgroup_fds), "user" in nss.foreign)
    final = final_steps("user" in nss.foreign)
    return Prepared(target, pinned, info, ctx, host_sock, plan, final, toolbox)

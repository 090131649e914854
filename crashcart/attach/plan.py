"""The host side's preparation of a session, and the session described as data.

`prepare()` opens everything the setup process will need while we still see the host (the
pinned target, its namespace fds and root, the detached toolbox mount) and decides
credentials, capabilities, environment and command. `steps()` lists what the setup process
will do, in order, and `final_steps()` what the command does before exec, so `--debug` can
print them and tests can check them without root.
"""

from __future__ import annotations

import _socket
import os
import stat

from crashcart.attach import child, mounts
from crashcart.attach.context import Context, Step
from crashcart.attach.options import DEBUG_CAPS, RC_FILE, SESSION_PATH, SessionOptions
from crashcart.errors import UsageError
from crashcart.linux import caps, cgroups, libc, mountapi, ns, procfs
from crashcart.linux.fd import close_all, closing
from crashcart.pinned import PinnedTarget, TargetInfo
from crashcart.targets.model import Target
from crashcart.text import printable
from crashcart.toolbox import open_toolbox

SESSION_ENV_FILE = "/.crashcart/session.env"
MAX_ID = 4294967294  # (uid_t)-1 means "no change" to setresuid: never an identity
# Filesystems crashcart will not read a container's /etc/passwd from: procfs (/proc/kmsg is
# a regular file whose reads consume the host's kernel log), sysfs, and their kin.
PSEUDO_FS = {0x9FA0: "procfs", 0x62656572: "sysfs", 0x27E0EB: "cgroup", 0x63677270: "cgroup2",
             0x64626720: "debugfs", 0x74726163: "tracefs", 0x73636673: "securityfs"}  # fmt: skip


class Prepared:
    """Everything opened for a session, and its plan."""

    def __init__(self, target: Target, pinned: PinnedTarget | Unpinned, ctx: Context,
                 host_sock: _socket.socket, report_r: int, go_w: int, cgroup_fds: list[int],
                 plan: list[Step], final: list[Step],
                 toolbox: mountapi.ImageMount | None) -> None:  # fmt: skip
        self.target = target
        self.pinned = pinned
        self.info = pinned.info
        self.ctx = ctx
        self.host_sock = host_sock
        self.report_r = report_r
        self.go_w = go_w
        self.cgroup_fds = cgroup_fds
        self.plan = plan
        self.final = final
        self.toolbox = toolbox
        self.in_place = toolbox is None  # the target's own mount namespace: never swept

    def close_child_ends(self) -> None:
        """After the fork of the setup process: what only it needed."""
        close_all((self.ctx.report_w, self.ctx.go_r))
        self.ctx.report_w = self.ctx.go_r = -1
        if self.toolbox is not None:
            self.toolbox.close()
            self.toolbox = None
        self.ctx.sock.close()

    def close(self) -> None:
        self.close_child_ends()
        close_all((self.report_r, self.go_w, *self.cgroup_fds))
        self.cgroup_fds = []
        self.report_r = self.go_w = -1
        self.host_sock.close()
        self.pinned.close()


def read_in_root(root_fd: int, path: str, limit: int = 1 << 20) -> str | None:
    """A regular file of the container, resolved as if its root were / (symlinks cannot
    leave it, /proc magic links are refused), not on procfs, sysfs and their kin; at most
    `limit` bytes. What the container controls is never followed on the host."""
    flags = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
    try:
        # O_NONBLOCK: a FIFO the container put there must not hang crashcart.
        fd = libc.openat2(root_fd, path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK, flags)
    except OSError:
        return None
    with closing(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode) or libc.fstatfs_type(fd) in PSEUDO_FS:
            return None
        return os.read(fd, limit).decode(errors="replace")


def resolve_user(spec: str | None, root_fd: int, info: TargetInfo) -> tuple[int, int, str]:
    """--user UID[:GID] or NAME[:GROUP] (names from the target's /etc/passwd, /etc/group):
    (uid, gid, where the gid came from)."""
    if spec is None:
        return 0, 0, "root"
    user, _, group = spec.partition(":")
    passwd = read_in_root(root_fd, "/etc/passwd") or ""
    uid, gid, source = lookup_user(user, passwd, info.gid)
    if group:
        gid = lookup_group(group, read_in_root(root_fd, "/etc/group") or "")
        source = "--user"
    return uid, gid, source


def _valid_id(text: str, what: str) -> int:
    if not (text.isdigit() and text.isascii()) or int(text) > MAX_ID:
        raise UsageError(f"invalid {what} {printable(text)!r}: IDs are 0 to {MAX_ID}")
    return int(text)


def _entries(table: str) -> list[list[str]]:
    return [line.split(":") for line in table.split("\n") if line and not line.startswith("#")]


def lookup_user(name: str, passwd: str, target_gid: int | None) -> tuple[int, int, str]:
    """(uid, primary gid, where it came from): the user's entry in the target's /etc/passwd,
    else (a numeric uid it lacks) the target's main process's gid."""
    for f in _entries(passwd):
        if len(f) > 3 and (f[0] == name or (name.isdigit() and f[2] == name)):
            uid = _valid_id(f[2], f"uid of {f[0]!r} in the target's /etc/passwd")
            gid = _valid_id(f[3], f"gid of {f[0]!r} in the target's /etc/passwd")
            return uid, gid, "the target's /etc/passwd"
    if not name.isdigit():
        raise UsageError(f"no user {printable(name)!r} in the target's /etc/passwd")
    uid = _valid_id(name, "uid")
    if target_gid is not None:
        return uid, target_gid, "the target's main process"
    return uid, uid, "the uid"


def lookup_group(name: str, group: str) -> int:
    if name.isdigit():
        return _valid_id(name, "gid")
    for f in _entries(group):
        if len(f) > 2 and f[0] == name:
            return _valid_id(f[2], f"gid of group {f[0]!r} in the target's /etc/group")
    raise UsageError(f"no group {printable(name)!r} in the target's /etc/group")


def keep_caps(profile: str, info: TargetInfo, uid: int = 0) -> int | None:
    if profile == "privileged":
        return None
    if profile == "restricted" or uid != 0:
        # A user other than root holds no capability after setuid; the debugging ones
        # would only serve a set-user-ID program of the target's, run from /target.
        return info.cap_bounding
    return info.cap_bounding | caps.mask(DEBUG_CAPS)


def default_command(toolbox_fd: int, tty: bool) -> list[str]:
    """The toolbox's bash: interactive with its rc file on a terminal; without one it
    reads commands from stdin like `docker exec -i CTR sh` (no prompt, no banner)."""
    flags = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
    try:
        os.close(libc.openat2(toolbox_fd, "/bin/bash", os.O_PATH, flags))
    except OSError:
        return ["/bin/sh", "-i"] if tty else ["/bin/sh"]
    return ["/bin/bash", "--rcfile", RC_FILE, "-i"] if tty else ["/bin/bash"]


def toolbox_environment(toolbox_fd: int) -> dict[str, str]:
    """KEY=VALUE lines the image sets for every session command (the image builder decides
    how its tools behave: where they keep side files, what they must not load from cwd)."""
    out: dict[str, str] = {}
    for line in (read_in_root(toolbox_fd, SESSION_ENV_FILE, 64 << 10) or "").split("\n"):
        key, eq, value = line.strip().partition("=")
        if eq and key and not key.startswith("#") and key.replace("_", "a").isalnum():
            out[key] = value
    return out


def environment(target: Target, spec_text: str, info: TargetInfo, opts: SessionOptions,
                toolbox_fd: int = -1) -> dict[str, str]:  # fmt: skip
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
        # What a container chose (a PID target's comm) never reaches a shell as is.
        "CRASHCART_TARGET": printable(spec_text),
        "CRASHCART_TARGET_ID": printable(target.id),
        "CRASHCART_TARGET_NAME": printable(target.name),
        "CRASHCART_RUNTIME": target.runtime,
        "CRASHCART_TARGET_PID": str(info.pid_inside),
        "CRASHCART_TARGET_ROOT": "/target",
    }
    env.update(opts.env)
    return env


def workdir(opts: SessionOptions, info: TargetInfo) -> str:
    """-w is the container's path, as with `docker exec -w` (a path already under /target
    is taken as is); without it, the target's own working directory."""
    wanted = opts.workdir
    if wanted:
        if wanted == "/target" or wanted.startswith("/target/") or not wanted.startswith("/"):
            return wanted
        return "/target" + wanted.rstrip("/") if wanted != "/" else "/target"
    cwd = info.cwd if info.cwd.startswith("/") and "\0" not in info.cwd else "/"
    return "/target" + (cwd if cwd != "/" else "")


def steps(nss: ns.Namespaces, *, tty: bool, in_place: bool = False) -> list[Step]:
    """What the setup process does, in order. Names the namespaces actually joined."""
    before = tuple(k for k in ns.BEFORE_MOUNT if k in nss.foreign)
    out = [mounts.join(before)] if before else []
    if "mnt" in nss.foreign:
        out.append(mounts.join(("mnt",)))
    if in_place:
        out.append(mounts.enter_root)
        if tty:
            out.append(mounts.detached_pty)
        return out
    out += [
        mounts.clone_target_root,
        mounts.clone_target_proc,
        mounts.private_mount_namespace,
        mounts.pivot_to_toolbox,
        mounts.attach_target,
        mounts.attach_proc,
        mounts.build_dev,
        mounts.bind_dev_into_target,
        mounts.bind_sys,
        mounts.mount_tmp,
    ]
    if tty:
        out.append(mounts.allocate_pty)
    return out


def final_steps() -> list[Step]:
    """In the command's own process, after the supervisor forked it."""
    return [child.set_credentials, child.apply_label]


def cgroup_files(pinned: PinnedTarget, join: bool) -> tuple[list[int], str | None]:
    """cgroup.procs of each of the target's cgroups that we are not in, opened for writing
    (the host moves the supervisor through them), and a note when the target is paused:
    its freezer cgroup is left out, or the session would freeze with it."""
    if not join:
        return [], None
    ours = {(c, p) for _, c, p in procfs.parse_cgroup(procfs.read_text("/proc/self/cgroup"))}
    found = cgroups.mounts()
    fds: list[int] = []
    note = None
    try:
        for _, ctrls, path in pinned.info.cgroups:
            base = cgroups.find(found, ctrls)
            if (ctrls, path) in ours or base is None:
                continue
            if cgroups.frozen(ctrls, base, path):
                note = (f"{pinned.target.describe()} is paused: the session does not join its "
                        "freezer cgroup (tools that ptrace its frozen processes wait until it "
                        "is unpaused)")  # fmt: skip
                continue
            try:
                fds.append(os.open(f"{base}{path}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
            except FileNotFoundError:
                from crashcart.errors import TargetGone

                raise TargetGone(
                    "the target's cgroup disappeared (the container stopped?)"
                ) from None
    except BaseException:
        close_all(fds)
        raise
    return fds, note


def prepare(target: Target, spec_text: str, opts: SessionOptions, *, tty: bool) -> Prepared:
    pinned = PinnedTarget(target, allow_host=opts.allow_host)
    opened: list[int] = []
    toolbox = None
    socks: list[_socket.socket] = []
    try:
        info = pinned.info
        cgroup_fds, paused = cgroup_files(pinned, opts.join_cgroup)
        opened += cgroup_fds
        uid, gid, gid_from = resolve_user(opts.user, pinned.root_fd, info)
        toolbox = None if opts.in_place else open_toolbox(opts.image)
        if not pinned.alive():
            from crashcart.errors import TargetGone

            raise TargetGone(f"{target.describe()} exited while crashcart attached")
        socks += _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        host_sock, child_sock = socks
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        opened += (report_r, report_w)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        close_all(opened)  # the pipes too: a second pipe2 can fail with EMFILE
        for sock in socks:
            sock.close()
        if toolbox is not None:
            toolbox.close()
        pinned.close()
        raise
    ctx = _context(target, spec_text, opts, tty, pinned, toolbox, child_sock, report_w, go_r,
                   uid, gid)  # fmt: skip
    if paused:
        ctx.notes.append(paused)
    if "pid" not in pinned.nss.foreign and not pinned.nss.is_host():
        ctx.notes.append(f"{target.describe()} shares the host's pid namespace: the session "
                         "sees every host process")  # fmt: skip
    if opts.debug and opts.user is not None:
        ctx.notes.append(f"--user {printable(opts.user)}: uid {uid}, gid {gid} (from {gid_from})")
    plan = steps(pinned.nss, tty=tty, in_place=opts.in_place)
    return Prepared(target, pinned, ctx, host_sock, report_r, go_w, cgroup_fds, plan,
                    final_steps(), toolbox)  # fmt: skip


def _context(target: Target, spec_text: str, opts: SessionOptions, tty: bool,
             pinned: PinnedTarget, toolbox: mountapi.ImageMount | None,
             sock: _socket.socket, report_w: int, go_r: int, uid: int,
             gid: int) -> Context:  # fmt: skip
    info = pinned.info
    if opts.in_place:
        argv, env, wd = opts.command, dict(opts.env), info.cwd
    else:
        assert toolbox is not None
        argv = opts.command or default_command(toolbox.fd, tty)
        env = environment(target, spec_text, info, opts, toolbox.fd)
        wd = workdir(opts, info)
    ctx = Context(
        nss=pinned.nss, root_fd=pinned.root_fd, toolbox_fd=toolbox.fd if toolbox else -1,
        sock=sock, report_w=report_w, go_r=go_r, tty=tty, argv=argv, env=env, workdir=wd,
        uid=uid, gid=gid, groups=[] if info.setgroups_allowed else None,
        keep_caps=keep_caps(opts.caps, info, uid), label=info.label,
        pid_inside=info.pid_inside, start_time=info.start_time,
    )  # fmt: skip
    ctx.workdir_given = bool(opts.workdir)
    ctx.fallback_dir = "/" if opts.in_place else "/target"
    ctx.extra_caps = caps.mask(("kill",) + (("setuid", "setgid") if opts.user else ()))
    return ctx


class Unpinned:
    """A target with no process to pin (post-mortem, replay): nothing to join, nothing
    that can exit under the session; stands where a PinnedTarget does."""

    def __init__(self, target: Target, nss: ns.Namespaces | None = None) -> None:
        self.target = target
        self.nss = nss or ns.Namespaces()  # namespaces to join all the same (--replay-net)
        self.root_fd = -1
        self.info = TargetInfo("", [], setgroups=True, label=None, cwd="/", start_time=0, pid=1)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        self.nss.close()


def prepare_unpinned(target: Target, toolbox: mountapi.ImageMount, tty: bool,
                     command: tuple[list[str], dict[str, str], str],
                     ids: tuple[int, int, int | None], plan: list[Step],
                     nss: ns.Namespaces | None = None) -> Prepared:  # fmt: skip
    """A session with namespaces of its own (crashcart.attach.ownns): `command` is argv,
    environment and working directory; `ids` uid, gid and the capability bounding set
    (None: all); `nss` what it joins all the same. Takes ownership of `toolbox`, `nss`."""
    pinned = Unpinned(target, nss)
    try:
        host_sock, child_sock = _socket.socketpair(
            _socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC
        )
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
    except BaseException:
        toolbox.close()
        pinned.close()
        raise
    argv, env, wd = command
    uid, gid, keep = ids
    ctx = Context(
        nss=pinned.nss, root_fd=-1, toolbox_fd=toolbox.fd, sock=child_sock,
        report_w=report_w, go_r=go_r, tty=tty, argv=argv, env=env, workdir=wd, uid=uid,
        gid=gid, groups=[], keep_caps=keep, label=None, pid_inside=1, start_time=0,
    )  # fmt: skip
    ctx.fallback_dir = "/"
    # CAP_SYS_ADMIN stays with the setup process past the drop to the profile: it mounts
    # the new pid namespace's procfs after the fork; the command never holds it.
    ctx.extra_caps = caps.mask(("kill", "setuid", "setgid", "sys_admin"))
    return Prepared(target, pinned, ctx, host_sock, report_r, go_w, [], plan,
                    final_steps(), toolbox)  # fmt: skip

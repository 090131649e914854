"""What the session's processes need, opened on the host before any of them is forked, and
the unit of the plan: a Step carries the words --debug prints for it next to its body."""

from __future__ import annotations

import _socket

from crashcart.linux import ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Context:
    """Fds and decisions for the setup process, the supervisor and the command."""

    def __init__(
        self,
        *,
        nss: ns.Namespaces,
        root_fd: int,  # the target's root directory (O_PATH); right for chroot runtimes too
        toolbox_fd: int,  # detached read-only toolbox mount (-1: the in-place plan has none)
        sock: _socket.socket,  # setup -> host (trusted: the host pid namespace only)
        report_w: int,  # session -> host pipe, write end (the container may see it)
        go_r: int,  # host -> supervisor: one byte once it is in the target's cgroups
        tty: bool,
        argv: list[str],
        env: dict[str, str],
        workdir: str,
        uid: int | None,
        gid: int | None,
        groups: list[int] | None,  # None: setgroups is denied in the target's user ns
        keep_caps: int | None,  # the command's bounding set; None keeps everything
        label: str | None,  # LSM label of the target to apply on exec
        pid_inside: int,  # the target's PID in its own pid namespace
        start_time: int,  # the target's start time, to recognise it in a procfs
    ) -> None:
        self.nss = nss
        self.root_fd = root_fd
        self.toolbox_fd = toolbox_fd
        self.sock = sock
        self.report_w = report_w
        self.go_r = go_r
        self.tty = tty
        self.winsize: bytes | None = None
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.workdir_given = False  # -w: failing to enter it is an error, not a fallback
        self.fallback_dir = "/target"  # where the command starts when workdir is gone
        self.extra_caps = 0  # what the supervisor needs beyond the profile, until it forks
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.keep_caps = keep_caps
        self.label = label
        self.pid_inside = pid_inside
        self.start_time = start_time
        self.target_tree = -1  # detached copy of the target's root tree
        self.proc_tree = -1  # detached procfs of the target's pid namespace
        self.pty_slave = -1
        self.notes: list[str] = []  # said on the host's stderr before the session starts
        self.host_pid = 0  # crashcart's host process, the setup process's parent

    def fds(self) -> list[int]:
        """Every fd the setup process needs (closed one by one as it stops needing them)."""
        return [
            *self.nss.fds.values(), self.root_fd, self.toolbox_fd, self.sock.fileno(),
            self.report_w, self.go_r,
        ]  # fmt: skip


class Step:
    """One thing a session process does, with the words --debug prints for it."""

    __slots__ = ("what", "run")

    def __init__(self, what: str, run: Callable[[Context], None]) -> None:
        self.what = what
        self.run = run

    def __repr__(self) -> str:
        return f"Step({self.what!r})"


def step(what: str) -> Callable[[Callable[[Context], None]], Step]:
    """Decorator: the function becomes a Step described by `what`."""

    def wrap(fn: Callable[[Context], None]) -> Step:
        return Step(what, fn)

    return wrap


class StepFailed(Exception):
    def __init__(self, step: str, err: BaseException, code: int = 125) -> None:
        super().__init__(f"{step}: {err}")
        self.code = code

"""Moving bytes between the host's stdio and the session.

Without a pty, stdio fds pass straight to the command, byte for byte, except host
terminals: a host tty handed into a container could be used to inject input into the
operator's shell (TIOCSTI) or to read it, so each terminal among fds 0-2 is replaced by
a pipe that crashcart copies.
"""

from __future__ import annotations

import errno
import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CHUNK = 1 << 16


class Pipes:
    """Per stdio fd that is a host terminal: (child end, host end) of a pipe."""

    def __init__(self) -> None:
        self.ends: dict[int, tuple[int, int]] = {}

    @classmethod
    def for_stdio(cls) -> Pipes:
        pipes = cls()
        for fd in (0, 1, 2):
            if os.isatty(fd):
                r, w = os.pipe2(os.O_CLOEXEC)
                pipes.ends[fd] = (r, w) if fd == 0 else (w, r)
        return pipes

    def active(self) -> bool:
        return bool(self.ends)

    def install_child_ends(self) -> None:
        for fd, (child_end, host_end) in self.ends.items():
            os.dup2(child_end, fd)  # dup2 clears close-on-exec on the copy
            os.close(child_end)
            os.close(host_end)

    def close_child_ends(self) -> None:
        for child_end, _ in self.ends.values():
            os.close(child_end)

    def close_host_end(self, host_end: int) -> None:
        for fd, (_, host) in list(self.ends.items()):
            if host == host_end:
                os.close(host)
                del self.ends[fd]

    def close_host_ends(self) -> None:
        for _, host_end in self.ends.values():
            os.close(host_end)
        self.ends.clear()

    def inputs(self) -> list[tuple[int, int]]:
        return [(0, host) for fd, (_, host) in self.ends.items() if fd == 0]

    def outputs(self) -> list[tuple[int, int]]:
        return [(host, fd) for fd, (_, host) in self.ends.items() if fd != 0]


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def pump(
    inputs: list[tuple[int, int]],
    outputs: list[tuple[int, int]],
    pidfd: int,
    close: Callable[[int], None] = os.close,
    tap: Callable[[str, bytes], None] | None = None,
) -> None:
    """Copy src->dst pairs until the child (pidfd) exits, then drain the output side.

    `inputs` carry the host's stdin into the session (a pipe's write end is closed on EOF
    so the command sees it); `outputs` carry the session's output to the host. Output fds
    are non-blocking, so after the child exits a background process still holding them
    cannot keep crashcart waiting. `tap` (the session recorder) sees each chunk moved, as
    ("i", bytes) for input and ("o", bytes) for output.
    """
    routes = dict(inputs + outputs)
    outs = {src for src, _ in outputs}
    for src in outs:
        os.set_blocking(src, False)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    for src in routes:
        poller.register(src, select.POLLIN)
    exited = False
    while not exited:
        for fd, _ in poller.poll():
            if fd == pidfd:
                exited = True
            elif _move(fd, routes[fd], tap, "o" if fd in outs else "i") < 0:
                poller.unregister(fd)
                if fd in outs:
                    outs.discard(fd)
                elif routes[fd] not in routes:  # a pipe to the command, not the pty master
                    close(routes[fd])
    for src in outs:
        while _move(src, routes[src], tap, "o") > 0:
            pass


def _move(src: int, dst: int, tap: Callable[[str, bytes], None] | None, kind: str) -> int:
    """One read and write: bytes moved, 0 if nothing was ready, -1 at EOF (or EIO: a pty
    whose last slave closed; or the destination is gone)."""
    try:
        data = os.read(src, CHUNK)
    except BlockingIOError:
        return 0
    except OSError as e:
        if e.errno == errno.EIO:
            return -1
        raise
    if not data:
        return -1
    if tap is not None:
        tap(kind, data)
    try:
        write_all(dst, data)
    except BrokenPipeError:
        return -1
    except OSError as e:
        if e.errno == errno.EIO:  # a terminal that hung up
            return -1
        raise
    return len(data)

"""Moving bytes between the host's stdio and the session.

No fd of the host ever enters the container: without a pty each of stdin, stdout and
stderr is a pipe that crashcart copies (byte for byte, in both directions, as docker exec
does through its shim); with a pty, only the pty's master crosses to the host. A host file
or terminal handed into a container could be written, truncated, chmod'ed through
/proc/PID/fd by whoever can reach the command, or used to inject input into the
operator's shell (TIOCSTI).
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
    """Per stdio fd: (child end, host end) of a pipe."""

    def __init__(self) -> None:
        self.ends: dict[int, tuple[int, int]] = {}

    @classmethod
    def for_stdio(cls) -> Pipes:
        pipes = cls()
        for fd in (0, 1, 2):
            r, w = os.pipe2(os.O_CLOEXEC)
            pipes.ends[fd] = (r, w) if fd == 0 else (w, r)
        if not _valid(0):  # nothing to copy in: the command reads EOF at once
            pipes.close_host_end(pipes.ends[0][1])
        return pipes

    def active(self) -> bool:
        return bool(self.ends)

    def install_child_ends(self) -> None:
        for fd, (child_end, host_end) in list(self.ends.items()):
            os.dup2(child_end, fd)  # dup2 clears close-on-exec on the copy
            os.close(child_end)
            if host_end >= 0:
                os.close(host_end)
        self.ends.clear()

    def close_child_ends(self) -> None:
        for fd, (child_end, host_end) in list(self.ends.items()):
            os.close(child_end)
            self.ends[fd] = (-1, host_end)

    def close_host_end(self, host_end: int) -> None:
        for fd, (child, host) in list(self.ends.items()):
            if host == host_end and host >= 0:
                os.close(host)
                self.ends[fd] = (child, -1)

    def close_host_ends(self) -> None:
        for _, host_end in self.ends.values():
            if host_end >= 0:
                os.close(host_end)
        self.ends.clear()

    def inputs(self) -> list[tuple[int, int]]:
        return [(0, host) for fd, (_, host) in self.ends.items() if fd == 0 and host >= 0]

    def outputs(self) -> list[tuple[int, int]]:
        return [(host, fd) for fd, (_, host) in self.ends.items() if fd != 0 and host >= 0]


def _valid(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


class Relay:
    """Copy src->dst pairs until `end_fd` is readable (the supervisor exited) or stop() is
    called, then drain the output side.

    `inputs` carry the host's stdin into the session (a pipe's write end is closed on EOF
    so the command sees it); `outputs` carry the session's output to the host. Output fds
    are non-blocking, so after the session ends a background process still holding them
    cannot keep crashcart waiting. `watch` maps more fds to callbacks run when they are
    readable (a callback returning False is unregistered); `tick` runs about once a second;
    `filter` sees the host's input before it is copied (the escape sequence); `tap` (the
    session recorder) sees every chunk moved, "i" for input and "o" for output."""

    def __init__(
        self,
        inputs: list[tuple[int, int]],
        outputs: list[tuple[int, int]],
        end_fd: int,
        close: Callable[[int], None] = os.close,
    ) -> None:
        self.routes = dict(inputs + outputs)
        self.outs = {src for src, _ in outputs}
        self.inputs = {src for src, _ in inputs}
        self.end_fd = end_fd
        self.close = close
        self.watch: dict[int, Callable[[], bool]] = {}
        self.tick: Callable[[], None] | None = None
        self.filter: Callable[[bytes], bytes] | None = None
        self.tap: Callable[[str, bytes], None] | None = None  # the session recorder
        self.outputs_done = not self.outs
        self.stopped = False
        self.pending: dict[int, bytearray] = {}  # input for the session, not yet written
        self.closing: set[int] = set()  # close once its pending input is written

    def stop(self) -> None:
        self.stopped = True

    def run(self) -> None:
        """Writes into the session never block: a command that stops reading its stdin
        while its stdout is full would otherwise deadlock with us. Input for it waits in a
        buffer (and we stop reading the host's stdin meanwhile); writes to the host's own
        fds block, which only slows the command down."""
        for src in self.outs:
            os.set_blocking(src, False)
        for src in self.inputs:
            os.set_blocking(self.routes[src], False)
        while not self.stopped:
            poller = select.poll()
            poller.register(self.end_fd, select.POLLIN)
            events: dict[int, int] = {fd: select.POLLIN for fd in self.watch}
            for src, dst in self.routes.items():
                if src in self.inputs and self.pending.get(dst):
                    events[dst] = events.get(dst, 0) | select.POLLOUT
                else:
                    events[src] = events.get(src, 0) | select.POLLIN
            for fd, mask in events.items():
                poller.register(fd, mask)
            ready = poller.poll(1000)
            for fd, mask in ready:
                self._event(fd, mask)
            if self.tick:
                self.tick()
        self.drain()

    def _event(self, fd: int, mask: int) -> None:
        if fd == self.end_fd:
            self.stopped = True
            return
        if fd in self.watch and mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
            if not self.watch[fd]():
                del self.watch[fd]
            return
        if mask & select.POLLOUT:
            self._flush(fd)
        if mask & (select.POLLIN | select.POLLHUP | select.POLLERR) and fd in self.routes:
            if fd in self.inputs and self.pending.get(self.routes[fd]):
                return
            if self._move(fd, self.routes[fd]) < 0:
                self._finished(fd)

    def _finished(self, fd: int) -> None:
        dst = self.routes.pop(fd)
        if fd in self.outs:
            self.outs.discard(fd)
            self.outputs_done = not self.outs
        elif fd in self.inputs:
            self.inputs.discard(fd)
            if dst not in self.routes:  # a pipe to the command, not the pty master
                if self.pending.get(dst):
                    self.closing.add(dst)
                else:
                    self.close(dst)

    def _flush(self, dst: int) -> None:
        data = self.pending.get(dst)
        if not data:
            return
        try:
            n = os.write(dst, data)
        except BlockingIOError:
            return
        except OSError:  # the command closed its stdin: drop what it will never read
            self.pending.pop(dst, None)
            n = 0
        else:
            del data[:n]
        if not self.pending.get(dst) and dst in self.closing:
            self.closing.discard(dst)
            self.close(dst)

    def drain(self) -> None:
        for src in list(self.outs):
            while self._move(src, self.routes[src]) > 0:
                pass

    def _move(self, src: int, dst: int) -> int:
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
        if self.tap is not None:
            self.tap("i" if src in self.inputs else "o", data)
        if src in self.inputs:
            if self.filter is not None:
                data = self.filter(data)
            if data:
                self.pending.setdefault(dst, bytearray()).extend(data)
                self._flush(dst)
            return len(data)
        try:
            write_all(dst, data)
        except BrokenPipeError:
            return -1
        except OSError as e:
            if e.errno == errno.EIO:  # a terminal that hung up
                return -1
            raise
        return len(data)


class Escape:
    """ssh's escape sequences on the operator's input: at the start of a line, `~.` ends
    the session, `~~` sends one `~`, `~?` lists them. Anything else passes unchanged."""

    HELP = "\r\ncrashcart escapes: ~. end the session, ~~ send ~, ~? this help\r\n"

    def __init__(self, on_end: Callable[[], None], say: Callable[[str], None]) -> None:
        self.on_end = on_end
        self.say = say
        self.line_start = True
        self.tilde = False

    def __call__(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            c = bytes((b,))
            if self.tilde:
                self.tilde = False
                if c == b".":
                    self.on_end()
                    return bytes(out)
                if c == b"?":
                    self.say(self.HELP)
                    continue
                out += b"~" if c == b"~" else b"~" + c
            elif c == b"~" and self.line_start:
                self.tilde = True
                continue
            else:
                out += c
            self.line_start = c in (b"\r", b"\n")
        return bytes(out)

"""Owned file descriptors: one place that closes them, on every path.

A bare int from os.open, open_tree or fsmount leaks when the next call raises, unless it
is wrapped in try/finally; nested, those become pyramids. `closing(fd)` is the scoped
form (the fd dies with the block), `Fd` the form whose ownership can move on: `take()`
hands the number to a consumer (a context object, a message, the caller) and the wrapper
forgets it, as cntr's `MountFd::attach_to(self)` consumes its mount fd. Plain classes, not
contextlib: this is on the attach path.
"""

from __future__ import annotations

import os
from types import TracebackType

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable


def close_all(fds: Iterable[int]) -> None:
    """Close each fd that is one (>= 0; -1 marks a slot not open or already handed on)."""
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def close_quietly(fds: Iterable[int]) -> None:
    """close_all for a process on its way out: an fd already gone is no error."""
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class closing:  # noqa: N801 - reads like contextlib.closing, which it mirrors
    """`with closing(os.open(...)) as fd:` the int fd, closed when the block ends."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> int:
        return self.fd

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        os.close(self.fd)


class Fd:
    """An fd this object owns until `take()` moves it on; `close()` is idempotent and a
    `with` block closes whatever was not taken, so an error path cannot leak it."""

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError("fd already closed or taken")
        return self._fd

    def take(self) -> int:
        """Give the fd to a consumer that will close it; this object no longer does."""
        fd = self.fd
        self._fd = -1
        return fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Fd:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

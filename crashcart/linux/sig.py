"""Signal numbers and handlers from the C module _signal: the `signal` module wraps them in
enums, and importing enum costs ~4 ms of the attach budget."""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Handler = Callable[[int, object], None] | int | None

SIGHUP: int = _signal.SIGHUP
SIGINT: int = _signal.SIGINT
SIGQUIT: int = _signal.SIGQUIT
SIGKILL: int = _signal.SIGKILL
SIGUSR1: int = _signal.SIGUSR1
SIGUSR2: int = _signal.SIGUSR2
SIGPIPE: int = _signal.SIGPIPE
SIGSTOP: int = _signal.SIGSTOP
SIGTERM: int = _signal.SIGTERM
SIGWINCH: int = _signal.SIGWINCH
SIGXFSZ: int = _signal.SIGXFSZ
SIG_DFL: int = _signal.SIG_DFL
SIG_IGN: int = _signal.SIG_IGN
SIGRTMIN: int = _signal.SIGRTMIN


def handle(signum: int, handler: Handler) -> Handler:
    """Install a handler (a callable, SIG_DFL or SIG_IGN); return the previous one."""
    previous: Handler = _signal.signal(signum, handler)
    return previous


def block(signum: int) -> None:
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {signum})


def unblock(signum: int) -> None:
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {signum})


def wait(signum: int, timeout: float) -> bool:
    """Until `signum` (blocked by the caller) is delivered (True), or `timeout` seconds."""
    return _signal.sigtimedwait({signum}, timeout) is not None

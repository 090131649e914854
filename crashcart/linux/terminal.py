"""Pseudo-terminals and the host terminal's raw mode.

The pty is allocated inside the session, from a devpts instance that only the session's
private mount namespace sees, so no host pty is ever handed to the container; the master
fd travels back to the host over a unix socket.
"""

from __future__ import annotations

import fcntl
import os
import struct

from crashcart.linux.fd import Fd

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
TIOCSCTTY = 0x540E
TIOCGWINSZ = 0x5413
TIOCSWINSZ = 0x5414
TIOCGPTPEER = 0x5441


def open_pty(ptmx_path: str, dir_fd: int | None = None) -> tuple[int, int]:
    """(master, slave) from a ptmx; the slave is opened from the master (TIOCGPTPEER), not
    by path, so nothing in the target's /dev can substitute it."""
    with Fd(os.open(ptmx_path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=dir_fd)) as master:
        fcntl.ioctl(master.fd, TIOCSPTLCK, struct.pack("i", 0))
        slave = fcntl.ioctl(master.fd, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        return master.take(), slave


def make_controlling(slave: int) -> None:
    """New session with `slave` as its controlling terminal and as stdin/out/err."""
    os.setsid()
    fcntl.ioctl(slave, TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def get_winsize(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def set_winsize(fd: int, size: bytes) -> None:
    fcntl.ioctl(fd, TIOCSWINSZ, size)


def copy_winsize(src: int, dst: int) -> None:
    size = get_winsize(src)
    if size is not None:
        try:
            set_winsize(dst, size)
        except OSError:
            pass


def make_raw(fd: int) -> list[int | list[bytes | int]] | None:
    """Put a terminal in raw mode (cfmakeraw); return the old mode to restore, or None."""
    import termios  # a shared library: loaded only when there is a terminal to set up

    try:
        old = termios.tcgetattr(fd)
    except termios.error:
        return None
    new = termios.tcgetattr(fd)
    new[0] &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )  # fmt: skip
    new[1] &= ~termios.OPOST
    new[2] &= ~(termios.CSIZE | termios.PARENB)
    new[2] |= termios.CS8
    new[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cc = new[6]
    assert isinstance(cc, list)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSAFLUSH, new)
    return old


def restore(fd: int, mode: list[int | list[bytes | int]] | None) -> None:
    if mode is not None:
        import termios

        try:
            termios.tcsetattr(fd, termios.TCSAFLUSH, mode)
        except termios.error:
            pass

"""The messages between crashcart's host process and its session, in one place.

Two channels, of different trust:

- setup -> host: a SOCK_SEQPACKET unix socket from the setup process, which lives in the
  host's pid namespace (the container cannot see it). One datagram per message: PTY (the
  pty master attached) or FAILED (`CODE:text`, setup failed). The setup process closes it
  before it forks the supervisor (which must inherit nothing that leads to the host): its
  EOF means "setup done"; after that the host finds the supervisor among the setup
  process's children, tells it so with a signal, and reads the supervisor's end from the
  setup process's own wait status, which mirrors it.
- session -> host: a pipe written by the supervisor and the command, which the container
  can see (and, with CAP_SYS_PTRACE, write into). Lines of `KIND[CODE:text]`; the host
  treats them as untrusted: known kinds only, codes from a fixed set, bounded text.
"""

from __future__ import annotations

import _socket
import sys

from crashcart.errors import EXIT_CANNOT_EXECUTE, EXIT_CRASHCART, EXIT_NOT_FOUND

PTY = b"P"
FAILED = b"E"
EXEC = b"X"  # session pipe: setup is over, the command execs now
CODES = (EXIT_CRASHCART, EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND)
MAX_TEXT = 1000


def failure(code: int, text: str) -> bytes:
    return FAILED + f"{code}:{text}".encode(errors="replace")[:MAX_TEXT]


def parse_failure(body: bytes) -> tuple[int, str]:
    """(code, text) of a FAILED body; anything malformed is crashcart's own failure."""
    head, _, text = body.partition(b":")
    code = int(head) if head.isdigit() and int(head) in CODES else EXIT_CRASHCART
    return code, text[:MAX_TEXT].decode(errors="replace")


def session_line(kind: bytes, body: bytes = b"") -> bytes:
    return kind + body.replace(b"\n", b" ")[:MAX_TEXT] + b"\n"


def send(sock: _socket.socket, kind: bytes, body: bytes = b"", fd: int = -1) -> None:
    if fd < 0:
        sock.send(kind + body)
        return
    rights = fd.to_bytes(4, sys.byteorder)
    sock.sendmsg([kind + body], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, rights)])


def recv(sock: _socket.socket) -> tuple[bytes, bytes, list[int]]:
    """(kind, body, fds) of one datagram; kind b"" at EOF."""
    try:
        msg, anc, _, _ = sock.recvmsg(4096, _socket.CMSG_SPACE(4 * 4))
    except (ConnectionResetError, InterruptedError):
        return b"", b"", []
    fds: list[int] = []
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(data[i : i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4)
            ]
    return msg[:1], msg[1:], fds

"""A GET over a unix socket, for the Docker/Podman API: ~1 ms, where the Docker SDK's import
alone costs ~190 ms. HTTP/1.0 so the daemon answers unchunked and closes the connection."""

from __future__ import annotations

import _socket

from crashcart import fastjson
from crashcart.errors import RuntimeAnswerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_ANSWER = 64 << 20


class Unreachable(Exception):
    """Nothing listens on the socket (daemon not running)."""


def get(sock_path: str, path: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, decoded JSON body); Unreachable when no daemon answers."""
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise Unreachable(f"{sock_path}: {e.strerror}") from None
        _send_all(s, f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        size = 0
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise RuntimeAnswerError(f"{sock_path}: answer to {path} is too large")
    except TimeoutError:
        raise RuntimeAnswerError(f"{sock_path}: no answer to {path} within {timeout} s") from None
    finally:
        s.close()
    return _parse(b"".join(chunks), f"{sock_path} {path}")


def _send_all(s: _socket.socket, data: bytes) -> None:
    while data:
        data = data[s.send(data) :]


def _parse(raw: bytes, where: str) -> tuple[int, Any]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if not sep or len(status_line) < 2 or not status_line[1].isdigit():
        raise RuntimeAnswerError(f"{where}: not an HTTP answer ({raw[:60]!r})")
    status = int(status_line[1])
    try:
        return status, fastjson.loads(body) if body.strip() else None
    except ValueError:
        if status >= 400:
            return status, {"message": body.decode(errors="replace").strip()}
        raise RuntimeAnswerError(f"{where}: answer is not JSON ({body[:60]!r})") from None


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def path_quote(segment: str) -> str:
    """Percent-encode one path segment (urllib.parse would cost its import time)."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in segment.encode())

"""`--record FILE`: the interactive session as an asciicast v2 file (`asciinema play FILE`).

A header line (terminal size, start time, TERM), then one JSON line per chunk the pty relay
moved: `[seconds, "o", text]` for output, `[seconds, "i", text]` for input (only with
--record-input: it holds every key typed, passwords included), `[seconds, "r", "COLSxROWS"]`
for each resize. Text is UTF-8 decoded incrementally (a character split across two reads
is written whole, with the second). Each line is one write(2), so a recording cut short by
a kill is valid up to its last line.

Self-contained: the relay calls `tap` (see relay.pump), host.py calls `resized`; the CLI
opens and closes the recording around the session. Nothing here runs unless asked for.
"""

from __future__ import annotations

import codecs
import os
import sys
import time

from crashcart.errors import CrashcartError
from crashcart.jsonout import dumps
from crashcart.linux import terminal


class Recorder:
    def __init__(self, path: str, with_input: bool, title: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise CrashcartError(f"cannot write the recording {path}: {e.strerror}") from None
        self.with_input = with_input
        self.failed = False
        self.decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in "io"}
        cols, rows = _size(terminal.get_winsize(0 if os.isatty(0) else 1)) or (80, 24)
        self.started = time.monotonic()
        header = {
            "version": 2, "width": cols, "height": rows, "timestamp": int(time.time()),
            "env": {"TERM": os.environ.get("TERM", "")}, "title": title,
        }  # fmt: skip
        self._line(header)

    def tap(self, kind: str, data: bytes) -> None:
        """What the relay moved: "o" towards the operator, "i" from the operator."""
        if kind == "i" and not self.with_input:
            return
        text = self.decoders[kind].decode(data)
        if text:
            self._event(kind, text)

    def resize(self, winsize: bytes | None) -> None:
        size = _size(winsize)
        if size is not None:
            self._event("r", f"{size[0]}x{size[1]}")

    def close(self) -> None:
        for kind, decoder in self.decoders.items():
            rest = decoder.decode(b"", final=True)
            if rest and (kind == "o" or self.with_input):
                self._event(kind, rest)
        os.close(self.fd)

    def _event(self, kind: str, text: str) -> None:
        self._line([round(time.monotonic() - self.started, 6), kind, text])

    def _line(self, value: object) -> None:
        if self.failed:
            return
        try:
            os.write(self.fd, (dumps(value) + "\n").encode())
        except OSError as e:  # a full disk must not break the operator's session
            print(f"\r\ncrashcart: recording stopped: {e.strerror}\r", file=sys.stderr)
            self.failed = True


def _size(winsize: bytes | None) -> tuple[int, int] | None:
    """(columns, rows) of a struct winsize {rows, cols, xpixel, ypixel}."""
    if not winsize or len(winsize) < 4:
        return None
    rows = int.from_bytes(winsize[0:2], sys.byteorder)
    cols = int.from_bytes(winsize[2:4], sys.byteorder)
    return (cols, rows) if rows and cols else None


active: Recorder | None = None


def start(path: str, with_input: bool, title: str) -> None:
    global active
    active = Recorder(path, with_input, title)


def stop() -> None:
    global active
    if active is not None:
        active.close()
        active = None


def resized(fd: int) -> None:
    """The operator's terminal changed size (SIGWINCH): a resize event."""
    if active is not None:
        active.resize(terminal.get_winsize(fd))

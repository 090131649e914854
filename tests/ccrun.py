"""Run the real crashcart CLI as a subprocess, the way an operator does."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEST_IMAGE = "/var/lib/crashcart/crashcart-minimal.img"


def test_image() -> str:
    return os.environ.get("CRASHCART_TEST_IMAGE", DEFAULT_TEST_IMAGE)


def env(image: str | None = None) -> dict[str, str]:
    out = dict(os.environ)
    out["CRASHCART_IMAGE"] = image or test_image()
    out["PYTHONPATH"] = str(REPO)
    return out


def argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "crashcart", *args]


def run(
    *args: str,
    input: bytes | None = None,
    timeout: float = 120,
    image: str | None = None,
    stdin: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """crashcart ARGS with stdin from `input` (or /dev/null), output captured."""
    return subprocess.run(
        argv(*args),
        input=input,
        stdin=stdin if input is None else None,
        capture_output=True,
        timeout=timeout,
        env=env(image),
        cwd=REPO,
    )


def text(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode(errors="replace")


class PtySession:
    """crashcart in a real pseudo-terminal, driven like a user at a keyboard."""

    def __init__(self, *args: str, image: str | None = None, rows: int = 40, cols: int = 120):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                import fcntl
                import struct
                import termios

                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.chdir(REPO)
                os.execve(sys.executable, argv(*args), env(image))
            finally:
                os._exit(127)
        self.output = b""
        self.status: int | None = None

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        end = time.monotonic() + timeout
        while needle not in self.output:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {needle!r} after {timeout}s; got:\n{self.output[-2000:]!r}")
            self._read(min(left, 0.2))
        return self.output

    def wait_prompt(self, timeout: float = 30) -> None:
        """Until the shell shows a prompt: input typed before the shell has set up its
        terminal can be discarded by it, as a user's type-ahead can."""
        end = time.monotonic() + timeout
        while not self.output.rstrip(b" ").endswith((b"#", b"$")):
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no prompt after {timeout}s; got:\n{self.output[-2000:]!r}")
            self._read(min(left, 0.2))

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise EOFError(f"session ended:\n{self.output[-2000:]!r}")
            self.output += chunk

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if ready:
                    chunk = os.read(self.fd, 65536)
                    self.output += chunk
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                os.close(self.fd)
                return self.status
        self.kill()
        raise TimeoutError(f"crashcart did not exit; output:\n{self.output[-2000:]!r}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass

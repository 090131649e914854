"""Helpers for tests that run the real toolbox's tools in real containers (tests/fault/
test_toolbox_plants.py, tests/runtime/test_toolbox_hygiene.py): the images, a check that
the container's files are untouched (the leak checker plus every mtime), sideload runs
through the runtime's own exec, and a pty for interactive tools."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests import ccrun
from tests.fault import kit
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.require import missing
from tests.testbed.runtimes import Container

BUILD = ccrun.REPO / "build" / "toolbox"


def default_image() -> str:
    path = os.environ.get("CRASHCART_TEST_DEFAULT_IMAGE", "/var/lib/crashcart/crashcart.img")
    if not os.path.exists(path):
        missing(f"no default toolbox at {path}: crashcart image build --recipe default")
    return path


def minimal_image() -> str:
    path = ccrun.test_image()
    if not os.path.exists(path):
        missing(f"no toolbox image at {path} (set CRASHCART_TEST_IMAGE)")
    return path


def target(c: Container) -> str:
    return f"containerd://{c.namespace}/{c.id}" if c.runtime == "containerd" else (
        f"{c.runtime}://{c.name}")  # fmt: skip


def mtimes(c: Container) -> dict[str, int]:
    """st_mtime_ns of every path of the container's filesystem (pseudo filesystems not
    walked): the leak checker compares kinds, modes and sizes; a side file created and
    removed again shows only in its directory's mtime."""
    base = Path(f"/proc/{c.pid}")
    skip = {m.mountpoint for m in lc.parse_mountinfo((base / "mountinfo").read_text())
            if m.fstype in lc.PSEUDO_FS}  # fmt: skip
    out: dict[str, int] = {}
    stack = [(base / "root", "")]
    while stack:
        directory, rel = stack.pop()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, PermissionError):
            for e in os.scandir(directory):
                path = f"{rel}/{e.name}"
                if path.startswith("/dev/pts/"):
                    continue  # `docker exec -t` allocates its terminal there
                with contextlib.suppress(FileNotFoundError):
                    st = e.stat(follow_symlinks=False)
                    out[path] = st.st_mtime_ns
                    if e.is_dir(follow_symlinks=False) and path not in skip:
                        stack.append((Path(e.path), path))
    return out


@contextlib.contextmanager
def untouched(c: Container) -> Iterator[None]:
    """The leak checker around the block (tests/fault's, which tolerates other runs on this
    host), and not one mtime of the container changed. `docker exec -t` allocates its
    terminal in the container's /dev/pts and dockerd closes it some time after the client
    returns: that entry is the runtime's, not crashcart's, and is not counted."""
    before = mtimes(c)
    snap = lc.snapshot(c)
    yield
    lines = [ln for ln in _leaks(snap) if not ln.startswith("  + /dev/pts/")]
    kept = [
        ln
        for i, ln in enumerate(lines)  # drop section headers left without a line
        if ln.startswith(" ") or (i + 1 < len(lines) and lines[i + 1].startswith(" "))
    ]
    assert not kept, f"leak check failed for {c.runtime} container {c.name}:\n" + "\n".join(kept)
    after = mtimes(c)
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    assert not changed, f"mtime changed in the container: {changed}"


def _leaks(snap: lc.Snapshot) -> list[str]:
    """kit.leaks, minus crashcart processes of other runs on this host: another engineer's
    session supervisor names its own target, not this container."""
    c, section, out = snap.container, "", []
    for line in kit.leaks(snap):
        section = line if not line.startswith(" ") else section
        if (
            section == "new crashcart processes:"
            and line.startswith(" ")
            and not (c.name in line or c.id[:12] in line)
        ):
            continue
        out.append(line)
    return out


def session(c: Container, *argv: str, image: str, env: Sequence[str] = (),
            timeout: float = 60) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    opts = [a for kv in env for a in ("--env", kv)]
    return ccrun.run(*opts, target(c), "--", *argv, image=image, timeout=timeout)


@contextlib.contextmanager
def sideloaded(c: Container, image: str) -> Iterator[None]:
    proc = ccrun.run("-m", target(c), image=image)
    assert proc.returncode == 0, proc.stderr
    try:
        yield
    finally:
        proc = ccrun.run("-u", target(c), image=image)
        assert proc.returncode == 0, proc.stderr


def runtime_exec(c: Container, argv: Sequence[str], *, env: Sequence[str] = (),
                 workdir: str | None = None, tty: bool = False) -> list[str]:  # fmt: skip
    """The runtime's own exec command line (docker or podman)."""
    cli = runtimes.DOCKER if c.runtime == "docker" else "podman"
    out = [cli, "exec", "-i"] + (["-t"] if tty else [])
    for kv in env:
        out += ["-e", kv]
    if workdir:
        out += ["-w", workdir]
    return [*out, c.name, *argv]


def sideload_run(c: Container, argv: Sequence[str], *, env: Sequence[str] = (),
                 workdir: str | None = None, timeout: float = 60) -> str:  # fmt: skip
    """stdout + stderr of `docker exec CTR ARGV` (the toolbox must be sideloaded)."""
    proc = subprocess.run(runtime_exec(c, argv, env=env, workdir=workdir), timeout=timeout,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return proc.stdout + proc.stderr


class Pty:
    """Any command in a real pseudo-terminal (TERM=xterm), driven like a user at a keyboard;
    crashcart run in it uses `image`."""

    def __init__(self, argv: Sequence[str], image: str | None = None, rows: int = 40,
                 cols: int = 120) -> None:  # fmt: skip
        env = ccrun.env(image)
        env["TERM"] = "xterm"
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            try:
                import fcntl
                import struct
                import termios

                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.chdir(ccrun.REPO)
                os.execvpe(argv[0], list(argv), env)
            finally:
                os._exit(127)
        self.output = b""

    def read_until(self, needle: bytes, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while needle not in self.output:
            if time.monotonic() > end:
                raise TimeoutError(f"no {needle!r}; got:\n{self.output[-2000:]!r}")
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise EOFError(f"ended before {needle!r}:\n{self.output[-2000:]!r}")
                self.output += chunk

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.output += os.read(self.fd, 65536)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        os.waitpid(self.pid, 0)
        raise TimeoutError(f"did not exit:\n{self.output[-2000:]!r}")


def waiters() -> Path:
    """A directory for a bind mount at /dbg: tests/image/waiter.c built with debug info as
    waiter-glibc (its loader and libc next to it), waiter-musl and waiter-static."""
    src = Path(__file__).resolve().parent / "waiter.c"
    out = BUILD / f"dbg-{hashlib.sha256(src.read_bytes()).hexdigest()[:12]}"
    if out.exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix=".dbg-", dir=_mkdir(BUILD)))
    builds = {
        "waiter-glibc": ["gcc", "-Wl,--dynamic-linker=/dbg/ld-linux-x86-64.so.2",
                         "-Wl,-rpath,/dbg"],
        "waiter-musl": ["musl-gcc"],
        "waiter-static": ["musl-gcc", "-static"],
    }  # fmt: skip
    for name, cc in builds.items():
        subprocess.run([*cc, "-g", "-O0", "-o", str(tmp / name), str(src)], check=True,
                       capture_output=True)  # fmt: skip
    for lib in ("/lib64/ld-linux-x86-64.so.2", "/lib/x86_64-linux-gnu/libc.so.6"):
        shutil.copy(lib, tmp / os.path.basename(lib))
    os.chmod(tmp, 0o755)
    tmp.rename(out)
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path

"""The toolbox's tools in real containers: `gdb -p 1` names functions (glibc, musl and
static targets, gdb and gdb-minimal, session and sideload, debug-process too); tools that
keep side files (vim, nano, less, htop, python, bash) keep them in the session's private
/tmp or home and never in the container (checked with the leak checker and every mtime of
the container's files); `mount` is there."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest

from tests import ccrun
from tests.fault.conftest import RunFactory
from tests.image import toolbox_kit as tk
from tests.testbed import runtimes
from tests.testbed.runtimes import Container


@pytest.fixture
def factory(request: pytest.FixtureRequest) -> Iterator[RunFactory]:
    f = RunFactory(request.node.name.removeprefix("test_")[:16])
    try:
        yield f
    finally:
        f.close()


# ---------------------------------------------------------------------------------------------
# gdb

WAITERS = {"glibc": ("busybox", "waiter-glibc"), "musl": ("musl", "waiter-musl"),
           "static": ("distroless", "waiter-static")}  # fmt: skip
GDB_BT = ("gdb", "-batch", "-p", "1", "-ex", "bt")


def _names_functions(out: str) -> bool:
    return bool(re.search(r"#0 .* in crashcart_wait_here \(\)", out)) and " in main () " in out


@pytest.mark.parametrize("libc", sorted(WAITERS))
def test_gdb_backtrace_names_functions(factory: RunFactory, libc: str) -> None:
    """With the default profile (no CAP_SYS_ADMIN) gdb could not open "target:/PROG" and
    every frame was `??`; in a session the toolbox's gdb now reads the target's files at
    /target."""
    image, prog = WAITERS[libc]
    c = factory("-v", f"{tk.waiters()}:/dbg:ro", image=image, command=(f"/dbg/{prog}",))
    default, minimal = tk.default_image(), tk.minimal_image()
    outs: dict[str, str] = {}
    with tk.untouched(c):
        for name, img in (("default", default), ("minimal", minimal)):
            outs[f"session {name}"] = _text(tk.session(c, *GDB_BT, image=img))
        outs["session debug-process"] = _text(
            tk.session(c, "debug-process", "-batch", "-ex", "bt", image=default)
        )
        for name, img in (("default", default), ("minimal", minimal)):
            with tk.sideloaded(c, img):
                outs[f"sideload {name}"] = tk.sideload_run(c, ["/dev/crashcart/shell", *GDB_BT])
                if img == default:
                    outs["sideload debug-process"] = tk.sideload_run(
                        c, ["/dev/crashcart/shell", "debug-process", "-batch", "-ex", "bt"]
                    )
    bad = {k: v[-600:] for k, v in outs.items() if not _names_functions(v)}
    assert not bad, bad


def _text(proc: object) -> str:
    out = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    return str(out.decode(errors="replace"))


# ---------------------------------------------------------------------------------------------
# side files

MODULE = "VALUE = 42\n"


@pytest.fixture
def busybox(factory: RunFactory) -> Container:
    """A docker busybox container whose working directory is /app, holding mod.py."""
    start = "mkdir -p /app && cd /app && exec /bin/sleep 3600"
    c = factory(image="busybox", command=("/bin/sh", "-c", start))
    res = runtimes.exec_in(
        c, ["/bin/sh", "-c", f"mkdir -p /app && printf '{MODULE}' > /app/mod.py"]
    )
    assert res.returncode == 0, res.stderr
    return c


def _crashcart_pty(c: Container, *argv: str, image: str) -> tk.Pty:
    return tk.Pty(ccrun.argv(tk.target(c), "--", *argv), image=image)


def _exists_in(c: Container, path: str) -> bool:
    return os.path.lexists(f"/proc/{c.pid}/root{path}")


def test_vim_keeps_its_swap_file_in_the_sessions_tmp(busybox: Container) -> None:
    """vim wrote /etc/.passwd.swp into the container while editing /target/etc/passwd."""
    c = busybox
    with tk.untouched(c):
        p = _crashcart_pty(c, "vim", "/target/etc/passwd", image=tk.default_image())
        p.read_until(b"All")  # the ruler: the file is loaded
        p.send(b"ihello\x1b:!ls /tmp\r")
        p.read_until(b"%target%etc%passwd.swp")
        assert not _exists_in(c, "/etc/.passwd.swp")
        p.send(b"\r:q!\r")
        assert p.wait() == 0


def test_nano_writes_no_lock_file(busybox: Container) -> None:
    """Debian's /etc/nanorc sets `locking`: a .passwd.swp next to the edited file."""
    c = busybox
    with tk.untouched(c):
        p = _crashcart_pty(c, "nano", "/target/etc/passwd", image=tk.default_image())
        p.read_until(b"lines ]")  # [ Read 3 lines ]
        p.send(b"hello-nano")
        p.read_until(b"hello-nano")
        assert not _exists_in(c, "/etc/.passwd.swp")
        p.send(b"\x18n")  # ^X, do not save
        assert p.wait() == 0


def test_less_and_htop_keep_their_files_in_the_sessions_home(busybox: Container) -> None:
    """less's history and htop's configuration go to /root, the session's own tmpfs (htop
    used to say "Can not save configuration")."""
    c = busybox
    script = ("less /target/etc/passwd; htop; cat /root/.lesshst; "
              "test -s /root/.config/htop/htoprc && echo HTOPRC-SAVED")  # fmt: skip
    with tk.untouched(c):
        p = _crashcart_pty(c, "bash", "-c", script, image=tk.default_image())
        p.read_until(b"root:x:0:0")
        p.send(b"/nobody\r")
        p.read_until(b"nonroot")
        p.send(b"q")
        p.read_until(b"F10")
        p.send(b"q")
        assert p.wait() == 0
    out = p.output.decode(errors="replace")
    assert '"nobody' in out and "HTOPRC-SAVED" in out and "Can not save" not in out, out[-800:]


def test_python_writes_no_pycache_into_the_container(busybox: Container) -> None:
    code = "import sys; sys.path.insert(0, sys.argv[1]); import mod; print(mod.VALUE)"
    c = busybox
    image = tk.default_image()
    with tk.untouched(c):
        proc = tk.session(c, "python3", "-c", code, "/target/app", image=image)
        assert ccrun.text(proc) == "42\n", proc.stderr
        with tk.sideloaded(c, image):
            out = tk.sideload_run(c, ["/dev/crashcart/shell", "python3", "-c", code, "/app"])
        assert out == "42\n", out


def test_interactive_shells_write_no_history(busybox: Container) -> None:
    """The session's shell, and in sideload mode /dev/crashcart/shell and a bare
    /dev/crashcart/bin/bash -i (whose ~/.bash_history was the container's /root)."""
    c = busybox
    image = tk.default_image()
    with tk.untouched(c):
        p = tk.Pty(ccrun.argv(tk.target(c)), image=image)
        _type_and_exit(p)
        with tk.sideloaded(c, image):
            for argv in (["/dev/crashcart/shell"], ["/dev/crashcart/bin/bash", "-i"]):
                _type_and_exit(tk.Pty(tk.runtime_exec(c, argv, tty=True)))
            _docker_ttys_closed(c)
    assert not _exists_in(c, "/root/.bash_history")


def _docker_ttys_closed(c: Container, timeout: float = 10) -> None:
    """`docker exec -t` allocates its terminal in the container's /dev/pts; dockerd closes
    it a moment after the client returns. Not ours to check: wait for it."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and set(os.listdir(f"/proc/{c.pid}/root/dev/pts")) - {"ptmx"}:
        time.sleep(0.1)


def _type_and_exit(p: tk.Pty) -> None:
    p.read_until(b"# ")
    p.send(b"echo hello-$((6*7))\r")
    p.read_until(b"hello-42")
    p.send(b"exit\r")
    assert p.wait() == 0, p.output[-500:]


def test_sideload_tools_keep_no_side_files(busybox: Container) -> None:
    """In sideload mode crashcart owns no writable place: vim (swap, viminfo), less
    (history), htop (configuration) and nano (lock file) write nothing."""
    c = busybox
    with tk.untouched(c):
        with tk.sideloaded(c, tk.default_image()):
            p = tk.Pty(tk.runtime_exec(c, ["/dev/crashcart/shell", "vim", "/etc/passwd"],
                                       tty=True))  # fmt: skip
            p.read_until(b"All")
            p.send(b"ihello\x1b")
            assert not _exists_in(c, "/etc/.passwd.swp")
            p.send(b":q!\r")
            assert p.wait() == 0
            p = tk.Pty(tk.runtime_exec(c, ["/dev/crashcart/shell", "bash", "-c",
                                           "less /etc/passwd; htop; nano /etc/group"],
                                       tty=True))  # fmt: skip
            p.read_until(b"root:x:0:0")
            p.send(b"/nobody\r")
            p.read_until(b"nonroot")
            p.send(b"q")
            p.read_until(b"F10")
            p.send(b"q")
            p.read_until(b"lines ]")
            p.send(b"hello-nano")
            p.read_until(b"hello-nano")
            assert not _exists_in(c, "/etc/.group.swp")
            p.send(b"\x18n")
            assert p.wait() == 0
            _docker_ttys_closed(c)
    assert b"Can not save" not in p.output


# ---------------------------------------------------------------------------------------------
# mount


def test_mount_is_in_both_toolboxes(busybox: Container) -> None:
    c = busybox
    with tk.untouched(c):
        for image in (tk.default_image(), tk.minimal_image()):
            proc = tk.session(c, "mount", image=image)
            assert proc.returncode == 0 and " on /target " in ccrun.text(proc), proc.stderr
            proc = tk.session(c, "check-tools", "mount", image=image)
            assert proc.returncode == 0, ccrun.text(proc)

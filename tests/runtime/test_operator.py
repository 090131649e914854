"""Regression tests for what an honest operator ran into in real use, with the relocated
minimal toolbox on docker: a script piped into the interactive shell, --user without a
group, crashcart's own command words taken as container names, and small refusals that
were silently ignored or came out as Python's text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import RunFactory
from tests.runtime.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container

PYTHON_TEXT = re.compile(r"internal error|Traceback|\[Errno|Error:")


@pytest.fixture(scope="module")
def busybox() -> Iterator[Container]:
    """One docker busybox container for the module (each test checks leaks around itself)."""
    with kit.module_busybox("operator") as c:
        yield c


@pytest.fixture
def run_container(request: pytest.FixtureRequest) -> Iterator[RunFactory]:
    """docker run with extra options (--user, --pid=host)."""
    factory = RunFactory(request.node.name.removeprefix("test_")[:16])
    try:
        yield factory
    finally:
        factory.close()


def both(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


def message_lines(stderr: bytes) -> list[str]:
    """crashcart's lines on stderr, without its `hint:` lines."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return [ln for ln in lines if not ln.startswith("crashcart: hint:")]


def refused(proc: subprocess.CompletedProcess[bytes], what: str) -> str:
    """The one line of a refusal: exit 125, one line on stderr, no Python text."""
    lines = message_lines(proc.stderr)
    assert proc.returncode == 125, (what, proc.returncode, both(proc))
    assert len(lines) == 1, (what, both(proc))
    assert not PYTHON_TEXT.search(lines[0]), (what, lines)
    return lines[0]


# ---------------------------------------------------------------------------------------------
# 10. A script piped into the interactive shell


@pytest.mark.parametrize("quiet", [False, True], ids=["plain", "quiet"])
def test_script_piped_into_the_shell(
    busybox: Container, toolbox: str, quiet: bool, leakcheck: lc.LeakCheckFn
) -> None:
    """`printf 'echo one; echo two\\n' | crashcart CTR`: stdin is a pipe, not a terminal, so
    the shell runs the script as sh would: no banner, no prompt, no job-control noise, and
    the script's last status is crashcart's."""
    opts = ("-q",) if quiet else ()
    with leakcheck(busybox):
        ok = ccrun.run(*opts, target(busybox), input=b"echo one; echo two\n", image=toolbox,
                       timeout=60)  # fmt: skip
        three = ccrun.run(*opts, target(busybox), input=b"echo one; exit 3\n", image=toolbox,
                          timeout=60)  # fmt: skip
    err = ok.stderr.decode(errors="replace")
    assert ok.stdout == b"one\ntwo\n", both(ok)
    assert ok.returncode == 0, both(ok)
    assert "job control" not in err and "terminal process group" not in err, err
    assert three.stdout == b"one\n" and three.returncode == 3, (three.returncode, both(three))


# ---------------------------------------------------------------------------------------------
# 11. --user UID takes that user's primary group


@pytest.mark.parametrize("passwd", ["no-entry", "entry"])
def test_user_gets_the_primary_group(
    run_container: RunFactory, toolbox: str, passwd: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A container running as 1000:1000. `--user 1000` runs with gid 1000 whether or not
    /etc/passwd names uid 1000 (then the gid comes from the target process of that uid):
    reading /proc/1/environ needs uid *and* gid to match. --debug says which gid and where
    it came from. -m takes no --user."""
    c = run_container("--user", "1000:1000")
    if passwd == "entry":
        with open(f"/proc/{c.pid}/root/etc/passwd", "a") as f:
            f.write("app:x:1000:1000::/:/bin/sh\n")
    t = target(c)
    with leakcheck(c):
        gid = ccrun.run("--user", "1000", t, "--", "id", "-g", image=toolbox, timeout=60)
        environ = ccrun.run("--user", "1000", t, "--", "cat", "/proc/1/environ", image=toolbox,
                            timeout=60)  # fmt: skip
        debug = ccrun.run("--debug", "--user", "1000", t, "--", "true", image=toolbox,
                          timeout=60)  # fmt: skip
        mount = ccrun.run("--user", "1000", "-m", t, image=toolbox, timeout=60)
        if mount.returncode == 0:  # today's behaviour: --user ignored, the toolbox mounted
            ccrun.run("-u", t, image=toolbox, timeout=60)
    assert gid.stdout == b"1000\n", both(gid)
    assert environ.returncode == 0 and b"PATH=" in environ.stdout, both(environ)
    said = [ln for ln in debug.stderr.decode().splitlines() if re.search(r"\bgid 1000\b", ln)]
    assert said, debug.stderr
    if passwd == "entry":
        assert "passwd" in said[0], said
    else:
        assert re.search(r"process|pid|target|container", said[0]), said
    line = refused(mount, "--user with -m")
    assert "--user" in line, line


# ---------------------------------------------------------------------------------------------
# 12. crashcart's own command words as TARGET


@pytest.mark.parametrize(
    "argv",
    [("ps", "--", "hostname"), ("-m", "ps"), ("-e", "status"), ("image", "--", "hostname")],
    ids=["ps--", "-m-ps", "-e-status", "image--"],
)
def test_command_word_as_target(argv: tuple[str, ...]) -> None:
    """A container may be called `ps` or `status`: where crashcart reads a command word as a
    TARGET (or a TARGET after a command word), it says the word is its own command and how
    to reach a container of that name. Exit 125, as every usage error; never argparse's 2."""
    word = next(a for a in argv if a in ("ps", "status", "image"))
    proc = ccrun.run(*argv, timeout=60)
    assert b"usage:" not in proc.stderr, proc.stderr
    line = refused(proc, " ".join(argv))
    assert word in line and "command" in line, line
    assert f"docker://{word}".encode() in proc.stderr, proc.stderr


def test_command_words_still_work() -> None:
    ps = ccrun.run("ps", "--json", timeout=60)
    assert ps.returncode == 0 and isinstance(json.loads(ps.stdout), list), both(ps)
    info = ccrun.run("image", "info", "--help", timeout=60)
    assert info.returncode == 0 and b"usage" in info.stdout.lower(), both(info)


# ---------------------------------------------------------------------------------------------
# 13. Small ones


def test_hosts_pid_1() -> None:
    """The host's PID 1 as TARGET: a clear refusal, whether it is a plain init or (in a VM
    sandbox) a process of another user namespace."""
    before = kit.host_state()
    proc = ccrun.run("1", "--", "true", timeout=60)
    refused(proc, "crashcart 1 -- true")
    assert kit.host_leaks(before) == []


def test_missing_working_directory(
    busybox: Container, toolbox: str, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(busybox):
        proc = ccrun.run("-w", "/nonexistent", target(busybox), "--", "true", image=toolbox,
                         timeout=60)  # fmt: skip
    line = refused(proc, "-w /nonexistent")
    assert "/nonexistent" in line, line


def test_working_directory_is_the_containers_path(
    busybox: Container, toolbox: str, leakcheck: lc.LeakCheckFn
) -> None:
    """-w names a directory of the container, as with `docker exec -w`: /www (which only
    the busybox fixture has: the distroless one has no /www) is /target/www in the
    session; a path already under /target is taken as it is."""
    assert os.path.isdir(f"/proc/{busybox.pid}/root/www")
    with leakcheck(busybox):
        www = ccrun.run("-w", "/www", target(busybox), "--", "pwd", image=toolbox, timeout=60)
        full = ccrun.run("-w", "/target/www", target(busybox), "--", "pwd", image=toolbox,
                         timeout=60)  # fmt: skip
    assert www.returncode == 0 and www.stdout == b"/target/www\n", both(www)
    assert full.returncode == 0 and full.stdout == b"/target/www\n", both(full)


def test_target_in_the_hosts_pid_namespace(run_container: RunFactory, toolbox: str) -> None:
    """`docker run --pid=host`: the session sees (and may signal) every process of the host.
    It works, with a one-line warning. (Not under the leak checker: with the host's pid
    namespace every process on this shared host counts as the container's; host mounts, loop
    devices, crashcart processes and the container's mounts are checked instead.)"""
    c = run_container("--pid=host")
    before = kit.host_state()
    mounts = Path(f"/proc/{c.pid}/mountinfo").read_text()
    proc = ccrun.run(target(c), "--", "true", image=toolbox, timeout=60)
    assert kit.host_leaks(before) == []
    assert Path(f"/proc/{c.pid}/mountinfo").read_text() == mounts
    assert proc.returncode == 0, both(proc)
    lines = message_lines(proc.stderr)
    warned = [ln for ln in lines if "host" in ln and "pid namespace" in ln.lower()]
    assert len(warned) == 1 and len(lines) == 1, proc.stderr


@pytest.mark.parametrize("flag", ["--json", "--force"])
def test_flags_of_other_modes_are_refused_in_a_session(
    busybox: Container, toolbox: str, flag: str, leakcheck: lc.LeakCheckFn
) -> None:
    """--json (ps, status) and --force (-u) mean nothing to a session: refused, not ignored."""
    with leakcheck(busybox):
        proc = ccrun.run(flag, target(busybox), "--", "true", image=toolbox, timeout=60)
    line = refused(proc, f"{flag} in a session")
    assert flag in line, line


def test_status_takes_runtime() -> None:
    proc = ccrun.run("status", "--runtime", "docker", timeout=60)
    assert proc.returncode == 0, both(proc)

"""Regression tests for what hostile (or merely unusual) containers did to crashcart in real
use: mount sources the mountinfo parser split on, a supervisor the container stopped, a
paused container, names and paths that carry terminal escapes, user IDs that mean "no
change" to setresuid, the host's devtmpfs as the container's /dev, a container churning
processes, and the state a refused -m left behind. Plus the session's `~.` escape.

Every bound is a deadline: a hang fails the test, it never hangs the suite.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import RunFactory, target
from tests.fault.test_hostile import dev_options, ns_pid
from tests.fault.test_signals import Terminal, started
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.runtimes import Container

STATE_DIR = Path(os.environ.get("CRASHCART_STATE_DIR", "/run/crashcart"))
HTTPD = "exec httpd -f -p 8080 -h /www"


@pytest.fixture(autouse=True)
def _forget_state(run_container: RunFactory) -> Iterator[None]:
    """Today's code leaves a lock file in /run/crashcart for a -m that fails or is refused
    (test_refused_mount_leaves_no_state): remove those of this test's own containers, so
    runs against today's code do not pile them up. Never another run's."""
    yield
    for c in run_container.started:
        try:
            ino = os.stat(f"/proc/{c.pid}/ns/mnt").st_ino
        except OSError:
            continue
        for suffix in (".lock", ".json"):
            (STATE_DIR / f"mnt-{ino}{suffix}").unlink(missing_ok=True)


def both(proc: subprocess.CompletedProcess[bytes]) -> str:
    return (proc.stdout + proc.stderr).decode(errors="replace")


def bounded(p: subprocess.Popen[bytes], timeout: float) -> tuple[int | None, bytes, bytes]:
    """Wait up to `timeout` s for a crashcart run: (status, or None if it did not end; its
    stdout; its stderr). A run that did not end is killed; its output is then what came
    before (a frozen or stopped process of the session may keep its pipes open)."""
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.kill()
    try:
        out, err = p.communicate(timeout=3)
    except subprocess.TimeoutExpired as e:
        out, err = e.stdout or b"", e.stderr or b""
        p.wait(10)
    return None, out, err


def message_lines(stderr: bytes) -> list[str]:
    """crashcart's error lines, without its `hint:` lines."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    return [ln for ln in lines if not ln.startswith("crashcart: hint:")]


def docker(*args: str) -> None:
    runtimes.run([runtimes.DOCKER, *args])


# ---------------------------------------------------------------------------------------------
# 1. Mount sources that Python takes for whitespace or line breaks


def test_mount_sources_made_of_control_characters(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """The kernel escapes only space, tab, newline and backslash in mountinfo: a source of
    "\\f", "\\v" or "\\x1c" arrives raw, and str.splitlines()/str.split() break on all
    three. -m, status, -e, -u and -u --force must all still work."""
    c = run_container("--cap-add", "SYS_ADMIN")
    script = " && ".join(f'mkdir -p /m{o} && mount -t tmpfs "$(printf "\\{o}")" /m{o}'
                         for o in ("014", "013", "034")) + " && echo mounted"  # fmt: skip
    assert "mounted" in kit.in_container(c, ["sh", "-c", script])
    raw = Path(f"/proc/{c.pid}/mountinfo").read_bytes()
    assert all(f" - tmpfs {ch} ".encode() in raw for ch in "\x0c\x0b\x1c"), raw[-600:]
    t = target(c)
    with leakcheck(c):
        runs = {"-m": kit.run("-m", t, image=tiny, timeout=60)}
        status = kit.run("status", "--json", timeout=60)
        runs["status --json"] = status
        runs["-e -- true"] = kit.run("-e", t, "--", "true", image=tiny, timeout=60)
        runs["-u"] = kit.run("-u", t, image=tiny, timeout=60)
        runs["-m again"] = kit.run("-m", t, image=tiny, timeout=60)
        runs["-u --force"] = kit.run("-u", "--force", t, image=tiny, timeout=60)
        still_mounted = kit.mounted(c)
    for what, proc in runs.items():
        assert proc.returncode == 0 and "internal error" not in both(proc), (what, both(proc))
    rows = json.loads(status.stdout)["mounts"]
    assert [r["mounted"] for r in rows if r["name"] == c.name] == [True], rows
    assert not still_mounted


# ---------------------------------------------------------------------------------------------
# 2. A supervisor the container's root stopped


def test_stopped_supervisor_does_not_hang_crashcart(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """The container's root may signal the supervisor (same uid, CAP_KILL): SIGSTOPped, it
    can no longer reap the command. When the command exits crashcart must not wait for a
    supervisor that will never run again: it ends the session itself (SIGKILL reaches a
    stopped process), says so, and leaves nothing behind. The test never sends SIGCONT."""
    c = run_container()
    try:
        with leakcheck(c, settle=5):
            # The shell reads one line, then exits: ash's line editor would query the
            # cursor position (ESC[6n) and wait for the terminal's answer.
            s = ccrun.PtySession(target(c), "--", "sh", "-c", "echo READY; read line",
                                 image=tiny)  # fmt: skip
            try:
                s.read_until(b"READY")
                sup = kit.supervisors(c)[0]
                kit.in_container(c, ["kill", "-STOP", str(ns_pid(sup))])
                kit.wait_for(lambda: kit.proc_state(sup) == "T", timeout=10,
                             what="the supervisor to stop")  # fmt: skip
                s.send(b"exit\r")
                try:
                    status: int | None = s.wait(15)
                except TimeoutError:
                    status = None
            finally:
                s.kill()
            out = s.output.decode(errors="replace")
            assert status is not None, f"crashcart still waits 15 s after `exit`: {out[-500:]!r}"
            assert status == 125, (status, out[-500:])
            assert "stopped" in out.split("exit", 1)[-1], out[-500:]
    finally:
        for pid in kit.supervisors(c):
            kit.kill(pid)  # teardown only: what crashcart should have ended itself


# ---------------------------------------------------------------------------------------------
# 3. The session's escape sequence


def test_tilde_dot_ends_the_session(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """`~.` at the start of a line (after Enter), as with ssh: crashcart ends the session
    within 5 s, exits 125, says why, and the operator's terminal is back in its mode."""
    with leakcheck(shared):
        t = Terminal(target(shared), "--", "sleep", "60", image=tiny)
        cc = 0
        try:
            t.read_until(b"BEGIN")
            started(shared, "sleep 60")
            cc = t.crashcart()
            time.sleep(0.3)  # crashcart puts the terminal in raw mode once the command runs
            os.write(t.fd, b"\r~.")
            out = t.read_until(b"END", timeout=5)
        finally:
            if cc:
                kit.kill(cc)
            t.close()
    lines = [ln.strip() for ln in out.splitlines()]
    before, after = lines[0], lines[lines.index("END") - 1]
    assert "RC=125" in lines, out
    said = [ln for ln in lines if "~." in ln and "crashcart" in ln]
    assert said, f"no line saying the session was ended with ~.: {out!r}"
    assert before == after, out


def _echoed(s: ccrun.PtySession, typed: bytes, timeout: float = 10) -> bytes:
    """Type a line into `cat` in the session; what came back: the pty's echo of the line
    and cat's copy of it (two CRLF-terminated lines)."""
    mark = len(s.output)
    s.send(typed)
    end = time.monotonic() + timeout
    while s.output[mark:].count(b"\r\n") < 2:
        assert time.monotonic() < end, f"no echo of {typed!r}: {s.output[mark:]!r}"
        s._read(0.2)
    return s.output[mark:]


def test_tilde_is_passed_through_except_the_escape(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """`~~` at the start of a line sends one `~`; a `~` elsewhere (even `~.` mid-line)
    reaches the command unchanged."""
    with leakcheck(shared):
        s = ccrun.PtySession(target(shared), "--", "cat", image=tiny)
        try:
            kit.wait_for(lambda: any(p.cmdline == "cat" for p in kit.session_procs(shared)),
                         what="cat to run in the session")  # fmt: skip
            time.sleep(0.3)
            first = _echoed(s, b"hello\r")
            doubled = _echoed(s, b"~~x\r")
            inline = _echoed(s, b"a~b~.c\r")
            s.send(b"\x04")
            status = s.wait(15)
        finally:
            s.kill()
    assert first == b"hello\r\nhello\r\n", first
    assert doubled == b"~x\r\n~x\r\n", doubled
    assert inline == b"a~b~.c\r\na~b~.c\r\n", inline
    assert status == 0, s.output[-300:]


# ---------------------------------------------------------------------------------------------
# 4. A paused (frozen) container


def test_paused_container(run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn) -> None:
    """`docker pause` freezes the container's cgroup: a session that joins it freezes too.
    crashcart must finish (noting the pause), and -m must say that the runtime's exec will
    fail until `docker unpause`; -u works while paused."""
    c = run_container()
    t = target(c)
    docker("pause", c.name)
    try:
        with leakcheck(c, settle=5):
            status, out, err = bounded(kit.popen(t, "--", "true", image=tiny), 20)
            assert status is not None, f"`crashcart CTR -- true` still running after 20 s: {err!r}"
            assert status == 0 and b"paused" in err, (status, err)
            mount = kit.run("-m", t, image=tiny, timeout=30)
            unmount = kit.run("-u", t, image=tiny, timeout=30)
        assert mount.returncode == 0, both(mount)
        assert "paused" in both(mount), both(mount)
        assert unmount.returncode == 0, both(unmount)
    finally:
        runtimes.run([runtimes.DOCKER, "unpause", c.name], check=False)


def test_container_paused_mid_session(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """Paused while a session runs, the supervisor cannot act on any signal (on cgroup v1 not
    even SIGKILL until the thaw). Asked three times to stop, crashcart leaves within 15 s and
    says the container is paused; once unpaused, nothing of the session is left."""
    c = run_container()
    p = None
    try:
        with leakcheck(c, settle=5):
            p = kit.popen(target(c), "--", "sleep", "60", image=tiny)
            started(c, "sleep 60")
            docker("pause", c.name)
            for _ in range(3):
                p.send_signal(signal.SIGTERM)
                time.sleep(0.5)
            status, _, err = bounded(p, 15)
            docker("unpause", c.name)
            assert status is not None, f"crashcart still running 15 s after 3 SIGTERMs: {err!r}"
            assert re.search(rb"paused|frozen", err), err
    finally:
        runtimes.run([runtimes.DOCKER, "unpause", c.name], check=False)
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)


# ---------------------------------------------------------------------------------------------
# 5. Terminal escapes in what the container controls

ESCAPES = ("\\x1b", "\\033", "\\e", "\\u001b", "^[")  # how an ESC may be shown


def controls(data: bytes) -> list[str]:
    """C0 controls but newline and tab, and C1 controls (U+0080-U+009F, as UTF-8)."""
    text = data.decode(errors="replace")
    return sorted({repr(ch) for ch in text if (ch < " " and ch not in "\n\t") or
                   "\x80" <= ch <= "\x9f"})  # fmt: skip


def assert_clean(proc: subprocess.CompletedProcess[bytes], what: str) -> None:
    found = controls(proc.stdout) + controls(proc.stderr)
    assert not found, f"{what}: crashcart printed control characters {found}: {both(proc)!r}"


def put_robust(c: Container) -> None:
    dst = Path(f"/proc/{c.pid}/root/robust")
    shutil.copy(kit.static_binary("robust"), dst)
    os.chmod(dst, 0o755)


def test_process_name_with_terminal_escapes(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A process whose comm is "\\x1b[31mFAKE", alone in a mount namespace of its own: `status`
    names such a namespace by that comm, `-m pid://` reaches it."""
    _need_musl()
    c = run_container("--cap-add", "SYS_ADMIN")
    put_robust(c)
    name = "\x1b[31mFAKE"
    docker("exec", "-d", c.name, "/robust", "comm", name, "private-mnt")
    found: list[int] = []

    def fake() -> bool:
        found[:] = [p.pid for p in lc.pidns_procs(c.pid) if _comm(p.pid) == name]
        return bool(found)

    kit.wait_for(fake, timeout=10, what="the FAKE process")
    pid = found[0]
    runs = {}
    with leakcheck(c):
        runs["ps"] = kit.run("ps", timeout=60)
        runs["-m pid://"] = kit.run("-m", f"pid://{pid}", image=tiny, timeout=60)
        runs["status"] = kit.run("status", timeout=60)
        runs["-u pid://"] = kit.run("-u", f"pid://{pid}", image=tiny, timeout=60)
        left = " /dev/crashcart " in Path(f"/proc/{pid}/mountinfo").read_text()
    for what, proc in runs.items():
        assert proc.returncode == 0, (what, both(proc))
    assert not left
    for what, proc in runs.items():
        assert_clean(proc, what)
    listed = [ln for ln in runs["status"].stdout.decode().splitlines() if "FAKE" in ln]
    assert listed and any(e in listed[0] for e in ESCAPES), runs["status"].stdout


def test_dev_crashcart_symlink_with_terminal_escapes(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    c = run_container()
    kit.in_container(c, ["ln", "-s", "\x1b]0;pwned\x07", "/dev/crashcart"])
    assert os.path.islink(f"/proc/{c.pid}/root/dev/crashcart")
    with leakcheck(c):
        refused = kit.run("-m", target(c), image=tiny, timeout=60)
    assert refused.returncode == 125 and b"symlink" in refused.stderr, both(refused)
    assert_clean(refused, "-m (symlink refusal)")
    assert b"]0;pwned" in refused.stderr, refused.stderr
    assert any(e.encode() in refused.stderr for e in ESCAPES), refused.stderr


def test_working_directory_with_terminal_escapes(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """--debug prints the session's working directory: the target's own cwd, a name the
    container chose. (The main process is `sleep`: httpd would chdir to /www.)"""
    d = "/\x1b]0;cwd\x07x"
    c = run_container(command=("sh", "-c", f"mkdir '{d}' && cd '{d}' && exec sleep 100000"))
    kit.wait_for(lambda: os.readlink(f"/proc/{c.pid}/cwd").endswith("x"), timeout=10,
                 what="the container's main process in its odd cwd")  # fmt: skip
    with leakcheck(c):
        debug = kit.run("--debug", target(c), "--", "true", image=tiny, timeout=60)
    assert debug.returncode == 0, both(debug)
    assert_clean(debug, "--debug")
    assert b"]0;cwd" in debug.stderr, debug.stderr


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().rstrip("\n")
    except OSError:
        return ""


def _need_musl() -> None:
    if shutil.which("musl-gcc") is None:
        from tests.testbed.require import missing

        missing("musl-gcc is not installed (scripts/runtimes install provides it)")


# ---------------------------------------------------------------------------------------------
# 6. --user with IDs setresuid reads as "no change", and a /etc/passwd into procfs

GHOST = "ghost:x:4294967295:4294967295::/:/bin/sh\n"


def test_user_ids_out_of_range(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """(uid_t)-1 = 4294967295 tells setresuid to leave the uid alone: the session would run
    as root. It and anything beyond 32 bits is refused, with one line naming the ID."""
    c = run_container()
    with open(f"/proc/{c.pid}/root/etc/passwd", "a") as f:
        f.write(GHOST)
    t = target(c)
    with leakcheck(c):
        runs = {u: kit.run("--user", u, t, "--", "id", "-u", image=tiny, timeout=20)
                for u in ("ghost", "4294967295", "99999999999", "1000")}  # fmt: skip
    for user, bad in (("ghost", "4294967295"), ("4294967295", "4294967295"),
                      ("99999999999", "99999999999")):  # fmt: skip
        proc = runs[user]
        lines = message_lines(proc.stderr)
        assert proc.returncode == 125, (user, proc.returncode, both(proc))
        assert len(lines) == 1 and bad in lines[0], (user, lines)
        assert not re.search(r"internal error|Error:|Errno|Traceback", lines[0]), (user, lines)
    assert runs["1000"].returncode == 0 and runs["1000"].stdout == b"1000\n", both(runs["1000"])


def test_passwd_is_a_symlink_into_procfs(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """/etc/passwd -> /proc/kmsg resolves, in the container's root, to the container's procfs,
    where kmsg reads the host's kernel log (consuming it) or fails EAGAIN when it is drained.
    crashcart reads only regular files of the container's own filesystems. Two runs: the
    first drains whatever kmsg held, the second meets the empty log."""
    c = run_container()
    passwd = Path(f"/proc/{c.pid}/root/etc/passwd")
    passwd.unlink()
    passwd.symlink_to("/proc/kmsg")
    with leakcheck(c):
        runs = []
        for _ in range(2):
            t0 = time.monotonic()
            p = kit.popen("--user", "someone", target(c), "--", "true", image=tiny)
            status, _, err = bounded(p, 10)
            runs.append((status, err, time.monotonic() - t0))
    for status, err, took in runs:
        lines = message_lines(err)
        assert status == 125, (status, err, took)
        assert len(lines) == 1 and not re.search(r"internal error|Errno", lines[0]), lines


# ---------------------------------------------------------------------------------------------
# 7. The host's devtmpfs as the container's /dev


def test_hosts_dev_in_the_container_is_refused(run_container: RunFactory, tiny: str) -> None:
    """`docker run -v /dev:/dev`: the container's /dev is the host's devtmpfs, so a
    /dev/crashcart made there appears on the host. -m refuses."""
    host_point = Path("/dev/crashcart")
    assert not host_point.exists(), "the host has a /dev/crashcart before the test"
    c = run_container("-v", "/dev:/dev")
    dev = [ln for ln in Path(f"/proc/{c.pid}/mountinfo").read_text().split("\n")
           if ln.split(" ")[4:5] == ["/dev"]][-1]  # fmt: skip
    assert " - devtmpfs " in dev, dev
    before = lc.snapshot(c)
    try:
        refused = kit.run("-m", target(c), image=tiny, timeout=60)
        on_host = host_point.exists()
        leaked = _leaks_outside_dev(before)
    finally:
        if host_point.exists():  # today's behaviour: undo it, then make sure it is gone
            kit.run("-u", "--force", target(c), image=tiny, timeout=60)
            if host_point.is_dir() and not os.listdir(host_point):
                host_point.rmdir()
    assert refused.returncode == 125, both(refused)
    assert re.search(r"devtmpfs|host's /dev", refused.stderr.decode()), refused.stderr
    assert not on_host, "the host has a /dev/crashcart after -m"
    assert not leaked, leaked


def _leaks_outside_dev(before: lc.Snapshot) -> list[str]:
    """The leak check, minus changes of the host's /dev that other runs on this host make
    (a loop device node appearing): this container's /dev *is* the host's."""
    kept = [ln for ln in kit.leaks(before) if not re.match(r"  [-+~] /dev/(?!crashcart)", ln)]
    return [ln for ln in kept if ln.startswith(" ")]


# ---------------------------------------------------------------------------------------------
# 8. Processes (and mount namespaces) that come and go while `status` looks


def test_status_while_the_container_churns_processes(run_container: RunFactory) -> None:
    """Processes exec'ing and exiting all the time, some in a mount namespace of their own
    (`unshare -m`): every one may be gone between two reads of /proc."""
    churn = (
        "for i in 1 2; do (while :; do /bin/true; done) & done; "
        "for i in 1 2 3; do (while :; do unshare -m /bin/true; done) & done; " + HTTPD
    )
    c = run_container("--cap-add", "SYS_ADMIN", command=("sh", "-c", churn))
    kit.wait_for(lambda: len(lc.pidns_procs(c.pid)) >= 6, timeout=10, what="the churn")
    bad = []
    for _ in range(30):
        proc = kit.run("status", timeout=30)
        if proc.returncode != 0 or b"internal error" in proc.stderr:
            bad.append(both(proc).strip())
    assert not bad, f"{len(bad)} of 30 `crashcart status` runs failed: {bad[:3]}"


# ---------------------------------------------------------------------------------------------
# 9. What a refused -m leaves in /run/crashcart


@pytest.mark.parametrize("why", ["regular-file", "read-only-dev"])
def test_refused_mount_leaves_no_state(
    run_container: RunFactory, why: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A -m refused in the container (/dev/crashcart is a file) or before touching it (/dev is
    read-only) leaves neither a record nor a lock file of the container's mount namespace
    in /run/crashcart: nothing would ever remove them."""
    if why == "regular-file":
        c = run_container()
        kit.in_container(c, ["touch", "/dev/crashcart"])
    else:
        c = run_container("--cap-add", "SYS_ADMIN", command=(
            "sh", "-c", f"mount -o remount,ro /dev && {HTTPD}"))  # fmt: skip
        kit.wait_for(lambda: "ro" in dev_options(c), what="/dev read-only")
    ino = os.stat(f"/proc/{c.pid}/ns/mnt").st_ino
    files = [STATE_DIR / f"mnt-{ino}.lock", STATE_DIR / f"mnt-{ino}.json"]
    assert not any(f.exists() for f in files), "stale state for this namespace before the test"
    with leakcheck(c):
        refused = kit.run("-m", target(c), image=tiny, timeout=60)
    left = [str(f) for f in files if f.exists()]
    for f in files:
        f.unlink(missing_ok=True)  # today's leftovers: never piling up in /run/crashcart
    assert refused.returncode == 125 and b"/dev" in refused.stderr, both(refused)
    assert left == []


# ---------------------------------------------------------------------------------------------
# Found while writing the above (not in the brief): a /dev/crashcart in the container


@pytest.mark.parametrize("kind", ["symlink", "sideloaded"])
def test_session_with_a_dev_crashcart_in_the_container(
    run_container: RunFactory, kind: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """The session mirrors the container's /dev, then makes its own /dev/crashcart: an entry
    of that name in the container (a symlink it made, or the toolbox -m sideloaded) must not
    make the session fail (today: EEXIST)."""
    c = run_container()
    t = target(c)
    if kind == "symlink":
        kit.in_container(c, ["ln", "-s", "/nowhere", "/dev/crashcart"])
    with leakcheck(c):
        if kind == "sideloaded":
            assert kit.run("-m", t, image=tiny, timeout=60).returncode == 0
        session = kit.run(t, "--", "ls", "/dev/crashcart/bin/busybox", image=tiny, timeout=60)
        if kind == "sideloaded":
            assert kit.run("-u", t, image=tiny, timeout=60).returncode == 0
    assert session.returncode == 0, both(session)
    assert session.stdout == b"/dev/crashcart/bin/busybox\n", both(session)

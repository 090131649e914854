"""Operator experience on real containers: the audit trail after sessions, sideloads, kills
and errors; session recording through a real pty; the zipapp. A docker busybox container
and the fault suite's tiny toolbox (tests/fault/kit.py); every attach is leak-checked."""

from __future__ import annotations

import _socket
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ccrun
from tests.fault import kit
from tests.testbed import leakcheck as lc
from tests.testbed.require import missing
from tests.testbed.runtimes import Container


@pytest.fixture(scope="module")
def tiny() -> str:
    for tool in ("musl-gcc", "mkfs.erofs"):
        if not Path(f"/usr/bin/{tool}").exists():
            missing(f"{tool} is not installed (scripts/runtimes install provides it)")
    return str(kit.tiny_toolbox("erofs"))


@pytest.fixture(scope="module")
def box() -> Iterator[Container]:
    with kit.module_busybox("opsx") as c:
        yield c


@pytest.fixture
def leakcheck() -> lc.LeakCheckFn:
    """tests/testbed's leak checker, tolerant of what other engineers' runs on this host
    remove meanwhile (tests/fault/kit.py)."""
    return kit.leakcheck


class Audit:
    """crashcart runs with the audit log in a directory of the test's own."""

    def __init__(self, tmp: Path, image: str) -> None:
        self.dir = tmp / "audit"
        self.config = tmp / "crashcart.conf"
        self.config.write_text("# test config\n")
        self.image = image

    def env(self, **extra: str) -> dict[str, str]:
        env = ccrun.env(self.image) | {
            "CRASHCART_AUDIT_DIR": str(self.dir),
            "CRASHCART_CONFIG": str(self.config),
        }
        return env | extra

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ccrun.argv(*args),
            env=self.env(**extra),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            cwd=ccrun.REPO,
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ccrun.argv(*args),
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ccrun.REPO,
        )

    def records(self) -> list[dict[str, object]]:
        log = self.dir / "audit.log"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def by_id(self) -> dict[str, list[dict[str, object]]]:
        out: dict[str, list[dict[str, object]]] = {}
        for r in self.records():
            out.setdefault(str(r["id"]), []).append(r)
        return out


@pytest.fixture
def audit(tmp_path: Path, tiny: str) -> Audit:
    return Audit(tmp_path, tiny)


def _sha256(path: str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_session_is_recorded_before_and_after(
    audit: Audit, box: Container, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(box):
        proc = audit.run(
            f"docker://{box.name}", "--", "sh", "-c", "exit 3", SUDO_USER="alice", SUDO_UID="1000"
        )
    assert proc.returncode == 3, proc.stderr
    ((start, end),) = audit.by_id().values()
    assert (start["event"], end["event"]) == ("start", "end")
    assert start["action"] == "session" and start["command"] == ["sh", "-c", "exit 3"]
    t = start["target"]
    assert isinstance(t, dict)
    assert (t["runtime"], t["id"], t["name"], t["pid"]) == ("docker", box.id, box.name, box.pid)
    assert "busybox" in str(t["image"])
    op = start["operator"]
    assert isinstance(op, dict) and op["sudo_user"] == "alice" and op["sudo_uid"] == 1000
    assert op["uid"] == 0
    assert end["status"] == 3 and end["error"] is None
    assert isinstance(end["duration_s"], float) and 0 < end["duration_s"] < 30
    toolbox = end["toolbox"]
    assert isinstance(toolbox, dict) and toolbox["digest"] == _sha256(audit.image)
    assert start["time"] < end["time"]
    assert (audit.dir / "audit.log").stat().st_mode & 0o777 == 0o600
    # The digest is cached: the next session's start record has it without hashing again.
    with leakcheck(box):
        assert audit.run(f"docker://{box.name}", "--", "true").returncode == 0
    second = audit.records()[-2]
    assert second["event"] == "start"
    assert second["toolbox"] == {"path": audit.image, "digest": _sha256(audit.image)}


def test_errors_are_recorded(audit: Audit, box: Container, leakcheck: lc.LeakCheckFn) -> None:
    gone = audit.run("docker://cc-test-no-such-container", "--", "true")
    assert gone.returncode == 125
    with leakcheck(box):
        missing_cmd = audit.run(f"docker://{box.name}", "--", "/no/such/program")
    assert missing_cmd.returncode == 127
    runs = list(audit.by_id().values())
    assert [len(r) for r in runs] == [2, 2]
    (s1, e1), (s2, e2) = runs
    assert s1["target"] == {"spec": "docker://cc-test-no-such-container"}
    assert e1["status"] == 125 and "no container matches" in str(e1["error"])
    assert e2["status"] == 127 and "/no/such/program" in str(e2["error"])


def test_killed_and_signalled_sessions(
    audit: Audit, box: Container, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(box):
        for signum in (signal.SIGTERM, signal.SIGKILL):
            proc = audit.popen(f"docker://{box.name}", "--", "sleep", "30")
            kit.wait_for(
                lambda: len(audit.records()) == 1 and kit.supervisors(box),
                what="the session's start record and supervisor",
            )
            time.sleep(0.3)  # the command runs
            os.kill(proc.pid, signum)
            proc.communicate(timeout=30)
            if signum == signal.SIGTERM:
                assert proc.returncode == 128 + signal.SIGTERM
                ((start, end),) = audit.by_id().values()
                assert end["status"] == 128 + signal.SIGTERM
                (audit.dir / "audit.log").unlink()
    # SIGKILL: nothing can write the end; the start record says the session began.
    (only,) = audit.records()
    assert only["event"] == "start" and only["command"] == ["sleep", "30"]
    # ... and doctor points at it.
    _, checks = _doctor(audit, image=audit.image)
    killed = checks["unfinished runs"]
    assert killed["status"] == "warn" and "1 crashcart run(s) were killed" in killed["detail"]
    assert f"docker://{box.name}" in killed["detail"] and "crashcart status" in killed["fix"]


def test_sideload_is_recorded(audit: Audit, box: Container, leakcheck: lc.LeakCheckFn) -> None:
    with leakcheck(box):
        assert audit.run("-m", f"docker://{box.name}").returncode == 0
        assert audit.run("-u", f"docker://{box.name}").returncode == 0
        assert audit.run("-e", f"docker://{box.name}", "--", "true").returncode == 0
    recs = audit.records()
    starts = [r for r in recs if r["event"] == "start"]
    ends = [r for r in recs if r["event"] == "end"]
    assert [r["action"] for r in starts] == ["mount", "unmount", "exec"]
    assert {r["mode"] for r in starts} == {"sideload"}
    assert [r["status"] for r in ends] == [0, 0, 0]
    assert [r["id"] for r in starts] == [r["id"] for r in ends]


def test_unwritable_log_warns_or_refuses(
    audit: Audit, box: Container, leakcheck: lc.LeakCheckFn, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    audit.dir = blocker / "audit"  # ENOTDIR: the log cannot be created
    with leakcheck(box):
        warned = audit.run(f"docker://{box.name}", "--", "true")
    assert warned.returncode == 0
    assert b"warning: cannot write the audit record" in warned.stderr
    audit.config.write_text("audit_required = yes\n")
    before = lc.snapshot(box)
    refused = audit.run(f"docker://{box.name}", "--", "true")
    assert refused.returncode == 125
    err = refused.stderr.decode()
    assert "refusing to run (audit_required)" in err and len(err.splitlines()) == 2, err
    assert not lc.diff(before, lc.snapshot(box))
    audit.config.write_text("audit_required = perhaps\n")
    bad = audit.run(f"docker://{box.name}", "--", "true")
    assert bad.returncode == 125 and b"expected yes or no" in bad.stderr


def test_records_go_to_syslog(
    audit: Audit, box: Container, leakcheck: lc.LeakCheckFn, tmp_path: Path
) -> None:
    path = str(tmp_path / "log")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    audit.config.write_text(f"audit_syslog = {path}\n")
    try:
        with leakcheck(box):
            assert audit.run(f"docker://{box.name}", "--", "true").returncode == 0
        messages = [sock.recv(65536).decode() for _ in range(2)]
    finally:
        sock.close()
    for msg, event in zip(messages, ("start", "end"), strict=True):
        assert msg.startswith("<85>")  # authpriv.notice
        head, _, body = msg.partition("]: ")
        assert "crashcart[" in head
        assert json.loads(body)["event"] == event
    assert json.loads(messages[0].partition("]: ")[2]) == audit.records()[0]


# ---------------------------------------------------------------------------------------------
# crashcart doctor


def _doctor(audit: Audit, *args: str, image: str | None = None) -> tuple[int, dict[str, dict]]:
    proc = subprocess.run(
        ccrun.argv(*(("--image", image) if image else ()), "doctor", "--json", *args),
        env=audit.env(),
        capture_output=True,
        timeout=60,
        cwd=ccrun.REPO,
    )
    assert not proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] == (proc.returncode == 0)
    return proc.returncode, checks


def test_doctor_on_this_host(audit: Audit, tiny: str) -> None:
    code, checks = _doctor(audit, image=tiny)
    for name in (
        "root",
        "mount API",
        "pidfd",
        "openat2",
        "cgroups",
        "docker",
        "toolbox image",
        "toolbox mount",
        "audit log",
    ):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["toolbox mount"]["detail"].startswith("erofs mounts here")
    assert "Docker 20" in checks["docker"]["detail"] or "Docker" in checks["docker"]["detail"]
    assert checks["toolbox digest"]["detail"].startswith(_sha256(tiny))
    assert checks["toolbox manifest"]["status"] == "warn"  # the tiny toolbox has none
    assert code == 0
    text = subprocess.run(
        ccrun.argv("--image", tiny, "doctor"),
        env=audit.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ccrun.REPO,
    )
    lines = text.stdout.splitlines()
    assert lines[-1] == "everything crashcart needs is here" and text.returncode == 0
    assert all(line[0] in "✓✗! " for line in lines[:-1]), lines


def test_doctor_names_what_is_missing_and_the_fix(audit: Audit, tmp_path: Path) -> None:
    code, checks = _doctor(audit, image=str(tmp_path / "none.img"))
    assert code == 1 and checks["toolbox image"]["status"] == "fail"
    assert "crashcart image build" in checks["toolbox image"]["fix"]
    writable = tmp_path / "writable.img"
    writable.write_bytes(b"\0" * 4096)
    writable.chmod(0o666)
    code, checks = _doctor(audit, image=str(writable))
    assert code == 1 and "chmod go-w" in checks["toolbox image"]["fix"]
    writable.chmod(0o644)
    code, checks = _doctor(audit, image=str(writable))
    assert code == 1 and checks["toolbox mount"]["status"] == "fail"
    assert "not a toolbox image" in checks["toolbox mount"]["detail"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    audit.dir = blocker / "audit"
    audit.config.write_text("audit_required = yes\n")
    code, checks = _doctor(audit, image=str(writable))
    assert checks["audit log"]["status"] == "fail" and "refused" in checks["audit log"]["detail"]


def test_doctor_as_a_user(tiny: str) -> None:
    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *ccrun.argv("--image", tiny, "doctor"),
        ],
        env=ccrun.env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 1 and not proc.stderr, proc.stderr
    assert proc.stdout.splitlines()[1].startswith("✗ root")
    assert "fix: run it with sudo" in proc.stdout


# ---------------------------------------------------------------------------------------------
# Completion of target names


def test_completion_lists_the_running_containers(box: Container, tmp_path: Path) -> None:
    proc = ccrun.run("completion", "--targets")
    assert proc.returncode == 0 and not proc.stderr
    words = ccrun.text(proc).split()
    assert box.name in words and f"docker://{box.name}" in words
    as_user = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                              *ccrun.argv("completion", "--targets")], capture_output=True,
                             env=ccrun.env(), cwd="/")  # fmt: skip
    assert as_user.returncode == 0 and as_user.stdout == b"" and as_user.stderr == b""
    # bash, on TAB after a runtime prefix: readline replaces what follows the last ':'.
    script = tmp_path / "crashcart.bash"
    script.write_text(ccrun.text(ccrun.run("completion", "bash")))
    wrapper = tmp_path / "crashcart"
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={ccrun.REPO} exec {os.sys.executable} -m crashcart "$@"\n'
    )
    wrapper.chmod(0o755)
    line = f"crashcart docker://{box.name[:-2]}"
    code = (
        f'source {script}; COMP_LINE="$1"; COMP_POINT=${{#1}}; _crashcart; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    bash = subprocess.run(
        ["bash", "-c", code, "bash", line],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"),
    )
    assert bash.stdout.split() == [f"//{box.name}"], bash.stderr


# ---------------------------------------------------------------------------------------------
# The zipapp: one file, the system's Python, no site-packages


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pyz") / "crashcart.pyz"
    subprocess.run(
        ["/usr/bin/python3", str(ccrun.REPO / "scripts" / "build-pyz"), "-o", str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def _bare(pyz: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """/usr/bin/python3 -I -S: no site-packages, no PYTHONPATH, not the worktree: only the
    standard library and what the file holds."""
    return subprocess.run(
        ["/usr/bin/python3", "-I", "-S", str(pyz), *args],
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        cwd="/",
    )


def test_pyz_runs_a_session_from_one_file(
    pyz: Path, audit: Audit, box: Container, leakcheck: lc.LeakCheckFn
) -> None:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CRASHCART_IMAGE": audit.image,
        "CRASHCART_AUDIT_DIR": str(audit.dir),
        "CRASHCART_CONFIG": str(audit.config),
    }
    assert _bare(pyz, "--version", env=env).stdout.startswith(b"crashcart ")
    with leakcheck(box):
        proc = _bare(
            pyz,
            f"docker://{box.name}",
            "--",
            "sh",
            "-c",
            "cat /target/etc/hostname; exit 7",
            env=env,
        )
        mounted = _bare(pyz, "-m", f"docker://{box.name}", env=env)
        unmounted = _bare(pyz, "-u", f"docker://{box.name}", env=env)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == Path(f"/proc/{box.pid}/root/etc/hostname").read_bytes()
    assert mounted.returncode == 0 and unmounted.returncode == 0, mounted.stderr + unmounted.stderr
    assert [r["action"] for r in audit.records() if r["event"] == "start"] == [
        "session",
        "mount",
        "unmount",
    ]
    doctor = _bare(pyz, "doctor", "--json", env=env)
    assert json.loads(doctor.stdout)["ok"], doctor.stdout
    # The builder's data travels inside the file (importlib.resources reads the zip).
    build_help = _bare(pyz, "image", "build", "--help", env=env)
    assert build_help.returncode == 0 and b"recipes:" in build_help.stdout


def test_pyz_carries_bytecode_and_sources(pyz: Path) -> None:
    probe = (
        "import sys, zipimport; z = zipimport.zipimporter(sys.argv[1] + '/crashcart/'); "
        "print(z.get_code('cli').co_filename)"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", probe, str(pyz)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == "crashcart/cli.py"  # from the .pyc written by build-pyz, not compiled now
    import zipfile

    names = zipfile.ZipFile(pyz).namelist()
    assert "crashcart/attach/host.py" in names and "crashcart/attach/host.pyc" in names
    assert "crashcart/image/data/recipes/minimal.recipe" in names
    assert not [n for n in names if "__pycache__" in n]
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & 0o111


# ---------------------------------------------------------------------------------------------
# Session recording (asciicast v2)


def _record(audit: Audit, box: Container, cast: Path, *extra: str) -> ccrun.PtySession:
    """A real interactive session through a pty: type a command, resize, exit."""
    s = ccrun.PtySession(
        "--record", str(cast), *extra, f"docker://{box.name}", image=audit.image, rows=40, cols=120
    )
    try:
        s.read_until(b" # ")  # busybox ash's prompt (then it asks where the cursor is)
        time.sleep(0.3)
        s.send(b"echo rec-$((6*7))\r")
        s.read_until(b"rec-42")
        import fcntl
        import struct
        import termios

        # The operator's terminal shrinks: the kernel sends crashcart SIGWINCH.
        fcntl.ioctl(s.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        s.send(b"stty size\r")
        s.read_until(b"30 100")
        s.send(b"exit 3\r")
        assert s.wait() == 3, s.output[-500:]
    finally:
        s.kill()
    return s


def _cast(path: Path) -> tuple[dict[str, object], list[list[object]]]:
    header, *events = (json.loads(line) for line in path.read_text().splitlines())
    assert isinstance(header, dict)
    return header, events


def test_record_a_pty_session(
    audit: Audit, box: Container, leakcheck: lc.LeakCheckFn, tmp_path: Path
) -> None:
    cast = tmp_path / "session.cast"
    with leakcheck(box):
        s = _record(audit, box, cast)
    header, events = _cast(cast)
    assert header["version"] == 2 and (header["width"], header["height"]) == (120, 40)
    assert abs(int(str(header["timestamp"])) - time.time()) < 120
    assert cast.stat().st_mode & 0o777 == 0o600
    times = [float(str(e[0])) for e in events]
    assert times == sorted(times) and times[-1] < 60
    kinds = {str(e[1]) for e in events}
    assert kinds == {"o", "r"}, kinds  # no input without --record-input
    output = "".join(str(e[2]) for e in events if e[1] == "o")
    assert "rec-42" in output and "30 100" in output
    assert output.encode() in s.output  # exactly what the operator saw, in order
    assert ["r", "100x30"] in [e[1:] for e in events]
    # Debian's asciinema plays it (in a terminal, as it insists), at 20x speed.
    if not Path("/usr/bin/asciinema").exists():
        missing("asciinema is not installed (scripts/runtimes install provides it)")
    code, played = _in_pty(["asciinema", "play", "-s", "20", "-i", "0.2", str(cast)])
    assert code == 0, played[-2000:]
    assert b"rec-42" in played and b"30 100" in played


def _in_pty(argv: list[str], timeout: float = 60) -> tuple[int, bytes]:
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the program exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_record_input_too_and_refusals(
    audit: Audit, box: Container, leakcheck: lc.LeakCheckFn, tmp_path: Path
) -> None:
    cast = tmp_path / "with-input.cast"
    with leakcheck(box):
        _record(audit, box, cast, "--record-input")
    _, events = _cast(cast)
    typed = "".join(str(e[2]) for e in events if e[1] == "i")
    assert typed == "echo rec-$((6*7))\rstty size\rexit 3\r"
    # Without a pty there is nothing to record; a path crashcart cannot write is refused
    # before the container is touched.
    with leakcheck(box):
        no_pty = audit.run(
            "--record", str(tmp_path / "x.cast"), f"docker://{box.name}", "--", "true"
        )
        bad = audit.run("-t", "--record", "/proc/no/such", f"docker://{box.name}", "--", "true")
    assert no_pty.returncode == 125 and b"--record records a pty session" in no_pty.stderr
    assert bad.returncode == 125 and b"cannot write the recording /proc/no/such" in bad.stderr
    assert not (tmp_path / "x.cast").exists()

"""Attacks from hostile containers, one group per security finding of the issue tracker.

Each test demands the secure behaviour and, when it fails, prints what the attacker got.
The attacker is tests/fault/attacks.c, copied into the container and run there by the
runtime. Deterministic variants stop the first crashcart process that appears in the
target's pid namespace (CRASHCART_FAULT=stop:session:child-start) and attack it there;
racing variants run a bounded spinner in the container while crashcart runs normally.

1. A container with CAP_SYS_PTRACE seizes crashcart's processes in its pid namespace: none
   may hold a capability outside the session's profile, the host's mount namespace, a root
   or cwd on the host, or an fd but a pipe, a pty or /dev/null; crashcart must finish, and
   must give up (CRASHCART_SETUP_TIMEOUT) on a setup child the container keeps stopped.
2. Any container reads /proc/PID/{mountinfo,net/*} of crashcart's processes (no ptrace
   check): they must never describe the host.
3. A container process names itself (comm): that text must never run as shell code (the
   toolbox rc's PS1, the -m hint), and -e of a PID must not run with more privilege than a
   session would.
4. A container without capabilities swaps /dev/crashcart with a directory of its own while
   crashcart mounts: the toolbox must never sit elsewhere unnoticed, and -e must never run
   the container's files in place of the toolbox.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from crashcart.attach.options import DEBUG_CAPS
from crashcart.linux import caps
from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import RunFactory, target
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.runtimes import Container

STOP_AT_CHILD = "stop:session:child-start"
BOUND = 30.0  # seconds any crashcart run may take here, attacked or not
FD_ALLOWED = re.compile(r"pipe:\[\d+\]|/dev/pts/\d+|/dev/null")


@pytest.fixture(scope="session")
def attacks() -> Path:
    if shutil.which("musl-gcc") is None:
        pytest.skip("musl-gcc is not installed (scripts/runtimes install provides it)")
    return kit.static_binary("attacks")


# ---------------------------------------------------------------------------------------------
# Helpers


def cap_mask(names: Sequence[str]) -> int:
    return caps.mask(tuple(names))


def cap_names(value: int) -> str:
    return ",".join(caps.names(value)) or "-"


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def profile(c: Container, caps: str = "default") -> int:
    """The session's capability profile for `c` (docs/security.md): the container's
    bounding set, plus the debugging capabilities unless restricted."""
    bounding = int(status_field(c.pid, "CapBnd"), 16)
    return bounding if caps == "restricted" else bounding | cap_mask(DEBUG_CAPS)


def ns_pid(host_pid: int) -> int:
    return int(status_field(host_pid, "NSpid").split()[-1])


def devino(path: str | int) -> str:
    st = os.stat(path)
    return f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}:{st.st_ino}"


def exec_argv(c: Container, argv: Sequence[str]) -> list[str]:
    """The runtime's own exec of argv in c (foreground), for Popen."""
    if c.runtime == "runc":
        return ["runc", "exec", c.id, *argv]
    cli = runtimes.DOCKER if c.runtime == "docker" else "podman"
    return [cli, "exec", c.name, *argv]


class Spinner:
    """A bounded attack program running in the container until stop() (SIGTERM, sent from
    the host: a runtime exec would add processes of the runtime's own to the namespace)."""

    def __init__(self, c: Container, argv: Sequence[str]) -> None:
        self.c = c
        self.proc = subprocess.Popen(exec_argv(c, argv), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)  # fmt: skip
        assert self.proc.stdout is not None
        self.first = ""  # its output up to "ready" (or "held")
        for line in self.proc.stdout:
            self.first += line
            if line.startswith(("ready", "held")):
                break
        else:
            raise AssertionError(f"the attacker did not start: {self.first}")

    def stop(self) -> str:
        for pid in kit.procs_named(self.c, "/attacks"):
            kit.kill(pid, signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=20)
        return self.first + out


def new_stopped(c: Container, before: set[int], crashcart: subprocess.Popen[bytes] | None) -> int:
    """The host PID of the crashcart process stopped at the fault point in c's pid
    namespace (one that was not there before)."""
    found: list[int] = []

    def look() -> bool:
        if crashcart is not None and crashcart.poll() is not None:
            err = crashcart.stderr.read().decode() if crashcart.stderr else ""
            raise AssertionError(f"crashcart ended before any process of its stopped in the "
                                 f"container (exit {crashcart.returncode}): {err}")  # fmt: skip
        found[:] = [p.pid for p in lc.pidns_procs(c.pid)
                    if p.pid not in before and kit.proc_state(p.pid) == "T"]  # fmt: skip
        return bool(found)

    kit.wait_for(look, what=f"a crashcart process stopped at {STOP_AT_CHILD}")
    return found[0]


def pidns(c: Container) -> set[int]:
    return {p.pid for p in lc.pidns_procs(c.pid)}


class Host:
    """What of the host an attacker must never reach: a marker file of random content under
    /run, the host's mount namespace, its root and crashcart's working directories, the
    operator's stdout file and terminal."""

    def __init__(self) -> None:
        self.dir = Path(f"/run/cc-attacks-{secrets.token_hex(4)}")
        self.dir.mkdir(mode=0o700)
        self.secret = secrets.token_hex(16)
        self.marker = self.dir / "marker"
        self.marker.write_text(self.secret)
        self.mnt_ino = os.stat("/proc/self/ns/mnt").st_ino
        self.dirs = {devino(p): p for p in ("/", str(ccrun.REPO), str(self.dir), os.getcwd())}
        self.files: dict[str, str] = {}  # "dev:ino" of host files handed to crashcart
        self.ttys: dict[str, str] = {}  # "dev rdev" of the operator's terminal

    def templates(self) -> list[str]:
        """What `attacks take` tries through /proc/PID/root and cwd (it creates a file only
        next to the marker: never in the container's own directories, or the repository)."""
        rel = str(self.marker).lstrip("/")
        return [f"read:/proc/@/root/{rel}", f"read:/proc/@/cwd/{self.marker.name}",
                f"create:/proc/@/root/{self.dir.relative_to('/')}/created-through-root",
                "create:/proc/@/cwd/created-through-cwd"]  # fmt: skip

    def add_file(self, path: str | int, what: str) -> None:
        self.files[devino(path)] = what

    def add_tty(self, path: str, what: str) -> None:
        st = os.stat(path)
        dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        self.ttys[f"{dev} {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"] = what

    def created(self) -> list[str]:
        return [f"a file now exists on the host: {p}" for p in sorted(self.dir.iterdir())
                if p != self.marker]  # fmt: skip

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def host() -> Iterator[Host]:
    h = Host()
    try:
        yield h
    finally:
        h.remove()


def take_violations(out: str, allowed: int, host: Host) -> list[str]:
    """What `attacks take` / `take-spin` got that it must not have (one line each)."""
    bad = []
    for line in out.splitlines():
        what, _, rest = line.partition(" ")
        pid, _, detail = rest.partition(" ")
        if what == "caps" and "CapEff=" in detail:
            fields = dict(f.split("=", 1) for f in detail.split() if "=" in f)
            for key in ("CapPrm", "CapEff"):
                extra = int(fields[key], 16) & ~allowed
                if extra:
                    bad.append(f"pid {pid} ({fields['name']}) {key}={fields[key]}: "
                               f"{cap_names(extra)} outside the profile")  # fmt: skip
        elif what == "mnt" and detail.endswith(f":{host.mnt_ino}"):
            bad.append(f"pid {pid} is in the host's mount namespace ({detail})")
        elif what in ("root", "cwd") and detail in host.dirs:
            bad.append(f"pid {pid}: its {what} is the host's {host.dirs[detail]}")
        elif what in ("read", "create") and (detail.endswith(" ok") or " ok " in detail):
            bad.append(f"pid {pid}: {what} {detail}")
        elif what == "fd":
            bad += _fd_violation(pid, detail, host)
    return bad


def _fd_violation(pid: str, detail: str, host: Host) -> list[str]:
    head, _, link = detail.partition(" link=")
    n, *pairs = head.split()
    f = dict(p.split("=", 1) for p in pairs)
    dev_ino = f"{f['dev']}:{f['ino']}"
    if not FD_ALLOWED.fullmatch(link):
        return [f"pid {pid} fd {n} stolen: {link}"]
    if dev_ino in host.files:
        return [f"pid {pid} fd {n} stolen: {host.files[dev_ino]} ({link})"]
    if f"{f['dev']} {f['rdev']}" in host.ttys:
        return [f"pid {pid} fd {n} stolen: {host.ttys[f['dev'] + ' ' + f['rdev']]} ({link})"]
    return []


def report(title: str, bad: list[str], out: str, limit: int = 40) -> str:
    uniq = list(dict.fromkeys(bad))
    lines = [f"{title}: {len(uniq)} violation(s)", *uniq[:limit]]
    if len(uniq) > limit:
        lines.append(f"... and {len(uniq) - limit} more")
    if out:
        lines += ["--- attacker output (head) ---", *out.splitlines()[:25]]
    return "\n".join(lines)


def finish(proc: subprocess.Popen[bytes], timeout: float = BOUND) -> tuple[int | None, str]:
    """crashcart's status and stderr; None if it did not end within `timeout` (killed)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Killed; its child may hold copies of the pipes: do not wait for their EOF.
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        return None, f"(still running after {timeout:.0f} s: killed)"
    return proc.returncode, (err or b"").decode(errors="replace")


def finish_pty(session: ccrun.PtySession | None) -> tuple[int | None, str]:
    assert session is not None
    try:
        code: int | None = session.wait(BOUND)
    except TimeoutError:
        code = None
    finally:
        session.kill()
    return code, session.output.decode(errors="replace")


def crashcart(*args: str, image: str, cwd: Path | None = None, fault: str | None = None,
              stdout: int | None = subprocess.PIPE,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:  # fmt: skip
    env = ccrun.env(image) | (extra_env or {})
    if fault:
        env["CRASHCART_FAULT"] = fault
    return subprocess.Popen(ccrun.argv(*args), env=env, cwd=cwd or ccrun.REPO,
                            stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.PIPE)  # fmt: skip


def one_clear_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return 1 <= len(lines) <= 2 and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# 1. A container with CAP_SYS_PTRACE against crashcart's processes in its pid namespace


@pytest.mark.parametrize("kind", ["docker-T", "docker-pty", "docker-restricted", "podman-T"])
def test_ptrace_container_gets_nothing_from_the_setup_child(
    run_container: RunFactory, kind: str, tiny: str, attacks: Path, host: Host,
    tmp_path: Path, leakcheck: lc.LeakCheckFn, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Stopped at its first instruction in the container, crashcart's first process there is
    seized by the container's root (CAP_SYS_PTRACE): its capabilities must be within the
    session's profile, its mount namespace, root and cwd not the host's (the host marker is
    unreadable, nothing can be created on the host through it), and every fd taken with
    pidfd_getfd a pipe, a pty of the session's own or /dev/null (not the host file given as
    crashcart's stdout, not the operator's terminal); then crashcart finishes `-- true`."""
    runtime = kind.split("-")[0]
    c = run_container("--cap-add", "SYS_PTRACE", runtime=runtime)
    kit.put_file(c, attacks, "attacks")
    caps = "restricted" if kind.endswith("restricted") else "default"
    out_file = tmp_path / "stdout"
    with leakcheck(c), open(out_file, "wb") as stdout:
        before = pidns(c)
        session, proc, child = None, None, 0
        if kind == "docker-pty":
            monkeypatch.setenv("CRASHCART_FAULT", STOP_AT_CHILD)
            session = ccrun.PtySession("-t", target(c), "--", "true", image=tiny)
            monkeypatch.delenv("CRASHCART_FAULT")
        else:
            host.add_file(stdout.fileno(), f"the host file given as crashcart's stdout {out_file}")
            proc = crashcart("--caps", caps, "-T", target(c), "--", "true", image=tiny,
                             cwd=host.dir, fault=STOP_AT_CHILD, stdout=stdout.fileno())  # fmt: skip
        try:
            child = new_stopped(c, before, proc)
            if session:  # crashcart runs by now: its fd 0 is the pty.fork() terminal
                host.add_tty(f"/proc/{session.pid}/fd/0", "the operator's terminal")
            got = kit.in_container(c, ["/attacks", "take", str(ns_pid(child)), *host.templates()])
        finally:
            if child:
                kit.kill(child, signal.SIGCONT)
            code, err = finish(proc) if proc else finish_pty(session)
        bad = take_violations(got, profile(c, caps), host) + host.created()
        assert "done " in got, got
        assert not bad, report(f"{kind}: what the container took from crashcart's setup child",
                               bad, got)  # fmt: skip
        assert code == 0, f"crashcart -- true after the attack: exit {code}: {err}"


@pytest.mark.parametrize("kind", ["docker-sessions", "runc-exec-pid"])
def test_ptrace_spinner_gets_nothing_from_any_crashcart_process(
    run_container: RunFactory, kind: str, tiny: str, attacks: Path, host: Host,
    leakcheck: lc.LeakCheckFn,
) -> None:  # fmt: skip
    """No fault point: a spinner in the container seizes every new PID as it appears
    (ns_last_pid) while crashcart runs `-- true` sessions (docker: -T and --caps restricted)
    or `-e pid://PID -- true` (a container reached only by PID: -e forks into it too). No
    process it catches may hold more than the default profile or anything of the host, and
    every run must succeed."""
    if kind == "docker-sessions":
        c = run_container("--cap-add", "SYS_PTRACE")
        runs = [["-T", target(c)], ["--caps", "restricted", "-T", target(c)]] * 4
    else:
        c = kit.start_unnamed_runc((*kit.DOCKER_DEFAULT_CAPS, "CAP_SYS_PTRACE"))
        run_container.started.append(c)  # removed with the others
        runs = [["-e", f"pid://{c.pid}"]] * 4
    kit.put_file(c, attacks, "attacks")
    results = []
    with leakcheck(c):
        spinner = Spinner(c, ["/attacks", "take-spin", "40", *host.templates()])
        try:
            for args in runs:
                proc = crashcart(*args, "--", "true", image=tiny, cwd=host.dir)
                results.append((args, *finish(proc)))
        finally:
            got = spinner.stop()
        bad = take_violations(got, profile(c), host) + host.created()
        attacked = re.findall(r"^end attacks=(\d+)", got, re.M)
        assert not bad, report(f"{kind}: {attacked} attacks on crashcart's processes", bad, got)
        failed = [r for r in results if r[1] != 0]
        assert not failed, f"runs under attack failed: {failed}"


def test_setup_child_the_container_keeps_stopped_times_out(
    run_container: RunFactory, tiny: str, attacks: Path, leakcheck: lc.LeakCheckFn
) -> None:
    """The container seizes crashcart's setup child and never lets it go: with
    CRASHCART_SETUP_TIMEOUT=5 crashcart must give up within 30 s (exit 125, one clear line),
    and leave nothing once the attacker is gone."""
    c = run_container("--cap-add", "SYS_PTRACE")
    kit.put_file(c, attacks, "attacks")
    with leakcheck(c, settle=5):
        before = pidns(c)
        proc = crashcart("-T", target(c), "--", "true", image=tiny, fault=STOP_AT_CHILD,
                         extra_env={"CRASHCART_SETUP_TIMEOUT": "5"})  # fmt: skip
        child = new_stopped(c, before, proc)
        holder = Spinner(c, ["/attacks", "hold", str(ns_pid(child)), "40"])
        code: int | None = None
        try:
            kit.kill(child, signal.SIGCONT)  # no effect on a tracee in a ptrace stop
            start = time.monotonic()
            code, err = finish(proc, timeout=30)
            took = time.monotonic() - start
        finally:
            held = holder.stop()  # the attacker is gone: from here on nothing may be left
            if code is None:
                kit.kill(child)  # crashcart was killed; its child would wait on
        assert code is not None, (
            f"crashcart still waited 30 s after the container seized its setup child and kept "
            f"it stopped (CRASHCART_SETUP_TIMEOUT=5); the attacker: {held.strip()!r}"
        )
        assert code == 125 and one_clear_line(err), (code, err, took)


# ---------------------------------------------------------------------------------------------
# 2. Host data in /proc/PID/{mountinfo,net} of crashcart's processes (no ptrace needed)


@pytest.fixture
def host_tmpfs() -> Iterator[str]:
    """A tmpfs mounted on the host for this test only: in a mount table the container
    reads, it can only have come from the host's."""
    path = f"/run/cc-leak-{secrets.token_hex(4)}"
    os.mkdir(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "cc-leak", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        os.rmdir(path)


def needles(leak: str) -> list[str]:
    return [leak, "/run/docker/netns", "docker.sock", "containerd.sock"]


def test_default_container_reads_no_host_data_from_the_setup_child(
    run_container: RunFactory, tiny: str, attacks: Path, host_tmpfs: str,
    leakcheck: lc.LeakCheckFn,
) -> None:  # fmt: skip
    """A default container (no extra capability) reads /proc/P/mountinfo and /proc/P/net/
    {dev,unix,tcp,tcp6} of crashcart's first process in it, stopped at its first
    instruction: no host mount, no interface but lo, no host socket."""
    c = run_container()
    kit.put_file(c, attacks, "attacks")
    with leakcheck(c):
        before = pidns(c)
        proc = crashcart("-T", target(c), "--", "true", image=tiny, fault=STOP_AT_CHILD)
        child = 0
        try:
            child = new_stopped(c, before, proc)
            got = kit.in_container(c, ["/attacks", "peek", str(ns_pid(child)),
                                       *needles(host_tmpfs)])  # fmt: skip
        finally:
            if child:
                kit.kill(child, signal.SIGCONT)
            code, err = finish(proc)
        hits = [ln for ln in got.splitlines() if ln.startswith("hit ")]
        sizes = [ln for ln in got.splitlines() if ln.startswith("lines ")]
        assert "done " in got, got
        assert not hits, report(f"host data read from the setup child {sizes}", hits, "")
        assert code == 0, (code, err)


def test_default_container_reads_no_host_data_while_sessions_start(
    run_container: RunFactory, tiny: str, attacks: Path, host_tmpfs: str,
    leakcheck: lc.LeakCheckFn,
) -> None:  # fmt: skip
    """The same without a fault point: a spinner reads those files of every new PID, again
    and again, over 20 sessions."""
    c = run_container()
    kit.put_file(c, attacks, "attacks")
    with leakcheck(c):
        spinner = Spinner(c, ["/attacks", "peek-spin", "40", *needles(host_tmpfs)])
        try:
            codes = [finish(crashcart("-T", target(c), "--", "true", image=tiny))[0]
                     for _ in range(20)]  # fmt: skip
        finally:
            got = spinner.stop()
        hits = [ln for ln in got.splitlines() if ln.startswith("hit ")]
        reads = re.findall(r"^end reads=(\d+)", got, re.M)
        assert not hits, report(f"host data read while 20 sessions started ({reads} reads)",
                                hits, "")  # fmt: skip
        assert codes == [0] * 20, codes


# ---------------------------------------------------------------------------------------------
# 3. A container process's comm must never run as code


COMM = "$(/x);/x"  # what a process names itself (prctl PR_SET_NAME; 15 bytes at most)
X_SCRIPT = """#!/bin/sh
echo "/x ran: $0" >> /pwned
while read -r line; do
    case $line in CapPrm*|CapEff*) echo "$line" >> /pwned ;; esac
done < /proc/self/status
"""


class CommTarget:
    """A process of a container reached only by PID, whose comm is shell code."""

    def __init__(self, c: Container, pid: int) -> None:
        self.c = c
        self.pid = pid
        self.spec = f"pid://{pid}"
        self.marker = Path(f"/proc/{c.pid}/root/pwned")

    def ran(self) -> str | None:
        try:
            return self.marker.read_text()
        except FileNotFoundError:
            return None


@pytest.fixture
def comm_target(attacks: Path) -> Iterator[CommTarget]:
    """In a runc container whose cgroup path does not name it (no runtime claims it, so
    crashcart names the target after the process's comm and -e uses nsenter): /x writes
    /pwned, and a process names itself $(/x);/x."""
    c = kit.start_unnamed_runc()
    try:
        kit.put_file(c, attacks, "attacks")
        x = Path(f"/proc/{c.pid}/root/x")
        x.write_text(X_SCRIPT)
        x.chmod(0o755)
        subprocess.run(["runc", "exec", "-d", c.id, "/attacks", "comm", COMM, "300"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=True)  # fmt: skip
        kit.wait_for(lambda: kit.procs_named(c, "/attacks comm"), what="the comm process")
        pid = kit.procs_named(c, "/attacks comm")[0]
        kit.wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == COMM,
                     what="its comm")  # fmt: skip
        yield CommTarget(c, pid)
    finally:
        runtimes.remove_by_name("runc", c.name)


@pytest.mark.parametrize("mode", ["exec", "session"])
def test_comm_never_runs_at_the_prompt(
    comm_target: CommTarget, mode: str, toolbox: str, leakcheck: lc.LeakCheckFn
) -> None:
    """`crashcart -e pid://N` (sideload shell) and `crashcart pid://N` (session shell),
    interactive with the real toolbox rc file: the target's comm, $(/x);/x, must not run."""
    t = comm_target
    args = ["-e", t.spec] if mode == "exec" else [t.spec]
    with leakcheck(t.c):
        s = ccrun.PtySession(*args, image=toolbox)
        try:
            try:
                s.wait_prompt(timeout=BOUND)
                s.send(b"exit\n")
            except EOFError:
                pass  # refused: fine, as long as nothing ran
            code = s.wait(BOUND)
        finally:
            s.kill()
        ran = t.ran()
        assert ran is None, (
            f"crashcart {' '.join(args)}: the container's /x ran from the process's comm "
            f"{COMM!r}; it wrote:\n{ran}\nterminal:\n{s.output[-1500:]!r}"
        )
        assert code in (0, 125), s.output[-1500:]


def unquoted(line: str) -> list[str]:
    """`$` and backquotes that bash would expand: outside single quotes, not escaped."""
    found, quote, escaped = [], "", False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif quote == "'":
            quote = "" if ch == "'" else quote
        elif ch == "\\":
            escaped = True
        elif ch == "'" and quote != '"':
            quote = "'"
        elif ch == '"':
            quote = "" if quote == '"' else '"'
        elif ch in "$`":
            found.append(line[max(0, i - 10) : i + 12])
    return found


def shell_problems(line: str, literal: str) -> list[str]:
    """Why `line` (a command for the operator's shell) does not carry `literal` inertly."""
    problems = []
    try:
        words = shlex.split(line)
    except ValueError as e:
        return [f"shlex cannot split it: {e}"]
    if not any(literal in w for w in words):
        problems.append(f"shlex.split does not give {literal!r} back: {words}")
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    operators = [tok for tok in lexer if tok and all(ch in "();<>|&" for ch in tok)]
    if operators:
        problems.append(f"shell operators outside quotes: {operators}")
    if unquoted(line):
        problems.append(f"expansions outside single quotes: {unquoted(line)}")
    syntax = subprocess.run(["bash", "-n", "-c", line], capture_output=True, text=True)
    if syntax.returncode != 0:
        problems.append(f"bash -n refuses it: {syntax.stderr.strip()}")
    return problems


def test_mount_hint_quotes_the_comm(
    comm_target: CommTarget, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """`crashcart -m pid://N` prints commands for the operator to paste into a host shell:
    every command line that carries the container's text must carry it quoted (shlex gives
    it back, no shell operator or $( outside single quotes, bash -n accepts it). Then -u."""
    t = comm_target
    with leakcheck(t.c):
        mounted = ccrun.run("-m", t.spec, image=tiny, timeout=BOUND)
        removed = ccrun.run("-u", t.spec, timeout=BOUND)
        hint = ccrun.text(mounted)
        commands = [ln.strip() for ln in hint.splitlines()
                    if ln.startswith("  ") and not ln.strip().startswith("(")]  # fmt: skip
        carriers = [ln for ln in commands if any(part in ln for part in ("/x", "$("))]
        problems = [f"{ln}\n    -> {p}" for ln in carriers for p in shell_problems(ln, COMM)]
        assert mounted.returncode == 0, mounted.stderr
        assert commands, hint
        assert not problems, "the -m hint:\n" + hint + "\nproblems:\n" + "\n".join(problems)
        assert removed.returncode == 0, removed.stderr
        assert t.ran() is None


def test_exec_on_a_pid_has_no_more_privilege_than_a_session(
    comm_target: CommTarget, toolbox: str, leakcheck: lc.LeakCheckFn
) -> None:
    """`crashcart -e pid://N -- CMD` must run CMD within the default profile (the target's
    bounding set plus the debugging capabilities), as a session would."""
    t = comm_target
    with leakcheck(t.c):
        proc = ccrun.run("-e", t.spec, "--", "sh", "-c", "grep Cap /proc/self/status",
                         image=toolbox, timeout=BOUND)  # fmt: skip
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    allowed = profile(t.c)
    got = dict(re.findall(r"^(Cap\w+):\s*([0-9a-f]+)$", out, re.M))
    extra = {k: cap_names(int(got[k], 16) & ~allowed) for k in ("CapPrm", "CapEff")
             if int(got[k], 16) & ~allowed}  # fmt: skip
    assert not extra, (f"-e {t.spec} ran its command with capabilities outside the default "
                       f"profile {allowed:x}: {got}; extra: {extra}")  # fmt: skip
    assert t.ran() is None


# ---------------------------------------------------------------------------------------------
# 4. The sideload mount point swapped under -m / -e


TOOLBOX_FS = ("erofs", "squashfs", "ext4")


def toolbox_mounts(c: Container, baseline: set[str]) -> list[lc.Mount]:
    """Read-only toolbox-type mounts in the container that were not there before."""
    mounts = lc.parse_mountinfo(Path(f"/proc/{c.pid}/mountinfo").read_text())
    return [m for m in mounts if m.fstype in TOOLBOX_FS and m.options.split("|")[0].split(",")[0]
            == "ro" and str(m) not in baseline]  # fmt: skip


def loops_of(image: str) -> list[str]:
    real = os.path.realpath(image)
    return sorted(d for d, f in lc.loop_devices() if f == real)


def detach_all(c: Container, mounts: list[lc.Mount]) -> None:
    """The test's own cleanup between rounds (what crashcart left): lazily unmount from the
    host, in the container's mount namespace."""
    for m in mounts:
        subprocess.run(["nsenter", "-t", str(c.pid), "-m", "umount", "-l", m.mountpoint],
                       capture_output=True, check=False)  # fmt: skip


def status_mounted(c: Container) -> list[dict[str, object]]:
    """`crashcart status --json` rows about c (named by the runtime, or by one of its PIDs)."""
    res = ccrun.run("status", "--json", timeout=BOUND)
    rows = json.loads(res.stdout or b"{}").get("mounts", [])
    refs = {c.name, *(f"pid://{p}" for p in pidns(c))}
    return [r for r in rows if {r.get("name"), r.get("target")} & refs or c.id in str(r)]


@pytest.mark.parametrize("fmt", ["erofs", "squashfs"])
def test_swapped_mount_point_never_hides_the_toolbox(
    run_container: RunFactory, fmt: str, attacks: Path, leakcheck: lc.LeakCheckFn,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """A process without capabilities exchanges /dev/crashcart and its own /dev/zz
    (renameat2 RENAME_EXCHANGE) as soon as crashcart creates the former, and again when
    crashcart opens it (inotify); 10 rounds of -m, status, -u. No toolbox may sit anywhere
    but /dev/crashcart; if -m says it mounted, it is there; status reports every toolbox
    mount; -u leaves no toolbox mount and no loop device for the image."""
    image = request.getfixturevalue("tiny" if fmt == "erofs" else "tiny_squashfs")
    c = run_container("--cap-drop", "ALL")
    kit.put_file(c, attacks, "attacks")
    assert kit.in_container(c, ["sh", "-c", "mkdir /dev/zz && echo ok"]).strip() == "ok"
    baseline = {str(m) for m in lc.parse_mountinfo(Path(f"/proc/{c.pid}/mountinfo").read_text())}
    spec = target(c)
    rounds: list[str] = []
    broken = 0
    with leakcheck(c):
        swapper = Spinner(c, ["/attacks", "swap", "/dev/crashcart", "/dev/zz", "60"])
        try:
            for n in range(1, 11):
                m = ccrun.run("-m", spec, image=image, timeout=BOUND)
                said = m.returncode == 0 and b"the toolbox is at /dev/crashcart" in m.stdout
                where = [x.mountpoint for x in toolbox_mounts(c, baseline)]
                listed = [r.get("mounted") for r in status_mounted(c)]
                u = ccrun.run("-u", spec, timeout=BOUND)
                after_u, loops = toolbox_mounts(c, baseline), loops_of(image)
                left = [x.mountpoint for x in after_u]
                bad = [f"the toolbox sits at {p}" for p in where if p != "/dev/crashcart"]
                if said and "/dev/crashcart" not in where:
                    bad.append("-m said it mounted, /dev/crashcart holds no toolbox")
                if where and True not in listed:
                    bad.append("status does not report it")
                if left or loops:
                    bad.append(f"after -u: toolbox at {left}, loop devices {loops}")
                broken += bool(bad)
                rounds.append(f"round {n}: {'; '.join(bad) or 'ok'} | -m exit {m.returncode}, "
                              f"toolbox at {where}, status {listed}, -u said "
                              f"{u.stderr.decode().strip().rsplit(': ', 1)[-1]!r}")  # fmt: skip
                detach_all(c, after_u)
                _restore_dirs(c)
        finally:
            swaps = swapper.stop()
            detach_all(c, toolbox_mounts(c, baseline))
        assert re.search(r"^round 1 ", swaps, re.M), f"the attack never fired: {swaps}"
        assert not broken, "\n".join([f"{broken}/10 rounds broken ({fmt})", *rounds,
                                      "--- the attacker ---", swaps.strip()])  # fmt: skip


def _restore_dirs(c: Container) -> None:
    """The attacker's /dev/zz again (crashcart's -u may have removed it under its other
    name); an empty /dev/crashcart is left for the leak checker to see."""
    zz = Path(f"/proc/{c.pid}/root/dev/zz")
    if not zz.exists():
        zz.mkdir(mode=0o755)


PAYLOAD = """#!/bin/sh
echo "the container's $0 ran as uid $(id -u 2>/dev/null)" >> /pwned-exec
while read -r line; do
    case $line in CapEff*) echo "$line" >> /pwned-exec ;; esac
done < /proc/self/status
"""


@pytest.mark.parametrize("how", ["docker", "pid"])
def test_exec_never_runs_what_the_container_put_at_dev_crashcart(
    run_container: RunFactory, how: str, tiny: str, attacks: Path, leakcheck: lc.LeakCheckFn
) -> None:  # fmt: skip
    """While `crashcart -e TARGET -- true` mounts, a process without capabilities swaps
    /dev/crashcart away (as above), and once the toolbox has landed elsewhere fills the plain
    directory now at /dev/crashcart with its own bin/bash, usr/bin/env and shell. 10 rounds
    (docker exec; and a container reached only as pid://, where -e runs nsenter): -e must
    never run them; it exits 0 (the real toolbox ran) or 125 with one clear line."""
    if how == "docker":
        c = run_container("--cap-drop", "ALL")
        spec = target(c)
    else:
        c = kit.start_unnamed_runc(())
        run_container.started.append(c)
        spec = f"pid://{c.pid}"
    kit.put_file(c, attacks, "attacks")
    payload = Path(f"/proc/{c.pid}/root/payload")
    payload.write_text(PAYLOAD)
    payload.chmod(0o755)
    Path(f"/proc/{c.pid}/root/dev/zz").mkdir(mode=0o755)
    marker = Path(f"/proc/{c.pid}/root/pwned-exec")
    baseline = {str(m) for m in lc.parse_mountinfo(Path(f"/proc/{c.pid}/mountinfo").read_text())}
    rounds: list[str] = []
    bad: list[str] = []
    with leakcheck(c):
        for n in range(1, 11):
            attacker = Spinner(c, ["/attacks", "swapfill", "/dev/crashcart", "/dev/zz", "10",
                                   "/payload"])  # fmt: skip
            try:
                e = ccrun.run("-e", spec, "--", "true", image=tiny, timeout=BOUND)
            finally:
                got = attacker.stop()
            err = e.stderr.decode(errors="replace")
            what = got.strip().splitlines()[-2:] if got.strip() else []
            rounds.append(f"round {n}: -e exit {e.returncode} {err.strip()!r}; attacker {what}")
            if marker.exists():
                bad.append(f"round {n}: -e exit {e.returncode}; the container's files ran:\n"
                           f"{marker.read_text()}")  # fmt: skip
                marker.unlink()
            if e.returncode not in (0, 125) or (e.returncode == 125 and not one_clear_line(err)):
                bad.append(f"round {n}: -e exit {e.returncode}: {err}")
            left = [m.mountpoint for m in toolbox_mounts(c, baseline)]
            if left:
                bad.append(f"round {n}: -e left the toolbox mounted at {left}")
            _clean_round(c, baseline)
    broken = len({b.split(":")[0] for b in bad})
    assert not bad, "\n".join([f"{broken}/10 rounds broken ({how})", *bad, *rounds])


def _clean_round(c: Container, baseline: set[str]) -> None:
    """Undo what the attacker (and a fooled crashcart) left: the toolbox where it landed,
    the attacker's filled directory; /dev/zz as before."""
    detach_all(c, toolbox_mounts(c, baseline))
    dev = Path(f"/proc/{c.pid}/root/dev")
    for name in ("crashcart", "zz"):
        d = dev / name
        if d.is_dir() and any(d.iterdir()):
            shutil.rmtree(d)
    _restore_dirs(c)

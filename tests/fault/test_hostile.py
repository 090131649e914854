"""A hostile container against a live session: what its processes can and cannot reach of
crashcart's, and what the session itself can see of the host.

The container's processes see two crashcart processes: the session supervisor (never
exec'd, non-dumpable) and the command. The host-side crashcart process is in the host's
pid namespace and invisible to them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from crashcart.attach.options import DEBUG_CAPS
from crashcart.linux.caps import mask as caps_mask
from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import USERNS, RunFactory, target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container

CAP_KILL = 1 << 5


def ns_pid(host_pid: int) -> int:
    status = Path(f"/proc/{host_pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("NSpid:")).split()[-1])


def status_field(pid: int, key: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    raise KeyError(key)


def dev_options(c: Container) -> list[str]:
    for line in Path(f"/proc/{c.pid}/mountinfo").read_text().splitlines():
        if line.split()[4] == "/dev":
            return line.split()[5].split(",")
    return []


def put_probe(c: Container, probe: Path) -> None:
    dst = Path(f"/proc/{c.pid}/root/probe")
    shutil.copy(probe, dst)
    os.chmod(dst, 0o755)


class Live:
    """A session running `sleep 60` in the background: its supervisor and command."""

    def __init__(self, c: Container, image: str, *options: str, stdout: int | None = None):
        env = ccrun.env(image)
        self.proc = subprocess.Popen(
            ccrun.argv(*options, target(c), "--", "sleep", "60"), env=env, cwd=ccrun.REPO,
            stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        kit.wait_for(lambda: self._find(c), what="the session to start")

    def _find(self, c: Container) -> bool:
        sups = kit.supervisors(c)
        cmds = [p.pid for p in kit.session_procs(c) if p.cmdline == "sleep 60"]
        if sups and cmds:
            self.supervisor, self.command = sups[0], cmds[0]
            return True
        return False

    def end(self) -> None:
        kit.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(20)


def attack(c: Container, host_pid: int) -> dict[str, str]:
    """What /probe, run by the runtime in the container, got against a crashcart process."""
    out = kit.in_container(c, ["/probe", "attack", str(ns_pid(host_pid))])
    results = {}
    for line in out.splitlines():
        what, _, rest = line.partition(" ")
        results[what] = rest
    assert "ptrace-attach" in results, out
    return results


def succeeded(results: dict[str, str]) -> list[str]:
    return [f"{k} {v}" for k, v in results.items() if v.startswith("ok")]


# ---------------------------------------------------------------------------------------------
# The operator's terminal


def test_session_cannot_open_the_operators_terminal(shared: Container, tiny: str) -> None:
    """Without a pty (-T) the command's stdio are pipes, and its session has no controlling
    terminal: /dev/tty is ENXIO, so no TIOCSTI into the operator's shell."""
    s = ccrun.PtySession("-T", target(shared), "--", "sh", "-c", "probe tty; probe fds; echo END",
                         image=tiny)  # fmt: skip
    try:
        out = s.read_until(b"END").decode()
        assert s.wait() == 0
    finally:
        s.kill()
    assert "open:/dev/tty ENXIO" in out, out
    fds = [ln.split() for ln in out.splitlines() if ln.startswith("fd ")]
    assert [f[1] for f in fds] == ["0", "1", "2"], out
    assert all(f[2].startswith("pipe:") for f in fds), out


def test_pty_session_has_its_own_terminal(shared: Container, tiny: str) -> None:
    s = ccrun.PtySession(target(shared), "--", "sh", "-c", "probe fds; tty; echo END", image=tiny)
    try:
        out = s.read_until(b"END").decode()
        assert s.wait() == 0
    finally:
        s.kill()
    fds = [ln.split() for ln in out.splitlines() if ln.startswith("fd ")]
    assert [f[1:] for f in fds] == [["0", "/dev/pts/0"], ["1", "/dev/pts/0"], ["2", "/dev/pts/0"]]


# ---------------------------------------------------------------------------------------------
# What the container can see of crashcart's processes


def test_child_is_born_without_the_hosts_argv_and_environment(shared: Container, tiny: str) -> None:
    """Anyone in the container may read a process's cmdline: the child enters the pid
    namespace already showing only its title (stopped at its very first instruction)."""
    p = kit.popen("--env", "CC_SECRET=hunter2", target(shared), "--", "true", image=tiny,
                  fault="stop:session:child-start",
                  extra_env={"CC_HOST_SECRET": "hunter3"})  # fmt: skip
    try:
        child = kit.stopped_process(p.pid)
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        environ = Path(f"/proc/{child}/environ").read_bytes()
        assert child in {x.pid for x in lc.pidns_procs(shared.pid)}  # visible in the container
    finally:
        kit.kill(p.pid)
        p.wait(10)
        kit.kill(child)  # stopped before it armed its parent-death signal
    assert cmdline.rstrip(b"\0") == f"{kit.SUPERVISOR_TITLE}{target(shared)}".encode() or (
        cmdline.startswith(kit.SUPERVISOR_TITLE.encode())
    ), cmdline
    assert b"hunter" not in cmdline and b"hunter" not in environ
    assert environ.strip(b"\0") == b"", environ[:200]


def test_supervisor_keeps_nothing_of_the_host(
    shared: Container, tiny: str, tmp_path: Path, leakcheck: lc.LeakCheckFn
) -> None:
    """Once the command is forked the supervisor holds no capability but CAP_KILL
    (no_new_privs), no fd but the session's /dev/null, no environment. The command's stdio
    are pipes crashcart copies, never the operator's own fds (here a host file)."""
    out = tmp_path / "out"
    with leakcheck(shared), open(out, "wb") as f:
        s = Live(shared, tiny, stdout=f.fileno())
        try:
            sup = s.supervisor
            caps = {k: int(status_field(sup, k), 16) for k in ("CapInh", "CapPrm", "CapEff",
                                                               "CapBnd", "CapAmb")}  # fmt: skip
            nnp = status_field(sup, "NoNewPrivs")
            fds = {fd: os.readlink(f"/proc/{sup}/fd/{fd}") for fd in os.listdir(f"/proc/{sup}/fd")}
            environ = Path(f"/proc/{sup}/environ").read_bytes()
            command_out = os.readlink(f"/proc/{s.command}/fd/1")
        finally:
            s.end()
    profile = int(status_field(shared.pid, "CapBnd"), 16) | caps_mask(DEBUG_CAPS)
    # The bounding set stays the profile's (dropping it needs CAP_SETPCAP, which the
    # supervisor never holds); with no_new_privs and no exec it cannot gain anything.
    assert caps == {"CapInh": 0, "CapPrm": CAP_KILL, "CapEff": CAP_KILL, "CapBnd": profile,
                    "CapAmb": 0}, caps  # fmt: skip
    assert nnp == "1"
    assert fds == {"0": "/dev/null", "1": "/dev/null", "2": "/dev/null"}, fds
    assert environ.strip(b"\0") == b""
    # No host fd enters the container: the command's stdout is a pipe crashcart copies
    # into the operator's file.
    assert command_out.startswith("pipe:["), command_out


@pytest.mark.parametrize("kind", ["docker-default", "podman-userns-sys_ptrace"])
def test_container_cannot_ptrace_or_read_the_supervisor(
    run_container: RunFactory, kind: str, tiny: str, probe: Path
) -> None:
    """Non-dumpable, the supervisor is out of reach of every process without CAP_SYS_PTRACE
    in the host's user namespace: ptrace, process_vm_readv, /proc/PID/{environ,mem,fd,root,
    cwd,maps,ns} all fail, even for root with CAP_SYS_PTRACE in its own user namespace.
    (The container's root may list the fd *numbers* of any root process, as here.)"""
    if kind == "docker-default":
        c = run_container()
    else:
        c = run_container(*USERNS, "--cap-add", "SYS_PTRACE", runtime="podman")
    put_probe(c, probe)
    s = Live(c, tiny)
    try:
        on_supervisor = attack(c, s.supervisor)
        on_command = attack(c, s.command)
    finally:
        s.end()
    assert succeeded(on_supervisor) == [], on_supervisor
    if kind == "docker-default":
        # The command holds more capabilities than the container's root: out of reach too.
        assert succeeded(on_command) == [], on_command
        # Root may list the fd numbers of any root process; it cannot follow or read them.
        assert on_supervisor["list:fd"] == "3 entries", on_supervisor


def test_ptrace_capable_container_gets_nothing_from_the_supervisor(
    run_container: RunFactory, tiny: str, probe: Path
) -> None:
    """NOT protected: a container with CAP_SYS_PTRACE in the host's user namespace (docker
    --cap-add SYS_PTRACE, --privileged) can ptrace every process of its pid namespace, the
    supervisor included (non-dumpable is no barrier to that capability). What it finds
    there: CAP_KILL, /dev/null, a blank environment. With --caps restricted the command has
    no capability the container's root lacks."""
    c = run_container("--cap-add", "SYS_PTRACE")
    put_probe(c, probe)
    container_bnd = int(status_field(c.pid, "CapBnd"), 16)
    s = Live(c, tiny, "--caps", "restricted")
    try:
        got = attack(c, s.supervisor)
        command_caps = int(status_field(s.command, "CapPrm"), 16)
    finally:
        s.end()
    assert got["ptrace-attach"] == "ok", got  # documented in docs/security.md
    assert got["readlink:fd/0"] == "ok /dev/null", got  # nothing of the host
    assert command_caps & ~container_bnd == 0, hex(command_caps & ~container_bnd)


def test_restricted_session_is_within_reach_of_the_containers_root(
    run_container: RunFactory, tiny: str, probe: Path
) -> None:
    """NOT protected, by design of --caps restricted: the command then holds no capability
    the container's root lacks, so that root (same uid) may ptrace it and open its fds
    (the session's terminal, the operator's pipes). The supervisor stays out of reach."""
    c = run_container()
    put_probe(c, probe)
    s = Live(c, tiny, "--caps", "restricted")
    try:
        on_command = attack(c, s.command)
        on_supervisor = attack(c, s.supervisor)
    finally:
        s.end()
    assert on_command["ptrace-attach"] == "ok", on_command  # documented in docs/security.md
    assert succeeded(on_supervisor) == [], on_supervisor


# ---------------------------------------------------------------------------------------------
# What the session can see


def test_session_sees_nothing_of_the_host(shared: Container, tiny: str) -> None:
    """The command's view: only the toolbox, the target's mounts, its own /proc, /dev, /sys,
    /tmp, /run and /root; no fd but stdio; the supervisor's fds are /dev/null."""
    script = ("cat /proc/self/mountinfo; echo MARK; probe fds; echo MARK; "
              "for p in /proc/[0-9]*; do [ \"$(cat $p/cmdline | head -c 20)\" = "
              "\"crashcart: session s\" ] && ls -l $p/fd | grep -o '[0-9]* -> .*'; done; "
              "echo MARK; cat /proc/self/cgroup; echo MARK; cat /proc/1/cgroup")  # fmt: skip
    proc = ccrun.run(target(shared), "--", "sh", "-c", script, image=tiny)
    assert proc.returncode == 0, proc.stderr
    mounts, fds, sup_fds, cg_self, cg_target = ccrun.text(proc).split("MARK\n")
    points = {ln.split()[4] for ln in mounts.splitlines()}
    allowed = ("/", "/target", "/proc", "/dev", "/sys", "/tmp", "/run", "/root")
    assert all(p in allowed or p.startswith(("/target/", "/dev/", "/sys/")) for p in points), points
    assert [ln.split()[1] for ln in fds.splitlines()] == ["0", "1", "2"], fds
    assert sorted(sup_fds.split()) == sorted("0 -> /dev/null 1 -> /dev/null 2 -> /dev/null".split())
    assert cg_self == cg_target


def test_standard_dev_entries_are_crashcarts_own(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A container that turned /dev/null into a file, /dev/tty into a file of keystrokes and
    /dev/stdout into a link to its own file does not get them into the session."""
    c = run_container()
    made = kit.in_container(c, ["sh", "-c",
                                "rm /dev/null /dev/tty /dev/stdout && echo spy > /dev/null && "
                                "printf '!touch /tmp/pwned\\n' > /dev/tty && "
                                "ln -s /target/etc/passwd /dev/stdout && echo done"])  # fmt: skip
    assert made.strip().endswith("done"), made
    script = ("echo secret > /dev/null; cat /dev/tty; readlink /dev/stdout; "
              "stat -c '%n %F %t:%T' /dev/null /dev/tty /dev/zero /dev/urandom")  # fmt: skip
    with leakcheck(c):
        proc = ccrun.run(target(c), "--", "sh", "-c", script, image=tiny)
    out, err = ccrun.text(proc), proc.stderr.decode()
    assert Path(f"/proc/{c.pid}/root/dev/null").read_text() == "spy\n"
    assert "touch" not in out and "No such device or address" in err, (out, err)
    assert "/proc/self/fd/1\n" in out
    assert "/dev/null character special file 1:3" in out
    assert "/dev/tty character special file 5:0" in out


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_passwd_the_container_made_hostile(
    run_container: RunFactory, kind: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """--user NAME reads the target's /etc/passwd (in its root, no symlink out): a FIFO
    there must not hang crashcart, a device must not be read as a file."""
    c = run_container()
    make = "mkfifo /etc/passwd" if kind == "fifo" else "mknod /etc/passwd c 1 5"
    assert "ok" in kit.in_container(c, ["sh", "-c", f"rm /etc/passwd && {make} && echo ok"])
    with leakcheck(c):
        named = ccrun.run("--user", "nobody", target(c), "--", "id", "-u", image=tiny,
                          timeout=20)  # fmt: skip
        numeric = ccrun.run("--user", "1000:1000", target(c), "--", "id", "-u", image=tiny,
                            timeout=20)  # fmt: skip
    assert named.returncode == 125 and b"no user 'nobody'" in named.stderr, named.stderr
    assert numeric.returncode == 0 and numeric.stdout == b"1000\n", numeric.stderr


def test_container_at_its_pids_limit(
    run_container: RunFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """The session joins the target's cgroups, so their limits apply to it: at the pids
    limit it cannot start, says why, and --no-cgroup gets in."""
    c = run_container("--pids-limit", "1")
    with leakcheck(c):
        joined = ccrun.run(target(c), "--", "true", image=tiny)
        outside = ccrun.run("--no-cgroup", target(c), "--", "echo", "ok", image=tiny)
    assert joined.returncode == 125, joined.stderr
    assert b"pids limit" in joined.stderr and b"--no-cgroup" in joined.stderr, joined.stderr
    assert outside.returncode == 0 and outside.stdout == b"ok\n", outside.stderr


@pytest.mark.parametrize("dev", ["full", "read-only"])
def test_session_and_sideload_with_a_hostile_dev(
    run_container: RunFactory, dev: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """A /dev with no inode left, or remounted read-only by the container: the session
    builds its own /dev and works; -m fails with one clear line and leaves nothing (no
    mount point, no record for `status`)."""
    if dev == "full":
        c = run_container("--tmpfs", "/dev:rw,dev,exec,size=64k,nr_inodes=40")
        kit.in_container(c, ["sh", "-c", "i=0; while touch /dev/f$i 2>/dev/null; do "
                                         "i=$((i+1)); done; cat /dev/zero > /dev/f0"])  # fmt: skip
        why = b"No space left on device"
    else:
        c = run_container("--cap-add", "SYS_ADMIN", command=(
            "sh", "-c", "mount -o remount,ro /dev && exec httpd -f -p 8080 -h /www"))  # fmt: skip
        kit.wait_for(lambda: "ro" in dev_options(c), what="/dev read-only")
        why = b"read-only"
    with leakcheck(c):
        session = ccrun.run(target(c), "--", "sh", "-c", "ls /dev/null && echo ok", image=tiny)
        mount = ccrun.run("-m", target(c), image=tiny)
        status = ccrun.run("status", "--json")
    assert session.returncode == 0 and b"ok" in session.stdout, session.stderr
    assert mount.returncode == 125, mount.stderr
    assert why in mount.stderr and b"Traceback" not in mount.stderr, mount.stderr
    assert len(mount.stderr.decode().strip().splitlines()) <= 2, mount.stderr
    assert c.name.encode() not in status.stdout, status.stdout


def test_host_pid_is_refused_without_allow_host(tiny: str) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        refused = ccrun.run(str(sleeper.pid), "--", "true", image=tiny)
        allowed = ccrun.run("--allow-host", str(sleeper.pid), "--", "sh", "-c",
                            "cat /proc/1/cmdline | head -c 40", image=tiny)  # fmt: skip
        sideload = ccrun.run("-m", str(sleeper.pid), image=tiny)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert refused.returncode == 125
    assert b"is not in a container" in refused.stderr and b"--allow-host" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert sideload.returncode == 125 and b"mount namespace" in sideload.stderr, sideload.stderr

"""Session mode on real containers: Docker, Podman, containerd and runc, each with the
distroless, musl and busybox fixture images. Every attach runs under the leak checker."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import ccrun
from tests.runtime.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container, ContainerFactory

# A file each fixture image has, to compare byte for byte through /target.
SERVER = {"busybox": "/bin/busybox", "distroless": "/server", "musl": "/usr/local/bin/server"}


def host_view(c: Container, path: str) -> bytes:
    return Path(f"/proc/{c.pid}/root{path}").read_bytes()


def session(c: Container, *command: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return ccrun.run(target(c), "--", *command, **kw)  # type: ignore[arg-type]


def test_ps_lists_the_containers_processes_and_nothing_else(
    any_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = any_container
    inside = {p.pid for p in lc.pidns_procs(c.pid)}
    with leakcheck(c):
        proc = session(c, "ps", "-eo", "pid=,args=")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split(None, 1) for line in ccrun.text(proc).splitlines() if line.strip()]
    pids = {int(r[0]): r[1] if len(r) > 1 else "" for r in rows}
    # PID 1 is the container's main process, by its own command line.
    main_cmd = Path(f"/proc/{c.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert main_cmd in pids.get(1, ""), pids
    own = {p for p, args in pids.items() if args.startswith(("ps ", "crashcart: session"))}
    assert len(own) == 2, f"expected ps and the session supervisor, got {pids}"
    # Everything else is exactly the container's own processes: nothing of the host.
    assert len(pids) - len(own) == len(inside), (pids, inside)
    others = [a for p, a in pids.items() if p not in own]
    assert not any("pytest" in a or "dockerd" in a or "containerd" in a for a in others)


def test_target_files_are_byte_identical_through_target(
    any_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = any_container
    path = SERVER[c.image]
    with leakcheck(c):
        binary = session(c, "cat", f"/target{path}")
        passwd = session(c, "cat", "/target/etc/passwd")
    assert binary.returncode == 0, binary.stderr
    assert hashlib.sha256(binary.stdout).digest() == hashlib.sha256(host_view(c, path)).digest()
    assert passwd.stdout == host_view(c, "/etc/passwd")


def test_ss_shows_the_containers_listener(
    any_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = any_container
    with leakcheck(c):
        proc = session(c, "ss", "-tlnp")
    assert proc.returncode == 0, proc.stderr
    out = ccrun.text(proc)
    assert re.search(r"LISTEN.*:8080\b", out), out
    # ss -p names the owner: the container's server, seen with its in-container PID 1.
    assert "pid=1," in out, out


def test_exit_status_and_namespaces(
    any_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = any_container
    with leakcheck(c):
        seven = session(c, "sh", "-c", "exit 7")
        env = session(c, "sh", "-c", "echo $CRASHCART_TARGET_PID $CRASHCART_RUNTIME; hostname")
    assert seven.returncode == 7
    pid_inside, runtime, hostname = ccrun.text(env).split()
    assert pid_inside == "1" and runtime == c.runtime
    theirs = subprocess.run(["nsenter", "-t", str(c.pid), "-u", "hostname"], capture_output=True)
    assert hostname == theirs.stdout.decode().strip()


def test_interactive_gdb_on_the_server_through_a_pty(
    any_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = any_container
    with leakcheck(c):
        s = ccrun.PtySession(target(c))
        try:
            s.wait_prompt()
            s.send(b"echo READY-$((40+2))\n")
            s.read_until(b"READY-42")
            gdb = b"gdb -p $CRASHCART_TARGET_PID -batch -ex bt 2>&1"
            gdb += b" | grep --color=never -E '^#|Inferior'"
            s.send(b"tty; stty size; " + gdb + b"\n")
            s.send(b"echo DONE-$((20+3))\n")
            out = s.read_until(b"DONE-23", timeout=60).decode(errors="replace")
            s.send(b"exit 5\n")
            status = s.wait()
        finally:
            s.kill()
    assert status == 5, out
    assert "/dev/pts/0" in out, out
    assert "40 120" in out, out  # the window size of the test's terminal reached the pty
    assert re.search(r"#0 .*0x[0-9a-f]+", out), out


def test_strace_follows_a_request_to_the_server(
    busybox_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = busybox_container
    script = (
        "(sleep 1; exec 3<>/dev/tcp/127.0.0.1/8080 2>/dev/null || nc 127.0.0.1 8080 </dev/null;"
        " printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3 >/dev/null) &"
        " timeout 4 strace -f -p 1 -e trace=accept,accept4 2>&1; true"
    )
    with leakcheck(c):
        proc = session(c, "bash", "-c", script)
    assert b"accept" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("form", ["pid", "name", "full-id", "id-prefix"])
def test_target_forms(
    start_container: ContainerFactory, form: str, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = start_container("docker", "distroless")
    spec = {"pid": str(c.pid), "name": c.name, "full-id": c.id, "id-prefix": c.id[:10]}[form]
    with leakcheck(c):
        proc = ccrun.run(spec, "--", "cat", "/proc/1/cmdline")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split(b"\0")[0] == b"/server"


def test_unknown_target_names_the_runtimes_searched(toolbox: str) -> None:
    proc = ccrun.run("no-such-container-anywhere", "--", "true")
    err = proc.stderr.decode()
    assert proc.returncode == 125
    assert "no container matches 'no-such-container-anywhere'" in err
    # k8s is searched where containerd's CRI (or CRI-O) has left its state directory.
    assert re.search(r"searched: docker, (k8s, )?podman, containerd, lxc, machine, crun, runc", err)
    assert "Traceback" not in err


def test_ambiguous_prefix_across_runtimes(start_container: ContainerFactory) -> None:
    """containerd and runc IDs are names, matched only exactly: a shared prefix of two is a
    miss that names both as near matches, never one of them."""
    a = start_container("containerd", "distroless")
    b = start_container("runc", "distroless")
    prefix = os.path.commonprefix([a.id, b.id])  # this test's own: cc-test-ambiguous-...
    proc = ccrun.run(prefix, "--", "true")
    err = proc.stderr.decode()
    assert proc.returncode == 125, err
    assert f"{a.id} (containerd)" in err and f"{b.id} (runc)" in err


def test_command_not_found_and_not_executable(
    distroless_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = distroless_container
    with leakcheck(c):
        missing = session(c, "no-such-tool")
        not_exec = session(c, "/target/etc/passwd")
        signalled = session(c, "sh", "-c", "kill -TERM $$")
    assert missing.returncode == 127, missing.stderr
    assert b"no-such-tool: executable file not found in $PATH" in missing.stderr
    assert not_exec.returncode == 126, not_exec.stderr
    assert signalled.returncode == 128 + 15


def test_binary_pipes_pass_untouched(
    distroless_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = distroless_container
    blob = bytes(range(256)) * 4096 + b"\r\n\n\r\x00"
    with leakcheck(c):
        proc = session(c, "cat", input=blob)
    assert proc.returncode == 0
    assert proc.stdout == blob


def test_non_root_gets_one_line_and_125(distroless_container: Container, toolbox: str) -> None:
    c = distroless_container
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         *ccrun.argv(target(c), "--", "true")],
        capture_output=True, env=ccrun.env(), cwd=ccrun.REPO, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 125
    lines = proc.stderr.decode().strip().splitlines()
    assert lines[0].startswith("crashcart: crashcart must run as root"), lines
    assert all(line.startswith("crashcart:") for line in lines)


def test_session_leaves_no_background_process(
    busybox_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c = busybox_container
    with leakcheck(c):
        proc = session(c, "sh", "-c", "sleep 300 & sleep 300 & echo started")
        assert proc.returncode == 0
        assert b"started" in proc.stdout
    procs = lc.pidns_procs(c.pid)
    assert not [p for p in procs if "sleep 300" in str(p)], procs


def test_ctrl_c_goes_to_the_command_and_resize_is_forwarded(
    busybox_container: Container, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    import fcntl
    import struct
    import termios

    c = busybox_container
    with leakcheck(c):
        s = ccrun.PtySession(target(c))
        try:
            s.wait_prompt()
            s.send(b"sleep 100\n")
            time.sleep(1)
            s.send(b"\x03")  # Ctrl-C: SIGINT to the foreground sleep, not to crashcart
            s.read_until(b"^C")
            s.send(b"echo AFTER-$((1+1))\n")  # the session is still there
            s.read_until(b"AFTER-2")
            fcntl.ioctl(s.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
            os.kill(s.pid, signal.SIGWINCH)  # a terminal emulator does both
            time.sleep(0.5)
            s.send(b"stty size; echo SIZE-$((2+2))\n")
            out = s.read_until(b"SIZE-4").decode(errors="replace")
            s.send(b"exit\n")
            status = s.wait()
        finally:
            s.kill()
    assert status == 0
    assert "33 77" in out, out


def test_ps_lists_containers_across_runtimes(
    start_container: ContainerFactory, toolbox: str
) -> None:
    import json

    made = [start_container(rt, "distroless") for rt in ("docker", "podman", "containerd", "runc")]
    proc = ccrun.run("ps", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["runtime"], r["pid"]): r for r in json.loads(proc.stdout)}
    for c in made:
        r = rows[(c.runtime, c.pid)]
        assert r["id"] == c.id and r["toolbox"] is False
        if c.runtime in ("docker", "podman"):
            assert r["name"] == c.name and "distroless" in r["image"]
    table = ccrun.text(ccrun.run("ps"))
    header = table.splitlines()[0].split()
    assert header == ["RUNTIME", "NAME", "ID", "IMAGE", "STATE", "PID", "TOOLBOX"]
    assert all(c.name in table or c.id[:12] in table for c in made)

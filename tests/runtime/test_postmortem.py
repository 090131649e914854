"""Post-mortem sessions and replays on real runtimes: a container whose program segfaults
(tests/testbed/segv.c in the `crashy` fixture image: static busybox plus /segv), one that
wrote a file then exited, one created and never started; bad input. Nothing may leak: no
host mount, loop device or crashcart process left, and the container's writable layer has
the same checksum before and after."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ccrun
from tests.testbed import images, runtimes
from tests.testbed import leakcheck as lc
from tests.testbed.require import missing, require_runtime
from tests.testbed.runtimes import Container, ContainerFactory

SEGV_C = Path(__file__).resolve().parents[1] / "testbed" / "segv.c"
IMAGE = "crashy"
RUNTIMES = ("docker", "podman", "containerd")
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")


# -- the fixture image ----------------------------------------------------------------------


def _build_crashy() -> Path:
    out = images.default_out_dir() / IMAGE
    busybox = images.BUSYBOX.read_bytes()
    want = hashlib.sha256(SEGV_C.read_bytes() + busybox)
    tar = out / f"image-{want.hexdigest()[:16]}.tar"
    if tar.exists():
        return tar
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".crashy-", dir=out))
    try:
        segv = work / "segv"
        subprocess.run(["musl-gcc", "-static", "-g", "-O0", "-o", str(segv), str(SEGV_C)],
                       check=True, capture_output=True)  # fmt: skip
        rootfs = work / "rootfs"
        rootfs.mkdir()
        entries = [*images.busybox_entries(), images.Entry("segv", 0o755, segv.read_bytes())]
        images.materialize(entries, rootfs)
        blobs = images.image_blobs(images.layer_tar(rootfs), ["/segv"], IMAGE)
        images.write_image_tar(blobs, work / "image.tar")
        shutil.copy(segv, out / "segv")
        (work / "image.tar").rename(tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


@pytest.fixture(scope="module")
def crashy() -> Path:
    tar = _build_crashy()
    for rt in RUNTIMES:
        if runtimes.unavailable_reason(rt) is None:
            if rt == "docker":
                runtimes.run([runtimes.DOCKER, "load", "-q", "-i", str(tar)])
            elif rt == "podman":
                runtimes.run(["podman", "load", "-q", "-i", str(tar)])
            else:
                runtimes.run(runtimes.ctr("images", "import", str(tar)))
    return tar.parent / "segv"


# -- dead containers ------------------------------------------------------------------------


class Dead:
    def __init__(self, runtime: str, name: str) -> None:
        self.runtime = runtime
        self.name = name

    @property
    def target(self) -> str:
        if self.runtime == "containerd":
            return f"containerd://{runtimes.CTR_NAMESPACE}/{self.name}"
        return f"{self.runtime}://{self.name}"

    def upper(self) -> Path:
        if self.runtime == "containerd":
            line = runtimes.run(runtimes.ctr("snapshots", "mounts", "/x", self.name)).stdout
            return Path(line.split("upperdir=")[1].split(",")[0])
        if self.runtime == "docker":
            out = runtimes.run([runtimes.DOCKER, "inspect", "-f",
                                "{{.GraphDriver.Data.UpperDir}}", self.name])  # fmt: skip
        else:
            out = runtimes.run(["podman", "inspect", "--format",
                                "{{.GraphDriver.Data.UpperDir}}", self.name])  # fmt: skip
        return Path(out.stdout.strip())


@pytest.fixture
def dead() -> Iterator[list[Dead]]:
    made: list[Dead] = []
    yield made
    for d in made:
        runtimes.remove_by_name(d.runtime, d.name)


def run_to_end(made: list[Dead], runtime: str, *cmd: str, create_only: bool = False,
               extra: tuple[str, ...] = ()) -> Dead:  # fmt: skip
    require_runtime(runtime)
    d = Dead(runtime, runtimes.new_name(f"pm-{runtime}"))
    made.append(d)
    ref = images.ref(IMAGE) if runtime == "docker" else images.full_ref(IMAGE)
    if runtime == "containerd":
        return _ctr_to_end(d, ref, list(cmd), create_only, extra)
    cli = runtimes.DOCKER if runtime == "docker" else "podman"
    verb = "create" if create_only else "run"
    runtimes.run([cli, verb, "--pull=never", "--name", d.name, "--network", "none",
                  "--label", "crashcart-test=1", *extra, ref, *cmd], check=False)  # fmt: skip
    return d


def _ctr_to_end(
    d: Dead, ref: str, cmd: list[str], create_only: bool, extra: tuple[str, ...] = ()
) -> Dead:
    """ctr run -d keeps the task, stopped, once its process exits: its shim holds the exit
    status (a non-detached ctr run deletes the task, and the status with it)."""
    if create_only:
        runtimes.run(runtimes.ctr("containers", "create", "--label", "crashcart-test=1", ref,
                                  d.name, *cmd))  # fmt: skip
        return d
    log = runtimes.workdir(d.name)
    log.mkdir(parents=True, exist_ok=True)
    runtimes.run(runtimes.ctr("run", "-d", "--label", "crashcart-test=1", "--log-uri",
                              f"file://{log}/log", *extra, ref, d.name, *cmd))  # fmt: skip
    for _ in range(200):
        tasks = runtimes.run(runtimes.ctr("tasks", "ls")).stdout.split("\n")
        if any(t.split()[:1] == [d.name] and "STOPPED" in t for t in tasks):
            return d
        time.sleep(0.05)
    raise AssertionError(f"containerd task {d.name} did not stop")


def tree_sum(root: Path | None) -> str:
    """A checksum of every path under `root`: name, type, mode, owner, size, contents."""
    h = hashlib.sha256()
    if root is None:
        return ""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            h.update(f"{p.relative_to(root)} {st.st_mode} {st.st_uid} {st.st_size}\n".encode())
            if p.is_file() and not p.is_symlink():
                h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _settled(upper: Path | None) -> None:
    """Podman's cleanup (conmon starts `podman container cleanup`) may still be changing the
    layer when `podman run` has returned: wait until two looks agree."""
    last = tree_sum(upper)
    for _ in range(30):
        time.sleep(0.2)
        now = tree_sum(upper)
        if now == last:
            return
        last = now


@contextlib.contextmanager
def nothing_left(d: Dead | None) -> Iterator[None]:
    """The leak checker for a container with no process: host mounts, loop devices,
    crashcart processes, and the writable layer's checksum (None: an image, no layer)."""
    upper = d.upper() if d else None
    if upper:
        _settled(upper)
    before = (lc._host_mounts(Path("/proc/self/mountinfo").read_text()), lc.loop_devices(),
              lc.crashcart_procs(), tree_sum(upper))  # fmt: skip
    yield
    for _ in range(20):
        after = (lc._host_mounts(Path("/proc/self/mountinfo").read_text()), lc.loop_devices(),
                 lc.crashcart_procs(), tree_sum(upper))  # fmt: skip
        if after == before:
            return
        time.sleep(0.1)
    assert after[0] == before[0], ("host mounts", after[0] - before[0], before[0] - after[0])
    assert after[1] == before[1], ("loop devices", after[1] ^ before[1])
    assert after[2] == before[2], ("crashcart processes", after[2] - before[2])
    assert after[3] == before[3], f"the writable layer {upper} changed"


def record(out: str) -> dict[str, object]:
    start = out.index("{")
    depth = 0
    for i, c in enumerate(out[start:], start):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if depth == 0:
            return json.loads(out[start : i + 1])  # type: ignore[no-any-return]
    raise AssertionError(out)


# -- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_segfault_post_mortem_and_replay_under_gdb(
    runtime: str, crashy: Path, dead: list[Dead], toolbox: str
) -> None:
    d = run_to_end(dead, runtime)
    with nothing_left(d):
        proc = ccrun.run(d.target, "--", "sh", "-c", "cat /run/crashcart/postmortem.json; "
                         "echo; cat /run/crashcart/log; sha256sum /target/segv; hostname; "
                         "ip -o link | wc -l; touch /target/new || echo READ-ONLY")  # fmt: skip
        gdb = ccrun.run("--replay", d.target, "--", "gdb", "-batch", "-ex", "run", "-ex", "bt",
                        "--args", timeout=120, image=os.environ.get(
                            "CRASHCART_TEST_DEFAULT_IMAGE"))  # fmt: skip
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    rec = record(out)
    assert rec["exit_code"] == 139 and rec["signal"] == 11, rec
    assert rec["signal_name"] == "SIGSEGV" and rec["cmd"] == ["/segv"], rec
    assert "segv: about to crash" in out, out
    assert hashlib.sha256(crashy.read_bytes()).hexdigest() in out, out
    assert "READ-ONLY" in out and out.split()[-2] == "1", out  # only lo
    text = gdb.stdout.decode(errors="replace") + gdb.stderr.decode(errors="replace")
    assert "SIGSEGV" in text, text
    assert "crash_here" in text and "main" in text, text


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_written_file_is_visible_read_only(
    runtime: str, crashy: Path, dead: list[Dead], toolbox: str
) -> None:
    d = run_to_end(dead, runtime, "sh", "-c", "mkdir -p /var/out && echo kept-42 > /var/out/f")
    with nothing_left(d):
        proc = ccrun.run(
            d.target,
            "--",
            "sh",
            "-c",
            "cat /target/var/out/f; echo more >> /target/var/out/f; echo $?",
        )
    assert proc.returncode == 0, proc.stderr
    kept, status = ccrun.text(proc).split()
    assert kept == "kept-42" and status != "0", proc
    assert b"Read-only file system" in proc.stderr, proc.stderr


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_created_never_started(runtime: str, crashy: Path, dead: list[Dead], toolbox: str) -> None:
    d = run_to_end(dead, runtime, create_only=True)
    with nothing_left(d):
        proc = ccrun.run(d.target, "--", "sh", "-c", "cat /run/crashcart/postmortem.json; "
                         "ls /target/segv /target/bin/busybox")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rec = record(ccrun.text(proc))
    # containerd cannot tell "never started" from "task deleted": it says "no task".
    assert rec["status"] == ("no task" if runtime == "containerd" else "created"), rec
    assert rec["exit_code"] is None, rec
    assert "/target/segv" in ccrun.text(proc)


def test_removed_container_and_missing_image_are_one_clear_line(
    dead: list[Dead], crashy: Path, toolbox: str
) -> None:
    require_runtime("docker")
    d = run_to_end(dead, "docker", "true")
    runtimes.remove_by_name("docker", d.name)
    for args in ((d.target,), ("--replay", d.target), ("--replay", "docker://cc-test-no/such:img")):
        proc = ccrun.run(*args, "--", "true")
        err = proc.stderr.decode()
        assert proc.returncode == 125, (args, proc)
        assert "Traceback" not in err and err.startswith("crashcart: "), err
        assert "no " in err.splitlines()[0] and "matches" in err.splitlines()[0], err


def test_replay_beside_a_running_container_leaves_it_untouched(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c: Container = start_container("docker", "busybox")
    with leakcheck(c):
        proc = ccrun.run("--replay", f"docker://{c.name}", "--", "/bin/sh", "-c",
                         "echo changed > /www/index.html; cat /www/index.html; "
                         "ls /dev/crashcart/usr/bin/strace; ps -o pid=")  # fmt: skip
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    assert out.startswith("changed\n/dev/crashcart/usr/bin/strace\n"), out
    assert Path(f"/proc/{c.pid}/root/www/index.html").read_bytes() == b"crashcart-test busybox\n"
    # Its own pid namespace: the supervisor and the shell (now ps), nothing of the original.
    assert out.split()[2:] == ["1", "2"], out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_cores_are_listed_when_the_host_keeps_them(
    runtime: str, crashy: Path, dead: list[Dead], toolbox: str
) -> None:
    old = CORE_PATTERN.read_text()
    CORE_PATTERN.write_text("/tmp/cc-core.%e.%p")
    try:
        # Podman replaces its default ulimits with those given (root here may not raise them).
        nofile = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
        nofile = nofile if runtime == "podman" else ()
        if runtime == "containerd":  # ctr run has no --ulimit: raise the soft limit inside
            d = run_to_end(dead, runtime, "sh", "-c", "ulimit -c unlimited; exec /segv")
        else:
            d = run_to_end(dead, runtime, extra=("--ulimit", "core=-1", *nofile))
    finally:
        CORE_PATTERN.write_text(old)
    with nothing_left(d):
        proc = ccrun.run(d.target, "--", "cat", "/run/crashcart/cores")
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    assert "/target/tmp/cc-core.segv." in out and "gdb -ex 'set sysroot /target'" in out, out


@pytest.mark.parametrize("runtime", ("docker", "podman"))
def test_replay_runs_with_the_containers_user_env_and_workdir(
    runtime: str, crashy: Path, dead: list[Dead], toolbox: str
) -> None:
    extra = ("--user", "65534:65534", "-w", "/tmp", "-e", "CC_VAR=from-the-container")
    d = run_to_end(dead, runtime, "sh", "-c", "exit 0", extra=extra)
    script = "id -u; id -g; pwd; echo $CC_VAR; echo $0 $@; touch /tmp/mine && echo WROTE"
    with nothing_left(d):
        proc = ccrun.run("--replay", d.target, "--", "/bin/sh", "-c", script)
        again = ccrun.run("--replay", d.target, "--", "/bin/sh", "-c", "ls /tmp/mine || true")
    assert proc.returncode == 0, proc.stderr
    # The tool gets the container's command as its arguments: sh -c 'exit 0'.
    assert ccrun.text(proc).split("\n")[:6] == [
        "65534",
        "65534",
        "/tmp",
        "from-the-container",
        "sh -c exit 0",
        "WROTE",
    ], proc
    assert b"No such file" in again.stderr, again  # the first copy's writes vanished


@pytest.mark.parametrize("runtime", ("docker", "podman"))
def test_replay_of_an_image_reference(runtime: str, crashy: Path, toolbox: str) -> None:
    require_runtime(runtime)
    ref = images.ref(IMAGE) if runtime == "docker" else images.full_ref(IMAGE)
    with nothing_left(None):
        proc = ccrun.run("--replay", f"{runtime}://{ref}", "--", "strace", "-f", "-e",
                         "trace=none")  # fmt: skip
    assert proc.returncode == 139, proc  # strace passes on how its tracee died
    assert b"segv: about to crash" in proc.stdout, proc
    assert b"+++ killed by SIGSEGV +++" in proc.stderr, proc


def test_replay_net_shares_a_running_originals_network(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, toolbox: str
) -> None:
    c: Container = start_container("docker", "busybox")
    get = "wget -qO- http://127.0.0.1:8080/ || echo NO-CONNECTION"
    with leakcheck(c):
        shared = ccrun.run("--replay", "--replay-net", f"docker://{c.name}", "--", "/bin/sh",
                           "-c", get)  # fmt: skip
        own = ccrun.run("--replay", f"docker://{c.name}", "--", "/bin/sh", "-c", get)
    assert ccrun.text(shared) == "crashcart-test busybox\n", shared
    assert ccrun.text(own) == "NO-CONNECTION\n", own


def test_pruned_layers_are_one_clear_line(dead: list[Dead], crashy: Path, toolbox: str) -> None:
    """A layer directory the runtime no longer has (here: docker's -init layer of this very
    container, moved aside for the test and put back)."""
    d = run_to_end(dead, "docker", "true")
    lower = runtimes.run([runtimes.DOCKER, "inspect", "-f", "{{.GraphDriver.Data.LowerDir}}",
                          d.name]).stdout.strip().split(":")[0]  # fmt: skip
    assert lower.endswith("-init/diff"), lower
    hidden = Path(lower + ".cc-test-hidden")
    Path(lower).rename(hidden)
    try:
        for args in ((d.target,), ("--replay", d.target)):
            proc = ccrun.run(*args, "--", "true")
            err = proc.stderr.decode()
            assert proc.returncode == 125 and "Traceback" not in err, (args, err)
            assert "layers are gone" in err.splitlines()[0] and "pruned" in err, err
    finally:
        hidden.rename(lower)


def test_interactive_session_starts_with_the_death_summary(
    crashy: Path, dead: list[Dead], toolbox: str
) -> None:
    d = run_to_end(dead, "docker")
    with nothing_left(d):
        s = ccrun.PtySession(d.target)
        try:
            s.wait_prompt()
            s.send(b"ls /target/segv; tty; exit 3\n")
            status = s.wait()
        finally:
            s.kill()
    out = s.output.decode(errors="replace")
    assert status == 3, out
    assert "exited with code 139 (128+11: killed by SIGSEGV)" in out, out
    assert "/run/crashcart/postmortem.json" in out and "/run/crashcart/log" in out, out
    assert "/dev/pts/0" in out, out


# -- the parts without a runtime ------------------------------------------------------------


def test_ttrpc_protobuf_codec_reads_what_it_writes() -> None:
    from crashcart.postmortem import ttrpc

    data = ttrpc.field_bytes(1, b"task") + ttrpc.field_int(9, 139) + ttrpc.field_int(3, 1 << 40)
    data += ttrpc.field_bytes(10, ttrpc.field_int(1, 1796287717))
    fields = ttrpc.parse(data)
    assert ttrpc.first_bytes(fields, 1) == b"task" and ttrpc.first_int(fields, 9) == 139
    assert ttrpc.first_int(fields, 3) == 1 << 40
    assert ttrpc.first_int(ttrpc.parse(ttrpc.first_bytes(fields, 10)), 1) == 1796287717
    with pytest.raises(ValueError):
        ttrpc.parse(b"\x08\xff")  # a varint cut short


def test_log_tails_of_each_format(tmp_path: Path) -> None:
    from crashcart.postmortem import logs

    docker = tmp_path / "json.log"
    docker.write_text("".join(json.dumps({"log": f"line {i}\n", "stream": "stdout",
                                          "time": "T"}) + "\n" for i in range(150)))  # fmt: skip
    out = logs.tail(str(docker), "json-file")
    assert out is not None and out.splitlines()[-1] == "T stdout line 149"
    assert len(out.splitlines()) == logs.LINES
    k8s = tmp_path / "0.log"
    k8s.write_text("T1 stderr P part \nT2 stdout F other\nT3 stderr F end\nT4 stdout P cut")
    # P (partial) entries join the next entry of their stream; a P left at the end stays.
    assert logs.tail(str(k8s), "k8s-file") == "T2 stdout other\nT1 stderr part end\nT4 stdout cut\n"
    assert logs.tail(str(tmp_path / "missing"), "raw") is None


def test_cores_are_found_by_content_and_pipes_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crashcart.postmortem import cores
    from crashcart.postmortem.record import Record

    upper = tmp_path / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "dump").write_bytes(b"\x7fELF" + bytes(12) + b"\x04\x00" + bytes(100))
    (upper / "tmp" / "prog").write_bytes(b"\x7fELF" + bytes(12) + b"\x02\x00" + bytes(100))
    r = Record("docker", "a" * 64, "x")
    r.upper, r.cmd = str(upper), ["/segv"]
    pattern = tmp_path / "core_pattern"
    pattern.write_text("core\n")
    found = cores.find(r, str(pattern))
    assert found.files == ["/target/tmp/dump"], found.files
    assert "gdb -ex 'set sysroot /target' /target/segv /target/tmp/dump" in found.summary()[1]
    pattern.write_text("|/lib/systemd/systemd-coredump %P %u %g %s %t %c %h\n")
    monkeypatch.setenv("CRASHCART_COREDUMP_DIR", str(tmp_path / "no-such-dir"))
    line = cores.find(r, str(pattern)).summary()[0]
    assert "none kept by systemd-coredump" in line and "coredumpctl list" in line, line
    pattern.write_text("|/usr/bin/apport %p\n")
    assert "not kept" in cores.find(r, str(pattern)).summary()[0]


def test_signal_and_pruned_layers_from_the_record(tmp_path: Path) -> None:
    from crashcart.errors import TargetError
    from crashcart.postmortem.record import Record

    r = Record("podman", "b" * 64, "web")
    r.exit_code = 139
    assert r.signal == 11 and r.death()["signal_name"] == "SIGSEGV"
    r.exit_code = 1
    assert r.signal is None
    r.layers = [str(tmp_path), str(tmp_path / "gone")]
    with pytest.raises(TargetError, match="1 of its 2 filesystem layers are gone"):
        r.check_layers()


def test_the_plans_say_what_they_do() -> None:
    from crashcart.attach import ownns, setup
    from crashcart.postmortem import session

    layout = ownns.Layout(["/u", "/l"], [("/v", "/data")], "web", {}, writable=False)
    words = [s.what for s in session.postmortem_steps(layout, tty=True)]
    assert any(w.startswith("unshare mnt uts ipc net cgroup pid") for w in words), words
    assert "overlay of the container's 2 layers (read-only, no upperdir), detached" in words
    assert words.index(setup.AFTER_FORK.what) == len(words) - 2  # procfs after the fork
    replay = [s.what for s in session.replay_steps(layout, tty=False, share_net=True)]
    assert "setns net" in replay and any(w.startswith("unshare mnt uts ipc cgroup pid")
                                         for w in replay), replay  # fmt: skip


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_volumes_are_read_only_at_their_places(
    runtime: str, crashy: Path, dead: list[Dead], toolbox: str, tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chmod(tmp_path, 0o755)
    if runtime == "containerd":
        mount = f"type=bind,src={vol},dst=/data,options=rbind:rw"
        d = run_to_end(dead, runtime, "sh", "-c", "echo in-volume > /data/f", extra=("--mount",
                       mount))  # fmt: skip
    else:
        d = run_to_end(dead, runtime, "sh", "-c", "echo in-volume > /data/f",
                       extra=("-v", f"{vol}:/data"))  # fmt: skip
    assert (vol / "f").read_text() == "in-volume\n"
    with nothing_left(d):
        proc = ccrun.run(d.target, "--", "sh", "-c", "cat /target/data/f; touch /target/data/g")
    assert ccrun.text(proc) == "in-volume\n", proc
    assert b"Read-only file system" in proc.stderr and proc.returncode != 0, proc
    assert sorted(os.listdir(vol)) == ["f"]


STANDIN = """#!/usr/bin/python3
# A STAND-IN for systemd-coredump (not the real program: that one hands the core to
# systemd-coredump.socket, which needs systemd as PID 1): it stores the core the way
# systemd-coredump does, xz-compressed as core.COMM.UID.BOOTID.PID.USEC.xz with its
# user.coredump.* xattrs.
import lzma, os, sys
pid, uid, gid, sig, t, limit, host, comm = sys.argv[1:9]
boot = open("/proc/sys/kernel/random/boot_id").read().strip().replace("-", "")
path = os.path.join(STORE, f"core.{comm}.{uid}.{boot}.{pid}.{t}000000.xz")
with open(path + ".tmp", "wb") as f:
    f.write(lzma.compress(sys.stdin.buffer.read()))
for key, value in (("pid", pid), ("uid", uid), ("gid", gid), ("signal", sig),
                   ("timestamp", t + "000000"), ("hostname", host), ("comm", comm)):
    os.setxattr(path + ".tmp", "user.coredump." + key, value.encode())
os.rename(path + ".tmp", path)
"""


def test_systemd_coredump_cores_are_listed_and_open_in_gdb(
    crashy: Path, dead: list[Dead], toolbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """core_pattern pipes to a stand-in for systemd-coredump (STANDIN says why) that names
    and stores the files as systemd-coredump does; crashcart's real parser finds the real
    core of a real crashed container among them, copies it into the session, and the
    session opens it with gdb as the summary says."""
    store = tmp_path / "coredump"
    store.mkdir()
    helper = tmp_path / "systemd-coredump"
    helper.write_text(STANDIN.replace("STORE", repr(str(store))))
    helper.chmod(0o755)
    os.chmod(tmp_path, 0o755)
    # An older core of another process, outside the container's life: never listed.
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    (store / f"core.other.0.{boot}.1.1000000000000000.xz").write_bytes(b"old")
    old = CORE_PATTERN.read_text()
    CORE_PATTERN.write_text(f"|{helper} %P %u %g %s %t %c %h %e")
    try:
        d = run_to_end(dead, "docker")
        for _ in range(100):
            if any(p.name.startswith("core.segv.") and p.suffix == ".xz" for p in store.iterdir()):
                break
            time.sleep(0.05)
        monkeypatch.setenv("CRASHCART_COREDUMP_DIR", str(store))
        with nothing_left(d):
            proc = ccrun.run(d.target, "--", "cat", "/run/crashcart/cores")
            assert "open one with: " in ccrun.text(proc), proc
            cmd = ccrun.text(proc).splitlines()[-1].split("open one with: ")[1].split(" (")[0]
            gdb = ccrun.run(d.target, "--", "sh", "-c", cmd.replace("gdb ", "gdb -batch -ex bt "),
                            image=os.environ.get("CRASHCART_TEST_DEFAULT_IMAGE"))  # fmt: skip
    finally:
        CORE_PATTERN.write_text(old)
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    assert "cores (systemd-coredump, matched by time" in out and "/run/crashcart/core.segv." in out
    assert "core.other." not in out, out
    assert "xz -dc /run/crashcart/core.segv." in cmd and "/target/segv /tmp/core" in cmd, cmd
    text = ccrun.text(gdb)
    assert gdb.returncode == 0, text
    assert "SIGSEGV" in text and "crash_here" in text, text


def test_systemd_coredump_file_names_and_journal_fields(tmp_path: Path) -> None:
    from crashcart.postmortem import coredump
    from crashcart.postmortem.record import Record

    boot = "0123456789abcdef0123456789abcdef"
    core = coredump.parse_name(f"core.my\\x2eprog.1000.{boot}.4242.1796306909968336.zst")
    assert core is not None and (core.comm, core.pid, core.ext) == ("my\\x2eprog", 4242, ".zst")
    assert coredump.parse_name(f"core.a.0.{boot}.1.2.lz4").ext == ".lz4"  # type: ignore[union-attr]
    assert coredump.parse_name("core.a.0.nothex.1.2.zst") is None
    r = Record("docker", "c" * 64, "web")
    r.started_at, r.finished_at = "2026-12-03T14:08:29.96Z", "2026-12-03 15:08:30.1 +0100 CET"
    names = [f"core.a.0.{boot}.1.{usec}.zst" for usec in
             (1796306909968336, 1796306800000000, 1796307000000000)]  # fmt: skip
    assert [c.usec for c in coredump.by_time(r, names)] == [1796306909968336]
    entry = {"COREDUMP_CGROUP": f"/docker/{r.id}", "COREDUMP_FILENAME": f"/x/{names[1]}"}
    other = {"COREDUMP_CGROUP": "/system.slice/x", "COREDUMP_FILENAME": f"/x/{names[2]}"}
    found = coredump.from_journal(r, [json.dumps(other), "not json", json.dumps(entry)])
    assert [c.name for c in found] == [names[1]]


COREDUMP = Path(__file__).resolve().parents[2] / "build" / "systemd-coredump"
COREDUMP_STORE = Path("/var/lib/systemd/coredump")
COREDUMP_SOCKET = Path("/run/systemd/coredump")


def stored_cores(before: set[str], timeout: float = 10) -> list[Path]:
    """The segfault fixture's cores systemd-coredump stored since `before` (it stores them
    after the crashed process is gone: a short wait)."""
    end = time.monotonic() + timeout
    while True:
        made = [COREDUMP_STORE / n for n in set(os.listdir(COREDUMP_STORE)) - before
                if n.startswith("core.segv.")]  # fmt: skip
        if made or time.monotonic() > end:
            return made
        time.sleep(0.05)


@contextlib.contextmanager
def real_systemd_coredump() -> Iterator[None]:
    """Debian's systemd-coredump, unpacked by `scripts/runtimes fetch-coredump` (installing
    it would pipe core_pattern to it for good): the kernel runs it with the package's own
    pattern, it hands the core over /run/systemd/coredump to a second copy of itself that
    systemd-socket-activate starts as systemd-coredump.socket would (Accept=yes,
    SOCK_SEQPACKET), and that one stores the core in /var/lib/systemd/coredump."""
    # Debian 12 ships it in /lib/systemd, Debian 13 (merged /usr) in /usr/lib/systemd.
    found = [p for p in (COREDUMP / "usr/lib/systemd/systemd-coredump",
                         COREDUMP / "lib/systemd/systemd-coredump") if p.exists()]  # fmt: skip
    if not found:
        missing(f"{COREDUMP}/[usr/]lib/systemd/systemd-coredump is missing: run "
                "scripts/runtimes fetch-coredump")  # fmt: skip
    program = found[0]
    if shutil.which("systemd-socket-activate") is None or shutil.which("zstd") is None:
        missing("systemd-socket-activate (systemd) or zstd is not installed")
    if COREDUMP_SOCKET.exists():
        pytest.skip(f"{COREDUMP_SOCKET} exists: the host runs its own systemd-coredump")
    sysctl = (COREDUMP / "usr" / "lib" / "sysctl.d" / "50-coredump.conf").read_text()
    pattern = next(ln.split("=", 1)[1] for ln in sysctl.splitlines()
                   if ln.startswith("kernel.core_pattern="))  # fmt: skip
    COREDUMP_SOCKET.parent.mkdir(exist_ok=True)
    COREDUMP_STORE.mkdir(parents=True, exist_ok=True)
    listener = subprocess.Popen(["systemd-socket-activate", "--seqpacket", "--accept", "-l",
                                 str(COREDUMP_SOCKET), str(program)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    old = CORE_PATTERN.read_text()
    try:
        for _ in range(100):
            if COREDUMP_SOCKET.exists():
                break
            time.sleep(0.02)
        # The package's pattern names its program (|/[usr/]lib/systemd/systemd-coredump ...).
        CORE_PATTERN.write_text(f"|{program} {pattern.split(maxsplit=1)[1]}")
        yield
    finally:
        CORE_PATTERN.write_text(old)
        listener.terminate()
        listener.wait(10)
        COREDUMP_SOCKET.unlink(missing_ok=True)


def test_cores_kept_by_the_real_systemd_coredump(
    crashy: Path, dead: list[Dead], toolbox: str
) -> None:
    require_runtime("docker")
    before = set(os.listdir(COREDUMP_STORE)) if COREDUMP_STORE.is_dir() else set()
    made: list[Path] = []
    try:
        with real_systemd_coredump():
            d = run_to_end(dead, "docker")
            made = stored_cores(before)
        assert len(made) == 1, made
        core = made[0]
        with nothing_left(d):
            proc = ccrun.run(d.target, "--", "sh", "-c", "cat /run/crashcart/cores; sha256sum "
                             f"/run/crashcart/{core.name}")  # fmt: skip
        out = ccrun.text(proc)
        assert proc.returncode == 0, (out, proc.stderr)
        first = out.splitlines()[0]
        assert first.startswith("cores (systemd-coredump, matched by time (and hostname)"), out
        assert f"/run/crashcart/{core.name}" in first, out
        assert (f"open one with: zstd -dc /run/crashcart/{core.name} > /tmp/core && gdb -ex "
                "'set sysroot /target' /target/segv /tmp/core") in out, out  # fmt: skip
        assert hashlib.sha256(core.read_bytes()).hexdigest() in out, out  # copied as it is
        # What systemd-coredump stored is the crashed container's real core (ELF ET_CORE).
        raw = subprocess.run(["zstd", "-dc", str(core)], capture_output=True, check=True).stdout
        assert raw[:4] == b"\x7fELF" and int.from_bytes(raw[16:18], "little") == 4
    finally:
        for p in made:
            p.unlink(missing_ok=True)

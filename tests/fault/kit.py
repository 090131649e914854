"""Tools of the fault suite: a tiny static toolbox, a hostile probe, crashcart runs that stop
or die at a named point, and ways to find what a session left behind.

The tiny toolbox is Debian's static busybox (plus a `bash` shim, tests/fault/minibash.c,
and the hostile probe, tests/fault/probe.c, as /bin/probe) as
an erofs (file-backed, no loop device) or squashfs (autoclear loop device) image: it runs
in session mode and, being static, also straight from /dev/crashcart in sideload mode, so
`-e` can be tested on every fixture container without the relocated Debian toolbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tests import ccrun
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container

HERE = Path(__file__).resolve().parent
BUILD = ccrun.REPO / "build" / "fault"
BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh", "ls", "cat", "ps", "id", "sleep", "true", "false", "echo", "grep", "stat", "kill",
    "readlink", "mkfifo", "dd", "head", "wc", "env", "test", "tail", "cut", "tr", "touch",
    "mkdir", "rm", "seq", "timeout", "tty", "stty", "mount", "pidof", "find", "sed",
)  # fmt: skip
SUPERVISOR_TITLE = "crashcart: session supervisor for "


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def static_binary(name: str) -> Path:
    """tests/fault/NAME.c built with musl-gcc -static (cached by source hash)."""
    src = HERE / f"{name}.c"
    out = BUILD / f"{name}-{_digest(src)}"
    if not out.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run(["musl-gcc", "-static", "-O2", "-Wall", "-o", str(tmp), str(src)],
                       check=True, capture_output=True)  # fmt: skip
        tmp.rename(out)
    return out


def tiny_toolbox(fmt: str = "erofs") -> Path:
    """The tiny toolbox image in `fmt` (erofs or squashfs), cached under build/fault."""
    shim, probe = static_binary("minibash"), static_binary("probe")
    key = _digest(BUSYBOX, shim, probe, Path(__file__))
    out = BUILD / f"toolbox-{key}.{fmt}"
    if out.exists():
        return out
    root = BUILD / f"root-{key}-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    for d in ("bin", "usr/bin", "target", "proc", "dev", "sys", "tmp", "run", "root"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr" / "bin" / "env").symlink_to("../../bin/busybox")  # ctr's exec uses it
    shutil.copy2(shim, root / "bin" / "bash")
    shutil.copy2(probe, root / "bin" / "probe")
    (root / "shell").symlink_to("bin/bash")
    (root / ".crashcartrc").write_text("PS1='cc# '\n")
    tmp = out.with_name(out.name + ".tmp")
    if fmt == "erofs":
        cmd = ["mkfs.erofs", "-zlz4", str(tmp), str(root)]
    else:
        cmd = ["mksquashfs", str(root), str(tmp), "-quiet", "-noappend", "-all-root"]
    try:
        subprocess.run(cmd, check=True, capture_output=True)
        os.chmod(tmp, 0o644)
        tmp.rename(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------
# Running crashcart


def popen(
    *args: str,
    fault: str | None = None,
    image: str | None = None,
    stdin: int | None = subprocess.DEVNULL,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """crashcart ARGS in the background, output captured; CRASHCART_FAULT=fault."""
    env = ccrun.env(image) | (extra_env or {})
    if fault:
        env["CRASHCART_FAULT"] = fault
    return subprocess.Popen(ccrun.argv(*args), env=env, cwd=ccrun.REPO, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=_default_signals)  # fmt: skip


def _default_signals() -> None:
    """crashcart keeps ignoring what its caller ignored (nohup, a background job): a run
    under `nohup python -m tests.fault.soak &` must still be able to signal it."""
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def wait_for(cond: Callable[[], object], timeout: float = 20, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what}: not met after {timeout}s")


def stopped_process(root_pid: int) -> int:
    """The PID of the process that stopped itself (state T) at a `stop:` fault point: the
    crashcart process `root_pid` itself or one of its descendants."""
    found: list[int] = []

    def look() -> bool:
        found[:] = [p for p in [root_pid, *descendants(root_pid)] if proc_state(p) == "T"]
        return bool(found)

    wait_for(look, what=f"a stopped process under {root_pid}")
    return found[0]


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            out += [int(x) for x in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], children(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def supervisors(c: Container) -> list[int]:
    """Host PIDs of the session supervisors in the container's pid namespace."""
    return [p.pid for p in lc.pidns_procs(c.pid) if p.cmdline.startswith(SUPERVISOR_TITLE)]


def session_procs(c: Container) -> list[lc.Proc]:
    """Processes of the container's pid namespace that are not the container's own: their
    root is not the container's root (crashcart sessions pivot into the toolbox)."""
    theirs = os.stat(f"/proc/{c.pid}/root")
    out = []
    for p in lc.pidns_procs(c.pid):
        try:
            st = os.stat(f"/proc/{p.pid}/root")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) != (theirs.st_dev, theirs.st_ino):
            out.append(p)
    return out


def kill(pid: int, signum: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen[bytes], timeout: float = 30) -> tuple[int, str]:
    """Wait for a crashcart run; its status and stderr."""
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err.decode(errors="replace")


def mounted(c: Container) -> bool:
    return " /dev/crashcart " in Path(f"/proc/{c.pid}/mountinfo").read_text()


def cleanup() -> subprocess.CompletedProcess[bytes]:
    return ccrun.run("cleanup")


def run(*args: str, image: str | None = None, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return ccrun.run(*args, image=image, **kw)  # type: ignore[arg-type]


def in_container(c: Container, argv: Sequence[str], timeout: float = 30) -> str:
    from tests.testbed import runtimes

    res = runtimes.exec_in(c, list(argv), timeout=timeout)
    return res.stdout + res.stderr


def host_state() -> tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[lc.Proc]]:
    """What a run could leave on the host: mounts, bound loop devices, crashcart processes."""
    mounts = frozenset(str(m) for m in lc.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
                       if not m.mountpoint.startswith(lc.IGNORED_HOST_PREFIXES))  # fmt: skip
    return mounts, lc.loop_devices(), lc.crashcart_procs()


def host_leaks(before: tuple[frozenset[str], frozenset[tuple[str, str]], frozenset[lc.Proc]],
               settle: float = 5) -> list[str]:  # fmt: skip
    """What appeared on the host since `before` (waiting up to `settle` seconds for
    asynchronous teardown): for checks where the container itself is gone."""
    end = time.monotonic() + settle
    while True:
        after = host_state()
        new = [f"mount {m}" for m in after[0] - before[0]]
        new += [f"loop {d} -> {f}" for d, f in after[1] - before[1]]
        new += [f"process {p}" for p in after[2] - before[2]]
        if not new or time.monotonic() > end:
            return new
        time.sleep(0.1)


def _others(section: str, line: str) -> bool:
    """A change on the host that is not a leak of ours: other engineers' runs (benchmarks,
    image builds, their own sessions with the real toolbox) share this host. A host mount or
    loop device that went away: crashcart never unmounts a host mount or detaches a loop
    device itself (autoclear does, for its own, as an earlier test's session finishes
    tearing down). A loop device that appeared backed by another image than the suite's
    (every toolbox the suite uses lives under build/fault)."""
    if line.startswith("  - "):
        return True  # a removal: of another run's, or of an earlier test's teardown
    return section == "host loop devices:" and line.startswith("  + ") and str(BUILD) not in line


@contextlib.contextmanager
def leakcheck(container: Container, *, settle: float = 2.0) -> Iterator[lc.Snapshot]:
    """tests/testbed's leak checker, minus host mounts and loop devices that *disappeared*
    and are not the suite's own (see _others)."""
    before = lc.snapshot(container)
    yield before
    kept = leaks(before, settle)
    if kept:
        c = container
        head = f"leak check failed for {c.runtime} container {c.name} (pid {c.pid}, {c.image}):"
        raise AssertionError("\n".join([head, *kept]))


def leaks(before: lc.Snapshot, settle: float = 2.0) -> list[str]:
    """What changed since `before` (lc.diff lines), waiting up to `settle` seconds for
    asynchronous teardown, minus what other runs on this host removed meanwhile."""
    deadline = time.monotonic() + settle
    while True:
        after = lc.snapshot(before.container)
        lines = lc.diff(before, after)
        section = ""
        kept = []
        for line in lines:
            if not line.startswith(" "):
                section = line
            elif section in ("host mounts:", "host loop devices:") and _others(section, line):
                continue
            elif section == "new crashcart processes:" and (
                " crashcart image " in line or "containerd-shim" in line
            ):
                continue  # another run's image build, or a shim of ctr's crashcart-test namespace
            kept.append(line)
        kept = [
            ln
            for i, ln in enumerate(kept)
            if ln.startswith(" ") or (i + 1 < len(kept) and kept[i + 1].startswith(" "))
        ]
        if not kept or time.monotonic() >= deadline:
            return kept
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# Attack helpers (tests/fault/test_attacks.py)

# Docker's default capability set for a container's root.
DOCKER_DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip


def put_file(c: Container, src: Path, name: str, mode: int = 0o755) -> None:
    """Copy a host file to /NAME in the container (as test_hostile.put_probe does)."""
    dst = Path(f"/proc/{c.pid}/root/{name.lstrip('/')}")
    shutil.copy(src, dst)
    os.chmod(dst, mode)


def procs_named(c: Container, prefix: str) -> list[int]:
    """Host PIDs of the container's processes whose command line starts with `prefix`."""
    return sorted(p.pid for p in lc.pidns_procs(c.pid) if p.cmdline.startswith(prefix))


def start_unnamed_runc(caps: Sequence[str] = DOCKER_DEFAULT_CAPS) -> Container:
    """A runc busybox container whose cgroup path does not name it (`cgroupsPath`, as LXC,
    nspawn or a hand-written runc config give): no runtime claims its processes, so
    crashcart reaches them only as pid://PID, names the target after the process's comm,
    and runs `-e` through nsenter. Remove it with runtimes.remove_by_name("runc", name)."""
    import json
    import secrets

    from tests.testbed import runtimes

    runtimes.require("runc")
    built = runtimes.ensure_image("runc", "busybox")
    name = runtimes.new_name("unnamed-cgroup")
    bundle = runtimes.workdir(name)
    bundle.mkdir(parents=True)
    rootfs = bundle / "rootfs"
    try:
        shutil.copytree(built.rootfs, rootfs, symlinks=True)
        runtimes._runc_config(bundle, rootfs, list(built.cmd), False, False)
        config = bundle / "config.json"
        spec = json.loads(config.read_text())
        spec["linux"]["cgroupsPath"] = f"/cc-unnamed-{secrets.token_hex(4)}"
        spec["process"]["capabilities"] = {k: list(caps) for k in
                                           ("bounding", "effective", "permitted")}  # fmt: skip
        config.write_text(json.dumps(spec, indent=1))
        with open(bundle / "log", "ab") as log:
            subprocess.run(["runc", "run", "-d", "--pid-file", str(bundle / "pid"), "--bundle",
                            str(bundle), name], stdin=subprocess.DEVNULL, stdout=log,
                           stderr=log, timeout=60, check=True)  # fmt: skip
        pid = int((bundle / "pid").read_text())
        runtimes.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "lo", "up"])
    except BaseException:
        runtimes.remove_by_name("runc", name)
        raise
    return Container("runc", name, name, pid, "busybox")


@contextlib.contextmanager
def module_busybox(hint: str) -> Iterator[Container]:
    """One docker busybox container for a whole test module (each test still checks leaks
    around what it does), removed at the end; a missing docker fails or skips the module."""
    from tests.testbed import runtimes
    from tests.testbed.require import missing

    reason = runtimes.unavailable_reason("docker")
    if reason is not None:
        missing(f"docker: {reason}")
    c = runtimes.start("docker", "busybox", name=runtimes.new_name(hint))
    try:
        yield c
    finally:
        runtimes.remove_by_name("docker", c.name)

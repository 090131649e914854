"""System containers for the tests: LXC and systemd-nspawn, each booting busybox init as
PID 1 with a few services (an HTTP server on 127.0.0.1:8080 of the container's own
loopback, two sleepers), built offline from the host's static busybox.

No network but loopback: LXC gets ``lxc.net.0.type = empty``, nspawn ``--private-network``.
PID 1 of the test machines is not systemd, so nspawn runs with ``--register=no`` (no
machined); its child is the container's leader.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.testbed import runtimes
from tests.testbed.runtimes import Container, RuntimeUnavailable, TestbedError

BUSYBOX = Path("/bin/busybox")
LXC_PATH = Path("/var/lib/lxc")
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")
# What init starts: 4 processes in all, with init itself.
INITTAB = """::sysinit:/bin/ip link set lo up
::respawn:/bin/httpd -f -p 127.0.0.1:8080 -h /www
::respawn:/bin/sleep 100000
::respawn:/bin/sleep 100001
"""
SERVICES = 3
# LXC 5.0 and nspawn 252 put the container's mounts in shared peer groups of their own (new
# groups, no peer outside the container: measured); crashcart -m refuses a shared /dev only
# when a peer lives in another mount namespace, so these containers are used as they come.
LXC_CONFIG = """# crashcart test bed (tests/testbed/system_containers.py)
lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.net.0.type = empty
lxc.apparmor.profile = unconfined
lxc.autodev = 1
lxc.tty.max = 0
lxc.pty.max = 4
lxc.console.path = none
lxc.mount.auto = proc:mixed sys:ro cgroup:mixed
lxc.cap.drop = sys_module mac_admin mac_override sys_time
lxc.signal.halt = SIGUSR1
"""


def unavailable_reason(runtime: str) -> str | None:
    if runtime == "crun":
        return crun_unavailable_reason()
    if os.geteuid() != 0:
        return "system containers need root"
    binary = {"lxc": "lxc-start", "machine": "systemd-nspawn"}[runtime]
    if shutil.which(binary) is None:
        return f"{binary} is not installed (run: scripts/runtimes install)"
    return None


def build_root(root: Path, *, merged_usr: bool) -> None:
    """A busybox root with init, an inittab and a web root. ``merged_usr``: the applets in
    /usr/bin and /bin, /sbin symlinks to it (nspawn refuses a root without /usr)."""
    bindir = root / ("usr/bin" if merged_usr else "bin")
    bindir.mkdir(parents=True)
    for d in ("etc", "proc", "sys", "dev", "tmp", "run", "www", "root", "var"):
        (root / d).mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, bindir / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", bindir / applet)
    if merged_usr:
        os.symlink("usr/bin", root / "bin")
        os.symlink("usr/bin", root / "sbin")
    else:
        os.symlink("bin", root / "sbin")
        (root / "usr").mkdir()
    (root / "etc/inittab").write_text(INITTAB)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/os-release").write_text("ID=crashcart-test\nNAME=crashcart-test system\n")
    (root / "www/index.html").write_text("crashcart-test system container\n")


def _services_up(pid: int, timeout: float = 15.0) -> None:
    """Wait until init has started every service (its children)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            kids = []
        if len(kids) >= SERVICES:
            return
        time.sleep(0.05)
    raise TestbedError(f"init (pid {pid}) did not start its {SERVICES} services in {timeout}s")


def start_lxc(name: str) -> Container:
    if reason := unavailable_reason("lxc"):
        raise RuntimeUnavailable(f"lxc: {reason}")
    home = LXC_PATH / name
    home.mkdir(parents=True)
    try:
        build_root(home / "rootfs", merged_usr=False)
        (home / "config").write_text(LXC_CONFIG.format(name=name, rootfs=home / "rootfs"))
        log = runtimes.workdir(name)
        log.mkdir(parents=True, exist_ok=True)
        runtimes.run(["lxc-start", "-n", name, "-d", "-o", str(log / "lxc.log")])
        pid = int(runtimes.run(["lxc-info", "-n", name, "-pH"]).stdout.strip())
        _services_up(pid)
    except BaseException:
        remove_lxc(name)
        raise
    return Container("lxc", name, name, pid, "busybox-init")


def remove_lxc(name: str) -> None:
    runtimes.run(["lxc-stop", "-k", "-n", name], check=False)
    runtimes.run(["lxc-destroy", "-n", name], check=False)
    shutil.rmtree(LXC_PATH / name, ignore_errors=True)
    shutil.rmtree(runtimes.workdir(name), ignore_errors=True)


def start_nspawn(name: str) -> Container:
    if reason := unavailable_reason("machine"):
        raise RuntimeUnavailable(f"systemd-nspawn: {reason}")
    wd = runtimes.workdir(name)
    wd.mkdir(parents=True)
    build_root(wd / "root", merged_usr=True)
    argv = ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network", "-q",
            "-D", str(wd / "root"), "-M", name, "/bin/busybox", "init"]  # fmt: skip
    with open(wd / "nspawn.log", "ab") as log:
        # Its own session, stdio to a file: nspawn must not hold the test's pipes or tty.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, cwd="/")  # fmt: skip
    (wd / "nspawn.pid").write_text(str(proc.pid))
    try:
        leader = _nspawn_leader(proc)
        _services_up(leader)
    except BaseException:
        remove_nspawn(name)
        raise
    return Container("machine", name, name, leader, "busybox-init")


def _nspawn_leader(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """nspawn's child in a new pid namespace is the container's leader."""
    own = os.readlink(f"/proc/{proc.pid}/ns/pid")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestbedError(f"systemd-nspawn exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            for kid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                if os.readlink(f"/proc/{kid}/ns/pid") != own:
                    return int(kid)
        time.sleep(0.05)
    raise TestbedError(f"systemd-nspawn (pid {proc.pid}) started no container in {timeout}s")


def remove_nspawn(name: str) -> None:
    """Kill the container's init (nspawn then exits) and what nspawn leaves behind: its
    propagation directory, which it cannot remove where /run is not a tmpfs."""
    wd = runtimes.workdir(name)
    with contextlib.suppress(OSError, ValueError):
        pid = int((wd / "nspawn.pid").read_text())
        own = os.readlink(f"/proc/{pid}/ns/pid")
        for kid in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if os.readlink(f"/proc/{kid}/ns/pid") != own:
                os.kill(int(kid), signal.SIGKILL)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
    shutil.rmtree(NSPAWN_PROPAGATE / name, ignore_errors=True)
    shutil.rmtree(wd, ignore_errors=True)


def start(runtime: str, name: str) -> Container:
    starters = {"lxc": start_lxc, "machine": start_nspawn, "crun": start_crun}
    return starters[runtime](name)


def remove(c: Container) -> None:
    removers = {"lxc": remove_lxc, "machine": remove_nspawn, "crun": remove_crun}
    removers[c.runtime](c.name)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{c.pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if Path(f"/proc/{c.pid}").exists():
        raise TestbedError(f"{c.runtime} {c.name}: init {c.pid} outlived removal")


@contextlib.contextmanager
def system_container(runtime: str, hint: str = "") -> Iterator[Container]:
    c = start(runtime, runtimes.new_name(f"{hint}-{runtime}"))
    try:
        yield c
    finally:
        remove(c)


# ---------------------------------------------------------------------------------------------
# crun: an OCI bundle of the busybox fixture image, as the test bed runs runc's


def crun_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "crun needs root here"
    if shutil.which("crun") is None:
        return "crun is not installed (run: scripts/runtimes install)"
    unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if unified.exists() and unified.read_text().split():
        return (
            "crun refuses this hybrid cgroup layout while the v2 tree holds controllers "
            f"({unified.read_text().strip()}): run scripts/runtimes install"
        )
    return None


def start_crun(name: str) -> Container:
    if reason := crun_unavailable_reason():
        raise RuntimeUnavailable(f"crun: {reason}")
    built = runtimes.ensure_image("runc", "busybox")
    wd = runtimes.workdir(name)
    wd.mkdir(parents=True)
    try:
        shutil.copytree(built.rootfs, wd / "rootfs", symlinks=True)
        runtimes.run(["crun", "spec", "--bundle", str(wd)])
        spec = json.loads((wd / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = list(built.cmd)
        spec["root"] = {"path": str(wd / "rootfs"), "readonly": True}
        spec["hostname"] = "cc-test"
        (wd / "config.json").write_text(json.dumps(spec))
        with open(wd / "log", "ab") as log:
            # stdio to a file: a detached container holding our pipe would block the reader.
            subprocess.run(["crun", "run", "-d", "--pid-file", str(wd / "pid"), "--bundle",
                            str(wd), name], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                           check=True, timeout=30)  # fmt: skip
        pid = int((wd / "pid").read_text())
        runtimes.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "lo", "up"])
    except BaseException:
        remove_crun(name)
        raise
    return Container("crun", name, name, pid, "busybox", read_only=True)


def remove_crun(name: str) -> None:
    runtimes.run(["crun", "kill", name, "KILL"], check=False)
    runtimes.run(["crun", "delete", "-f", name], check=False)
    shutil.rmtree(runtimes.workdir(name), ignore_errors=True)

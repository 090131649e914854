"""Podman pods and rootless Podman for the tests.

Pods: ``podman pod create`` wants the `catatonit` pause image by default (not installed
here, and nothing can be pulled): the test bed's infra container is the busybox fixture
image instead, run with its own command (httpd; ``--infra-command`` takes a single path, so
``sleep infinity`` cannot be given). No network: ``--network none`` on the pod.

Rootless: a user ``cc-rootless`` with subordinate IDs (/etc/subuid, /etc/subgid; newuidmap
from Debian's uidmap) and a runtime dir /run/user/UID; its Podman uses the vfs driver and
cgroupfs, and no network.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.testbed import runtimes
from tests.testbed.runtimes import Container, TestbedError

ROOTLESS_USER = "cc-rootless"
SUBID_START = 300000
SUBID_COUNT = 65536
ROOTLESS_CONF = """# crashcart test bed (tests/testbed/podman_more.py)
[containers]
netns = "none"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
"""
STORAGE_CONF = """[storage]
driver = "vfs"
"""


def podman(*args: str) -> str:
    return runtimes.run(["podman", *args]).stdout.strip()


@contextlib.contextmanager
def pod(hint: str, members: int = 1) -> Iterator[tuple[str, list[Container]]]:
    """A running pod (name, its app containers); removed with its containers."""
    runtimes.require("podman")
    runtimes.ensure_image("podman", "busybox")
    ref = runtimes.image_ref("podman", "busybox")
    name = runtimes.new_name(f"{hint}-pod")
    try:
        podman("pod", "create", "--name", name, "--infra-image", ref, "--network", "none",
               "--label", "crashcart-test=1")  # fmt: skip
        apps = []
        for i in range(members):
            app = runtimes.new_name(f"{hint}-app{i}")
            cid = podman("run", "-d", "--pod", name, "--name", app, ref, "sleep", "100000")
            pid = int(podman("inspect", "--format", "{{.State.Pid}}", app))
            apps.append(Container("podman", app, cid, pid, "busybox"))
        yield name, apps
    finally:
        runtimes.run(["podman", "pod", "rm", "-f", "-t", "0", name], check=False)


def infra_name(pod_name: str) -> str:
    return podman("pod", "inspect", "--format", "{{.InfraContainerID}}", pod_name)


# ---------------------------------------------------------------------------------------------
# Rootless


def ensure_rootless_user() -> pwd.struct_passwd:
    """The test user with subordinate IDs, a runtime dir and a Podman config (idempotent)."""
    try:
        user = pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        runtimes.run(["useradd", "--create-home", "--shell", "/bin/sh", ROOTLESS_USER])
        user = pwd.getpwnam(ROOTLESS_USER)
    for path in ("/etc/subuid", "/etc/subgid"):
        text = Path(path).read_text() if os.path.exists(path) else ""
        if not any(line.startswith(f"{ROOTLESS_USER}:") for line in text.splitlines()):
            with open(path, "a") as f:
                f.write(f"{ROOTLESS_USER}:{SUBID_START}:{SUBID_COUNT}\n")
    run_dir = Path(f"/run/user/{user.pw_uid}")
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chown(run_dir, user.pw_uid, user.pw_gid)
    run_dir.chmod(0o700)
    conf = Path(user.pw_dir) / ".config/containers"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "containers.conf").write_text(ROOTLESS_CONF)
    (conf / "storage.conf").write_text(STORAGE_CONF)
    for p in (conf.parent, conf, conf / "containers.conf", conf / "storage.conf"):
        os.chown(p, user.pw_uid, user.pw_gid)
    return user


def as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "env", f"HOME={user.pw_dir}", f"XDG_RUNTIME_DIR=/run/user/{user.pw_uid}",
            f"USER={user.pw_name}", *argv]  # fmt: skip


def rootless_podman(user: pwd.struct_passwd, *args: str, check: bool = True) -> str:
    proc = subprocess.run(as_user(user, ["podman", *args]), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, cwd="/")  # fmt: skip
    if check and proc.returncode != 0:
        raise TestbedError(f"rootless podman {' '.join(args)}: {proc.stderr.strip()[-600:]}")
    return proc.stdout.strip()


def ensure_rootless_image(user: pwd.struct_passwd) -> str:
    from tests.testbed import images

    built = images.build_all(names=["busybox"])["busybox"]
    ref = images.full_ref("busybox")
    if not rootless_podman(user, "images", "-q", ref, check=False):
        tar = Path(f"/tmp/cc-rootless-{os.getpid()}.tar")
        shutil.copy(built.tar, tar)
        os.chown(tar, user.pw_uid, user.pw_gid)
        try:
            rootless_podman(user, "load", "-q", "-i", str(tar))
        finally:
            tar.unlink()
    return ref


@contextlib.contextmanager
def rootless_container(hint: str) -> Iterator[Container]:
    user = ensure_rootless_user()
    ref = ensure_rootless_image(user)
    name = runtimes.new_name(f"{hint}-rootless")
    try:
        cid = rootless_podman(user, "run", "-d", "--pull=never", "--name", name, "--network",
                              "none", ref, "sleep", "100000")  # fmt: skip
        pid = int(rootless_podman(user, "inspect", "--format", "{{.State.Pid}}", name))
        yield Container("podman", name, cid, pid, "busybox", userns=True)
    finally:
        rootless_podman(user, "rm", "-f", "-t", "0", name, check=False)

"""Start and remove fixture containers in real runtimes, through the runtimes' own CLIs.

Standard library only, so ``scripts/runtimes`` can run it with Debian's python before the
venv exists: ``python -m tests.testbed.runtimes load|status|leftovers``.

Every container runs with no network but its own namespace (docker and podman
``--network none``; ctr and runc a new netns, whose loopback we bring up), is named
``cc-test-...``, and is removed by :func:`remove` however the test ended.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.testbed import images as fixture_images

RUNTIMES = ("docker", "podman", "containerd", "runc")
IMAGES = fixture_images.NAMES
NAME_PREFIX = "cc-test-"
CTR_NAMESPACE = "crashcart-test"
# Prefer Debian's client, made for the 20.10 daemon, over the Docker 28 client in /usr/local.
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
DOCKER_SOCK = "/var/run/docker.sock"
CONTAINERD_SOCK = "/run/containerd/containerd.sock"
STATE_DIR = Path(os.environ.get("CRASHCART_TESTBED_STATE", "/run/crashcart-testbed"))
# Container root is host uid/gid 100000 in every user-namespaced fixture container.
USERNS_HOST_ID = 100000
USERNS_SIZE = 65536
CMD_TIMEOUT = 60.0


class TestbedError(RuntimeError):
    """A runtime command failed; the message carries the command and its output."""


class RuntimeUnavailable(TestbedError):
    """The runtime is not installed or its daemon does not answer."""


class Unsupported(TestbedError):
    """The runtime cannot run a container with the requested option."""


@dataclass(frozen=True)
class Container:
    """A running fixture container.

    ``pid`` is the host PID of its main process; ``namespace`` the containerd namespace
    (None for the other runtimes); ``image`` the fixture image name (busybox, distroless,
    musl), ``id`` what the runtime calls it (docker/podman: the full hex ID; ctr, runc: the
    name)."""

    runtime: str
    name: str
    id: str
    pid: int
    image: str
    namespace: str | None = None
    read_only: bool = False
    userns: bool = False


def run(
    argv: Sequence[str], *, timeout: float = CMD_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a runtime CLI with stdin closed, capturing its output; raise TestbedError."""
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"{' '.join(argv)}: no answer after {timeout:.0f}s") from e
    except FileNotFoundError as e:
        raise RuntimeUnavailable(f"{argv[0]}: not installed (run scripts/runtimes install)") from e
    if check and proc.returncode != 0:
        raise TestbedError(
            f"{' '.join(argv)}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def ctr(*args: str) -> list[str]:
    return ["ctr", "-n", CTR_NAMESPACE, *args]


def image_ref(runtime: str, image: str) -> str:
    """How ``runtime`` names the fixture image (runc has none: it runs the rootfs dir)."""
    if runtime == "docker":
        return fixture_images.ref(image)
    return fixture_images.full_ref(image)


def new_name(hint: str = "") -> str:
    """A unique container name: cc-test-<hint>-<random>; valid for every runtime."""
    # containerd wants ^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$: no doubled separators.
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", hint)[:40].strip("-")
    token = secrets.token_hex(4)
    return f"{NAME_PREFIX}{slug}-{token}" if slug else f"{NAME_PREFIX}{token}"


# ---------------------------------------------------------------------------------------------
# Availability


def _unix_get(path: str, sock_path: str, timeout: float = 2.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def _socket_answers(sock_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(sock_path)
        except OSError:
            return False
    return True


@functools.cache
def unavailable_reason(runtime: str) -> str | None:
    """Why ``runtime`` cannot run containers here, or None when it can (cached)."""
    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}"
    if os.geteuid() != 0:
        return "container runtimes need root (run: sudo scripts/test)"
    binary = {"docker": DOCKER, "podman": "podman", "containerd": "ctr", "runc": "runc"}[runtime]
    if shutil.which(binary) is None:
        return f"{binary} is not installed (run: scripts/runtimes install)"
    if runtime == "docker":
        try:
            reply = _unix_get("/_ping", DOCKER_SOCK)
        except OSError as e:
            return f"dockerd does not answer on {DOCKER_SOCK}: {e} (run: scripts/runtimes start)"
        if " 200 " not in reply.split("\r\n", 1)[0]:
            return f"dockerd answered /_ping with {reply.splitlines()[:1]}"
    if runtime == "containerd" and not _socket_answers(CONTAINERD_SOCK):
        # ctr itself would hang 10 s on a dead socket: check it first.
        return f"containerd does not answer on {CONTAINERD_SOCK} (run: scripts/runtimes start)"
    if runtime == "podman":
        proc = run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], check=False)
        if proc.returncode != 0:
            return f"podman info failed: {proc.stderr.strip()[-300:]}"
    return None


def require(runtime: str) -> None:
    reason = unavailable_reason(runtime)
    if reason is not None:
        raise RuntimeUnavailable(f"{runtime}: {reason}")


# ---------------------------------------------------------------------------------------------
# Images


def loaded_image_id(runtime: str, image: str) -> str | None:
    """The digest the runtime has for the fixture image (docker, podman: the image ID, i.e.
    config digest; containerd: the manifest digest), or None if it has none."""
    ref = image_ref(runtime, image)
    if runtime == "docker":
        proc = run([DOCKER, "image", "inspect", "-f", "{{.Id}}", ref], check=False)
    elif runtime == "podman":
        proc = run(["podman", "image", "inspect", "--format", "{{.Id}}", ref], check=False)
    elif runtime == "containerd":
        proc = run(ctr("images", "ls"), check=False)
        for line in proc.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 3 and cols[0] == ref:
                return cols[2]
        return None
    else:
        return None
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out:
        return None
    return out if out.startswith("sha256:") else "sha256:" + out


def load_image(runtime: str, built: fixture_images.BuiltImage) -> bool:
    """Load ``built`` into ``runtime`` unless it already has this very image; True if loaded."""
    if runtime == "runc":
        return False
    want = built.manifest_digest if runtime == "containerd" else built.config_digest
    if loaded_image_id(runtime, built.name) == want:
        return False
    if runtime == "docker":
        run([DOCKER, "load", "-q", "-i", str(built.tar)])
    elif runtime == "podman":
        run(["podman", "load", "-q", "-i", str(built.tar)])
    else:
        run(ctr("images", "import", str(built.tar)))
    got = loaded_image_id(runtime, built.name)
    if got != want:
        raise TestbedError(f"{runtime}: loaded {built.tar} but {built.ref} is {got}, not {want}")
    return True


_ensured: dict[tuple[str, str], fixture_images.BuiltImage] = {}


def ensure_image(runtime: str, image: str) -> fixture_images.BuiltImage:
    """Build the fixture image if needed and load it into ``runtime``, once per process."""
    key = (runtime, image)
    if key not in _ensured:
        built = fixture_images.build_all(names=[image])[image]
        load_image(runtime, built)
        _ensured[key] = built
    return _ensured[key]


# ---------------------------------------------------------------------------------------------
# Starting


def _userns_args(flag_uid: str, flag_gid: str) -> list[str]:
    m = f"0:{USERNS_HOST_ID}:{USERNS_SIZE}"
    return [flag_uid, m, flag_gid, m]


def _start_docker(name: str, ref: str, ro: bool, userns: bool, cmd: list[str]) -> tuple[str, int]:
    if userns:
        raise Unsupported("docker: user namespaces are daemon-wide (userns-remap), not per run")
    argv = [DOCKER, "run", "-d", "--pull=never", "--name", name, "--network", "none"]
    argv += ["--label", "crashcart-test=1", *(["--read-only"] if ro else []), ref, *cmd]
    cid = run(argv).stdout.strip()
    pid = run([DOCKER, "inspect", "-f", "{{.State.Pid}}", name]).stdout.strip()
    return cid, int(pid)


def _start_podman(name: str, ref: str, ro: bool, userns: bool, cmd: list[str]) -> tuple[str, int]:
    argv = ["podman", "run", "-d", "--pull=never", "--name", name, "--network", "none"]
    argv += ["--label", "crashcart-test=1", *(["--read-only"] if ro else [])]
    argv += [*(_userns_args("--uidmap", "--gidmap") if userns else []), ref, *cmd]
    cid = run(argv).stdout.strip()
    pid = run(["podman", "inspect", "--format", "{{.State.Pid}}", name]).stdout.strip()
    return cid, int(pid)


def ctr_task_pid(task_id: str) -> int | None:
    """The host PID of a containerd task (``ctr task ls``), or None."""
    for line in run(ctr("tasks", "ls")).stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 2 and cols[0] == task_id:
            return int(cols[1])
    return None


def _start_containerd(
    name: str, ref: str, ro: bool, userns: bool, cmd: list[str], logdir: Path
) -> tuple[str, int]:
    argv = ctr("run", "-d", "--label", "crashcart-test=1", "--log-uri", f"file://{logdir}/log")
    argv += [*(["--read-only"] if ro else [])]
    argv += [*(_userns_args("--uidmap", "--gidmap") if userns else []), ref, name, *cmd]
    run(argv)
    pid = ctr_task_pid(name)
    if pid is None:
        raise TestbedError(f"containerd: task {name} not in `ctr task ls` after ctr run -d")
    _loopback_up(pid)
    return name, pid


def _runc_config(bundle: Path, rootfs: Path, cmd: list[str], ro: bool, userns: bool) -> None:
    run(["runc", "spec", "--bundle", str(bundle)])
    path = bundle / "config.json"
    spec = json.loads(path.read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = cmd
    spec["root"] = {"path": str(rootfs), "readonly": ro}
    spec["hostname"] = "cc-test"
    if userns:
        linux = spec["linux"]
        linux["namespaces"].append({"type": "user"})
        mapping = [{"containerID": 0, "hostID": USERNS_HOST_ID, "size": USERNS_SIZE}]
        linux["uidMappings"] = linux["gidMappings"] = mapping
        # /sys/fs/cgroup cannot be mounted from a user namespace on cgroup v1.
        spec["mounts"] = [m for m in spec["mounts"] if m["type"] != "cgroup"]
    path.write_text(json.dumps(spec, indent=1))


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.lchown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), uid, gid)


def _start_runc(
    name: str,
    built: fixture_images.BuiltImage,
    ro: bool,
    userns: bool,
    cmd: list[str],
    bundle: Path,
) -> tuple[str, int]:
    # Each container gets its own copy of the rootfs: a writable one must not change the
    # cached image, and a user-namespaced one needs its files owned by the mapped root.
    rootfs = bundle / "rootfs"
    shutil.copytree(built.rootfs, rootfs, symlinks=True)
    if userns:
        _chown_tree(rootfs, USERNS_HOST_ID, USERNS_HOST_ID)
    _runc_config(bundle, rootfs, cmd or list(built.cmd), ro, userns)
    pidfile = bundle / "pid"
    # A detached runc container keeps its stdio: never a pipe, or our read waits forever.
    with open(bundle / "log", "ab") as log:
        proc = subprocess.run(
            ["runc", "run", "-d", "--pid-file", str(pidfile), "--bundle", str(bundle), name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            timeout=CMD_TIMEOUT,
        )
    if proc.returncode != 0:
        tail = (bundle / "log").read_text(errors="replace").strip()[-500:]
        raise TestbedError(f"runc run -d {name}: exit {proc.returncode}: {tail}")
    pid = int(pidfile.read_text())
    _loopback_up(pid)
    return name, pid


def _loopback_up(pid: int) -> None:
    """runc leaves a new netns with lo down; docker and podman bring it up. Do the same.
    Only the container's own netns is entered: nothing on the host changes."""
    run(["nsenter", "-t", str(pid), "-n", "ip", "link", "set", "lo", "up"])


def workdir(name: str) -> Path:
    """Where the testbed keeps a container's runc bundle or ctr log."""
    return STATE_DIR / "containers" / name


def start(
    runtime: str,
    image: str,
    *,
    name: str | None = None,
    read_only: bool = False,
    userns: bool = False,
    command: Sequence[str] | None = None,
) -> Container:
    """Start a detached container of fixture ``image`` in ``runtime``.

    Raises RuntimeUnavailable when the runtime is missing, Unsupported for an option the
    runtime lacks, TestbedError when it fails. On failure whatever was created is removed.
    """
    if image not in IMAGES:
        raise ValueError(f"unknown fixture image {image!r}; known: {', '.join(IMAGES)}")
    require(runtime)
    name = name or new_name(f"{runtime}-{image}")
    built = ensure_image(runtime, image)
    ref = image_ref(runtime, image)
    cmd = list(command or [])
    wd = workdir(name)
    wd.mkdir(parents=True, exist_ok=False)
    namespace = CTR_NAMESPACE if runtime == "containerd" else None
    try:
        if runtime == "docker":
            cid, pid = _start_docker(name, ref, read_only, userns, cmd)
        elif runtime == "podman":
            cid, pid = _start_podman(name, ref, read_only, userns, cmd)
        elif runtime == "containerd":
            cid, pid = _start_containerd(name, ref, read_only, userns, cmd, wd)
        else:
            cid, pid = _start_runc(name, built, read_only, userns, cmd, wd)
        if pid <= 0:
            raise TestbedError(f"{runtime}: {name} has no main process (pid {pid})")
    except BaseException:
        with contextlib.suppress(Exception):
            remove_by_name(runtime, name)
        raise
    return Container(runtime, name, cid, pid, image, namespace, read_only, userns)


# ---------------------------------------------------------------------------------------------
# Inspecting and removing


def exec_in(
    c: Container, argv: Sequence[str], *, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the container with the runtime's own exec; never raises on failure."""
    if c.runtime == "docker":
        cmd = [DOCKER, "exec", c.name, *argv]
    elif c.runtime == "podman":
        cmd = ["podman", "exec", c.name, *argv]
    elif c.runtime == "containerd":
        cmd = ctr("tasks", "exec", "--exec-id", f"e{secrets.token_hex(4)}", c.id, *argv)
    else:
        cmd = ["runc", "exec", c.id, *argv]
    return run(cmd, timeout=timeout, check=False)


def exists(runtime: str, name: str) -> bool:
    """Whether ``runtime`` still knows a container called ``name``."""
    return name in list_names(runtime)


def list_names(runtime: str, prefix: str = NAME_PREFIX) -> list[str]:
    """Names of the runtime's containers that start with ``prefix``."""
    if unavailable_reason(runtime) is not None:
        return []
    if runtime == "docker":
        out = run([DOCKER, "ps", "-a", "--format", "{{.Names}}"]).stdout
    elif runtime == "podman":
        out = run(["podman", "ps", "-a", "--format", "{{.Names}}"]).stdout
    elif runtime == "containerd":
        out = run(ctr("containers", "ls", "-q")).stdout
    else:
        states = json.loads(run(["runc", "list", "-f", "json"]).stdout or "null") or []
        out = "\n".join(s["id"] for s in states)
    return sorted(n for n in out.split() if n.startswith(prefix))


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                # A zombie is gone for our purposes: its reaper just has not run yet.
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.02)
    return False


def remove_by_name(runtime: str, name: str) -> None:
    """Remove the container ``name`` and everything the testbed made for it."""
    if runtime == "docker":
        run([DOCKER, "rm", "-f", name], check=False)
    elif runtime == "podman":
        run(["podman", "rm", "-f", "-t", "0", name], check=False)
    elif runtime == "containerd":
        run(ctr("tasks", "kill", "-s", "SIGKILL", name), check=False)
        run(ctr("tasks", "rm", "-f", name), check=False)
        run(ctr("containers", "rm", name), check=False)
    elif runtime == "runc":
        run(["runc", "kill", name, "KILL"], check=False)
        run(["runc", "delete", "-f", name], check=False)
    shutil.rmtree(workdir(name), ignore_errors=True)


def remove(c: Container) -> None:
    """Remove ``c``; raise TestbedError if the runtime still lists it or its process lives."""
    remove_by_name(c.runtime, c.name)
    if not _wait_gone(c.pid):
        raise TestbedError(f"{c.runtime}: main process {c.pid} of {c.name} outlived removal")
    if exists(c.runtime, c.name):
        raise TestbedError(f"{c.runtime}: {c.name} still listed after removal")


@dataclass
class ContainerFactory:
    """Starts containers for one test and removes all of them in :meth:`close`.

    ``on_unavailable`` decides what a missing runtime means (pytest.skip or pytest.fail);
    ``on_unsupported`` the same for an option the runtime lacks."""

    hint: str = ""
    on_unavailable: Callable[[str], None] | None = None
    on_unsupported: Callable[[str], None] | None = None
    started: list[Container] = field(default_factory=list)
    names: list[tuple[str, str]] = field(default_factory=list)

    def __call__(
        self,
        runtime: str,
        image: str,
        *,
        read_only: bool = False,
        userns: bool = False,
        command: Sequence[str] | None = None,
        name: str | None = None,
    ) -> Container:
        name = name or new_name(f"{self.hint[:20]}-{runtime}-{image}")
        self.names.append((runtime, name))
        try:
            c = start(
                runtime, image, name=name, read_only=read_only, userns=userns, command=command
            )
        except RuntimeUnavailable as e:
            if self.on_unavailable is None:
                raise
            self.on_unavailable(str(e))
            raise
        except Unsupported as e:
            if self.on_unsupported is None:
                raise
            self.on_unsupported(str(e))
            raise
        self.started.append(c)
        return c

    def remove(self, c: Container) -> None:
        """Remove ``c`` now (it is then skipped at close)."""
        remove(c)
        self.started.remove(c)

    def close(self) -> list[str]:
        """Remove every container still started; return the errors, after trying them all."""
        errors = []
        for c in reversed(self.started):
            try:
                remove(c)
            except Exception as e:
                errors.append(f"{c.runtime} {c.name}: {e}")
        self.started.clear()
        return errors


@contextlib.contextmanager
def container(
    runtime: str, image: str, *, read_only: bool = False, userns: bool = False
) -> Iterator[Container]:
    """``with container("docker", "busybox") as c:`` outside pytest."""
    factory = ContainerFactory(hint="ctx")
    try:
        yield factory(runtime, image, read_only=read_only, userns=userns)
    finally:
        errors = factory.close()
        if errors:
            raise TestbedError("; ".join(errors))


def leftovers(prefix: str = NAME_PREFIX) -> dict[str, list[str]]:
    """Every runtime's containers whose name starts with ``prefix``."""
    return {rt: names for rt in RUNTIMES if (names := list_names(rt, prefix))}


# ---------------------------------------------------------------------------------------------
# CLI for scripts/runtimes


def _cmd_load(runtimes: Sequence[str]) -> int:
    built = fixture_images.build_all()
    status = 0
    for rt in runtimes:
        reason = unavailable_reason(rt)
        if reason is not None:
            print(f"{rt}: not loading: {reason}", file=sys.stderr)
            status = 1
            continue
        for img in built.values():
            t0 = time.monotonic()
            did = load_image(rt, img)
            what = f"loaded in {time.monotonic() - t0:.2f}s" if did else "already loaded"
            print(f"{rt:<10} {image_ref(rt, img.name):<42} {what}")
    return status


def _cmd_status() -> int:
    for rt in RUNTIMES:
        reason = unavailable_reason(rt)
        if reason is not None:
            print(f"{rt}: unavailable: {reason}")
            continue
        if rt == "runc":
            print(f"{rt}: images run from {fixture_images.default_out_dir()}/NAME/rootfs")
            continue
        have = [i for i in IMAGES if loaded_image_id(rt, i)]
        print(f"{rt}: images loaded: {', '.join(have) or 'none'}")
    left = leftovers()
    print(f"cc-test-* containers: {left or 'none'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.runtimes")
    sub = parser.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load", help="load the fixture images into the runtimes")
    load.add_argument("runtimes", nargs="*", default=["docker", "podman", "containerd"])
    sub.add_parser("status", help="runtimes, loaded images, leftover containers")
    sub.add_parser("leftovers", help="print cc-test-* containers as JSON")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "load":
            return _cmd_load(args.runtimes)
        if args.cmd == "status":
            return _cmd_status()
        print(json.dumps(leftovers()))
        return 0
    except (TestbedError, fixture_images.ImageBuildError, OSError) as e:
        print(f"runtimes: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

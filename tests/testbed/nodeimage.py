"""The node image for tests: build it once (cached), load it into a runtime, run it the way
a node pod runs it.

- ``ensure_node_image() -> Path``: the image tar, built by ``crashcart image node`` from this
  worktree's crashcart and the default toolbox, under NODE_DIR/<stamp>/ where the stamp
  hashes crashcart's source and the toolbox file (path, size, mtime, its build stamp). A
  fresh one costs a hash of ~1 MB of source; a build ~35 s. Serialised with a lock, so
  concurrent test runs (other worktrees) build each stamp once.
- ``load(runtime) -> ref``: the image loaded into docker, podman or containerd (namespace
  k8s.io, where the CRI and a node's kubelet find images); the ref is NODE_IMAGE_REPO with a
  tag naming the stamp, so two worktrees never overwrite each other's image. Layers are
  reproducible, so the runtimes store the Debian and toolbox layers once.
- ``run_node(runtime, args, tty=False) -> CompletedProcess``: ``docker run`` (or ``ctr
  run``: runtime "containerd") of the node image with what a node pod has
  (``node_flags()``): privileged, the host's pid namespace, the host's cgroup namespace
  (``host_cgroupns=False``: one of its own, as a CRI gives on cgroup v2), no network,
  HOST_PATHS as bind mounts; ARGS go to its entrypoint, crashcart. ``node_argv(...)`` is
  the docker command line, for a pty or a detached run (``entrypoint="sleep"``, ARGS
  ``["infinity"]``, ``detach=True``: a node pod to ``docker exec`` into).

Privileged, measured here: root on these machines lacks CAP_SYS_RESOURCE in its bounding
set, and ``docker run --privileged`` asks runc for every capability, so it fails with
"unable to apply caps: operation not permitted" (``--cap-drop`` is ignored with
``--privileged``). Where the bounding set lacks a capability, node_flags() spells out what
--privileged means instead: every capability the host has, no seccomp filter, no AppArmor
profile, /proc and /sys unmasked, every device allowed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from crashcart.linux import caps
from crashcart.nodeimage import HOST_PATHS, NODE_IMAGE_REPO
from tests import ccrun
from tests.testbed import runtimes
from tests.testbed.runtimes import DOCKER, TestbedError

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = Path(os.environ.get("CRASHCART_TEST_NODE_DIR", "/var/lib/crashcart-test/node"))
K8S_NS = "k8s.io"
BUILD_TIMEOUT = 900
KEEP = 4


def toolbox() -> Path:
    """The toolbox that goes in: the default one (CRASHCART_TEST_DEFAULT_IMAGE)."""
    return Path(os.environ.get("CRASHCART_TEST_DEFAULT_IMAGE", "/var/lib/crashcart/crashcart.img"))


def stamp(box: Path | None = None) -> str:
    """A hash of crashcart's source files and the toolbox file's identity."""
    box = box or toolbox()
    h = hashlib.sha256()
    src = REPO / "crashcart"
    for path in sorted(p for p in src.rglob("*") if p.is_file() and p.suffix != ".pyc"):
        h.update(path.relative_to(src).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    st = box.stat()
    h.update(f"{box}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    box_stamp = box.with_name(box.name + ".stamp")
    if box_stamp.exists():
        h.update(box_stamp.read_bytes())
    return h.hexdigest()[:16]


def ref_for(s: str) -> str:
    return f"{NODE_IMAGE_REPO}:test-{s}"


@contextmanager
def _locked() -> Iterator[None]:
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    with open(NODE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_node_image() -> Path:
    """The node image tar for this worktree's crashcart, built if there is none yet."""
    box = toolbox()
    if not box.exists():
        raise TestbedError(f"no toolbox at {box}: `crashcart image build --output {box}`")
    s = stamp(box)
    out = NODE_DIR / s / "node.tar"
    with _locked():
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [*ccrun.argv("image", "node", "-o", str(out), "--toolbox", str(box))]
        proc = subprocess.run([*argv, "--tag", ref_for(s)], env=ccrun.env(), cwd=REPO,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT)  # fmt: skip
        if proc.returncode != 0:
            shutil.rmtree(out.parent, ignore_errors=True)
            raise TestbedError(f"crashcart image node failed: {proc.stderr.strip()[-800:]}")
        _prune(keep=out.parent)
    return out


def _prune(keep: Path) -> None:
    """Keep the KEEP newest tars (240 MB each; other worktrees' stamps among them), drop
    the older ones. The images already loaded into the runtimes stay."""
    tars = sorted((d / "node.tar" for d in NODE_DIR.iterdir() if (d / "node.tar").exists()),
                  key=lambda t: t.stat().st_mtime, reverse=True)  # fmt: skip
    for tar in tars[KEEP:]:
        if tar.parent != keep:
            tar.unlink()
            tar.parent.rmdir() if not any(tar.parent.iterdir()) else None


def loaded_digest(runtime: str, ref: str) -> str | None:
    """docker, podman: the image ID (config digest); containerd: the manifest digest."""
    if runtime == "containerd":
        proc = runtimes.run(["ctr", "-n", K8S_NS, "images", "ls"], check=False)
        rows = (line.split() for line in proc.stdout.splitlines())
        return next((cols[2] for cols in rows if len(cols) >= 3 and cols[0] == ref), None)
    binary = DOCKER if runtime == "docker" else "podman"
    proc = runtimes.run([binary, "image", "inspect", "--format", "{{.Id}}", ref], check=False)
    out = proc.stdout.strip()
    if proc.returncode != 0 or not out:
        return None
    return out if out.startswith("sha256:") else "sha256:" + out


def image_digests(tar: Path) -> tuple[str, str]:
    """(config digest, manifest digest) of a node image tar, from its index.json."""
    import json
    import tarfile

    with tarfile.open(tar) as t:
        index = json.load(t.extractfile("index.json"))  # type: ignore[arg-type]
        manifest_digest = index["manifests"][0]["digest"]
        blob = "blobs/sha256/" + manifest_digest.removeprefix("sha256:")
        manifest = json.load(t.extractfile(blob))  # type: ignore[arg-type]
    return manifest["config"]["digest"], manifest_digest


def load(runtime: str, tar: Path | None = None) -> str:
    """Load the node image into ``runtime`` (docker, podman, containerd) unless it already
    holds this very image; returns the reference to run it by."""
    tar = tar or ensure_node_image()
    ref = ref_for(tar.parent.name)
    config, manifest = image_digests(tar)
    want = manifest if runtime == "containerd" else config
    if loaded_digest(runtime, ref) == want:
        return ref
    if runtime == "docker":
        runtimes.run([DOCKER, "load", "-q", "-i", str(tar)], timeout=300)
    elif runtime == "podman":
        runtimes.run(["podman", "load", "-q", "-i", str(tar)], timeout=300)
    elif runtime == "containerd":
        runtimes.run(["ctr", "-n", K8S_NS, "images", "import", str(tar)], timeout=300)
    else:
        raise TestbedError(f"no node image for runtime {runtime!r}")
    got = loaded_digest(runtime, ref)
    if got != want:
        raise TestbedError(f"{runtime}: loaded {tar} but {ref} is {got}, not {want}")
    return ref


def privileged_flags(bounding: int | None = None) -> list[str]:
    """``--privileged``, or what it means spelled out where the host's bounding set lacks a
    capability (see the module docstring)."""
    if bounding is None:
        bounding = _bounding()
    lacking = _lacking(bounding)
    if not lacking:
        return ["--privileged"]
    drops = [f"--cap-drop={n.upper()}" for n in lacking]
    return ["--cap-add=ALL", *drops, "--security-opt=seccomp=unconfined",
            "--security-opt=apparmor=unconfined", "--security-opt=systempaths=unconfined",
            "--device-cgroup-rule=a *:* rwm"]  # fmt: skip


def _lacking(bounding: int) -> list[str]:
    """The capabilities the kernel has that the host's bounding set lacks."""
    return [n for n in caps.NAMES[: caps.last_cap() + 1] if not bounding & caps.mask([n])]


def _bounding() -> int:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("CapBnd:"))
    return int(line.split()[1], 16)


def mount_flags() -> list[str]:
    """HOST_PATHS as bind mounts; a host path that does not exist is left out (docker
    would create it on the host, and crashcart must write nothing there)."""
    out: list[str] = []
    for host, inside, ro in HOST_PATHS:
        if os.path.exists(host):
            out += ["-v", f"{host}:{inside}:{'ro' if ro else 'rw'}"]
    return out


def node_flags(
    privileged: bool = True, host_pid: bool = True, host_cgroupns: bool = True
) -> list[str]:
    """The `docker run` options of a node pod (privileged and host_pid exist for the
    bad-input tests; host_cgroupns=False is what a CRI on a cgroup v2 host gives a pod)."""
    cgroupns = "--cgroupns=host" if host_cgroupns else "--cgroupns=private"
    flags = [*(privileged_flags() if privileged else []), "--network=none", cgroupns]
    if host_pid:
        flags.append("--pid=host")
    return [*flags, *mount_flags()]


def node_argv(
    args: Sequence[str],
    *,
    ref: str | None = None,
    tty: bool = False,
    name: str | None = None,
    detach: bool = False,
    entrypoint: str | None = None,
    privileged: bool = True,
    host_pid: bool = True,
    host_cgroupns: bool = True,
) -> list[str]:
    """The `docker run` command line of the node image with ARGS for its entrypoint
    (crashcart, or ``entrypoint``). Removed when it exits unless ``detach``."""
    argv = [DOCKER, "run", "--pull=never", "-i"]
    argv += ["-t"] if tty else []
    argv += ["-d"] if detach else ["--rm"]
    argv += ["--name", name or runtimes.new_name("node")]
    argv += ["--entrypoint", entrypoint] if entrypoint else []
    argv += node_flags(privileged, host_pid, host_cgroupns)
    return [*argv, ref or load("docker"), *args]


def ctr_argv(
    args: Sequence[str],
    *,
    ref: str | None = None,
    tty: bool = False,
    name: str | None = None,
) -> list[str]:
    """The same for containerd (`ctr run`, namespace k8s.io, removed when it exits).

    ctr applies --cap-drop after --privileged (docker does not), so the capability this
    host lacks is simply dropped. ctr has no --pid=host: --with-ns joins the pid namespace
    of kthreadd, PID 2, which lives in the initial namespaces (/proc/1/ns is unreadable on
    these machines)."""
    argv = ["ctr", "-n", K8S_NS, "run", "--rm", *(["-t"] if tty else []), "--privileged"]
    argv += [f"--cap-drop=CAP_{n.upper()}" for n in _lacking(_bounding())]
    argv += ["--with-ns", "pid:/proc/2/ns/pid"]
    for host, inside, ro in HOST_PATHS:
        if os.path.exists(host):
            mode = "ro" if ro else "rw"
            argv += ["--mount", f"type=bind,src={host},dst={inside},options=rbind:{mode}"]
    ref = ref or load("containerd")
    return [*argv, ref, name or runtimes.new_name("node"), "crashcart", *args]


def run_node(
    runtime: str,
    args: Sequence[str],
    *,
    tty: bool = False,
    timeout: float = 120,
    input: bytes | None = None,
    ref: str | None = None,
    privileged: bool = True,
    host_pid: bool = True,
    host_cgroupns: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run crashcart ARGS in the node image as a node pod would, output captured.
    ``runtime`` runs the node container: "docker" (node_argv) or "containerd" (ctr_argv,
    always privileged with host pid; ``ref`` is then a containerd reference). ``tty`` adds
    -t (the runtime then wants its own stdin to be a terminal: for an interactive session
    drive node_argv under a pty instead)."""
    if runtime == "containerd":
        argv = ctr_argv(args, ref=ref, tty=tty)
    elif runtime == "docker":
        argv = node_argv(args, ref=ref, tty=tty, privileged=privileged, host_pid=host_pid,
                         host_cgroupns=host_cgroupns)  # fmt: skip
    else:
        raise TestbedError(f"run_node: cannot run the node image with {runtime!r}")
    return subprocess.run(argv, input=input, stdin=None if input else subprocess.DEVNULL,
                          capture_output=True, timeout=timeout)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m tests.testbed.nodeimage [RUNTIME...]`: build (cached) and load."""
    names = list(argv if argv is not None else sys.argv[1:])
    t0 = time.monotonic()
    tar = ensure_node_image()
    print(f"node image: {tar} ({tar.stat().st_size} bytes, {time.monotonic() - t0:.1f} s)")
    for runtime in names:
        print(f"{runtime}: {load(runtime, tar)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fixtures of the fault suite (tests/fault): the tiny static toolbox in erofs and squashfs,
the hostile probe, docker containers started with extra options (capabilities, a read-only
or tiny /dev), and the real toolbox image for the tests that need real tools."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ccrun
from tests.fault import kit
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.require import missing
from tests.testbed.runtimes import Container


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (scripts/runtimes install provides it)")


@pytest.fixture(scope="session")
def tiny() -> str:
    """The tiny static toolbox as erofs (file-backed: no loop device)."""
    _need("musl-gcc", "mkfs.erofs")
    return str(kit.tiny_toolbox("erofs"))


@pytest.fixture(scope="session")
def tiny_squashfs() -> str:
    """The same toolbox as squashfs: mounted through an autoclear loop device."""
    _need("musl-gcc", "mksquashfs")
    return str(kit.tiny_toolbox("squashfs"))


@pytest.fixture(params=["erofs", "squashfs"])
def any_tiny(request: pytest.FixtureRequest) -> str:
    """Both formats: a leak of a loop device only shows with squashfs."""
    return str(request.getfixturevalue("tiny" if request.param == "erofs" else "tiny_squashfs"))


@pytest.fixture(scope="session")
def probe() -> Path:
    _need("musl-gcc")
    return kit.static_binary("probe")


@pytest.fixture(scope="session")
def toolbox() -> str:
    """The real toolbox image ($CRASHCART_TEST_IMAGE), for tests that need real tools."""
    path = ccrun.test_image()
    if not os.path.exists(path):
        missing(f"no toolbox image at {path} (set CRASHCART_TEST_IMAGE)")
    return path


class RunFactory:
    """`docker run -d` / `podman run -d` with extra options (capabilities, a read-only or tiny
    /dev, a user namespace): the testbed's factory has no way to pass them."""

    def __init__(self, hint: str) -> None:
        self.hint = hint
        self.started: list[Container] = []

    def __call__(self, *options: str, runtime: str = "docker", image: str = "busybox",
                 command: tuple[str, ...] = ()) -> Container:  # fmt: skip
        reason = runtimes.unavailable_reason(runtime)
        if reason is not None:
            missing(f"{runtime}: {reason}")
        runtimes.ensure_image(runtime, image)
        name = runtimes.new_name(f"{self.hint}-{runtime}-{image}")
        cli = runtimes.DOCKER if runtime == "docker" else "podman"
        argv = [cli, "run", "-d", "--pull=never", "--name", name, "--network", "none",
                "--label", "crashcart-test=1", *options, runtimes.image_ref(runtime, image),
                *command]  # fmt: skip
        self.started.append(Container(runtime, name, name, 0, image))
        cid = runtimes.run(argv).stdout.strip()
        pid = int(runtimes.run([cli, "inspect", "--format", "{{.State.Pid}}", name]).stdout)
        c = Container(runtime, name, cid, pid, image, userns="--uidmap" in options)
        self.started[-1] = c
        return c

    def close(self) -> None:
        for c in self.started:
            runtimes.remove_by_name(c.runtime, c.name)


@pytest.fixture
def run_container(request: pytest.FixtureRequest) -> Iterator[RunFactory]:
    factory = RunFactory(request.node.name.removeprefix("test_")[:16])
    try:
        yield factory
    finally:
        factory.close()


USERNS = ("--uidmap", f"0:{runtimes.USERNS_HOST_ID}:{runtimes.USERNS_SIZE}",
          "--gidmap", f"0:{runtimes.USERNS_HOST_ID}:{runtimes.USERNS_SIZE}")  # fmt: skip


def target(c: Container) -> str:
    if c.runtime == "containerd":
        return f"containerd://{c.namespace}/{c.id}"
    return f"{c.runtime}://{c.name}"


@pytest.fixture(scope="module")
def shared(request: pytest.FixtureRequest) -> Iterator[Container]:
    """One docker busybox container for a whole module (each test still checks leaks
    around what it does); its own fixture so a test can also kill or remove it."""
    reason = runtimes.unavailable_reason("docker")
    if reason is not None:
        missing(f"docker: {reason}")
    c = runtimes.start("docker", "busybox", name=runtimes.new_name("fault-shared"))
    try:
        yield c
    finally:
        runtimes.remove_by_name("docker", c.name)


def _others(line: str) -> bool:
    """A host mount or loop device that went away during the block and is not ours: other
    engineers' runs (benchmarks, image builds) share this host. crashcart never unmounts a
    host mount or detaches a loop device itself (autoclear does, for its own)."""
    return line.startswith("  - ") and str(kit.BUILD) not in line and "crashcart-dev" not in line


@contextlib.contextmanager
def _leakcheck(container: Container, *, settle: float = 2.0) -> Iterator[lc.Snapshot]:
    """tests/testbed's leak checker, minus host mounts and loop devices that *disappeared*
    and are not the suite's own (see _others)."""
    before = lc.snapshot(container)
    yield before
    deadline = time.monotonic() + settle
    while True:
        after = lc.snapshot(container)
        lines = lc.diff(before, after)
        section = ""
        kept = []
        for line in lines:
            if not line.startswith(" "):
                section = line
            elif section in ("host mounts:", "host loop devices:") and _others(line):
                continue
            elif section == "new crashcart processes:" and " crashcart image " in line:
                continue  # another engineer's image build, run in the background
            kept.append(line)
        kept = [
            ln
            for i, ln in enumerate(kept)
            if ln.startswith(" ") or (i + 1 < len(kept) and kept[i + 1].startswith(" "))
        ]
        if not kept or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if kept:
        c = container
        head = f"leak check failed for {c.runtime} container {c.name} (pid {c.pid}, {c.image}):"
        raise AssertionError("\n".join([head, *kept]))


@pytest.fixture
def leakcheck() -> lc.LeakCheckFn:
    return _leakcheck

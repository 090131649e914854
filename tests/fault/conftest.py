"""Fixtures of the fault suite (tests/fault): the tiny static toolbox in erofs and squashfs,
the hostile probe, docker containers started with extra options (capabilities, a read-only
or tiny /dev), and the real toolbox image for the tests that need real tools."""

from __future__ import annotations

import os
import shutil
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
    with kit.module_busybox("fault-shared") as c:
        yield c


@pytest.fixture
def leakcheck() -> lc.LeakCheckFn:
    """tests/testbed's leak checker, tolerant of what other engineers' runs on this host
    remove meanwhile (kit.leakcheck)."""
    return kit.leakcheck

"""Fixtures that run real containers (tests/testbed) for every test directory.

- ``start_container(runtime, image, *, read_only=False, userns=False, command=None)``: a
  factory; every container it starts is removed at teardown, pass or fail.
- ``any_container``: one container per (runtime, image); ``busybox_container``,
  ``distroless_container``, ``musl_container``: one per runtime; ``readonly_container`` and
  ``userns_container``: per (runtime, image) with that option.
- ``leakcheck``: ``with leakcheck(container): ...`` fails when the block leaked anything.
- ``fixture_images``: the built images (name -> BuiltImage).

A missing runtime skips the test with the reason, except when CI or
CRASHCART_REQUIRE_RUNTIMES is set (scripts/test sets it): then it fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NoReturn

import pytest

from tests.testbed import images, runtimes
from tests.testbed import leakcheck as leakcheck_mod
from tests.testbed.require import missing
from tests.testbed.runtimes import Container, ContainerFactory

CONTAINER_FIXTURES = frozenset(
    {
        "start_container",
        "any_container",
        "busybox_container",
        "distroless_container",
        "musl_container",
        "readonly_container",
        "userns_container",
    }
)
# (runtime, name) of every container a factory was asked for in this session.
_requested: list[tuple[str, str]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if CONTAINER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.runtime)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a container this session started is still there."""
    if not _requested:
        return
    left = []
    for rt in sorted({rt for rt, _ in _requested}):
        if runtimes.unavailable_reason(rt) is None:
            names = set(runtimes.list_names(rt))
            left += [f"{rt}: {n}" for r, n in _requested if r == rt and n in names]
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        msg = "containers left behind by this run:\n  " + "\n  ".join(left)
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def fixture_images() -> dict[str, images.BuiltImage]:
    try:
        return images.build_all()
    except images.ImageBuildError as e:
        missing(f"fixture images cannot be built: {e}")


def _hint(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "-", request.node.name.removeprefix("test_"))[:20]


def _unsupported(reason: str) -> NoReturn:
    pytest.skip(reason)


@pytest.fixture
def start_container(request: pytest.FixtureRequest) -> Iterator[ContainerFactory]:
    """``start_container(runtime, image, read_only=..., userns=..., command=...)``."""
    factory = ContainerFactory(_hint(request), missing, _unsupported)
    try:
        yield factory
    finally:
        _requested.extend(factory.names)
        errors = factory.close()
        if errors:
            pytest.fail("teardown could not remove:\n  " + "\n  ".join(errors))


def _pairs(runtime_list: tuple[str, ...] = runtimes.RUNTIMES) -> list[tuple[str, str]]:
    return [(rt, img) for rt in runtime_list for img in runtimes.IMAGES]


def _ids(pair: tuple[str, str]) -> str:
    return f"{pair[0]}-{pair[1]}"


@pytest.fixture(params=_pairs(), ids=_ids)
def any_container(start_container: ContainerFactory, request: pytest.FixtureRequest) -> Container:
    runtime, image = request.param
    return start_container(runtime, image)


@pytest.fixture(params=runtimes.RUNTIMES)
def busybox_container(
    start_container: ContainerFactory, request: pytest.FixtureRequest
) -> Container:
    return start_container(request.param, "busybox")


@pytest.fixture(params=runtimes.RUNTIMES)
def distroless_container(
    start_container: ContainerFactory, request: pytest.FixtureRequest
) -> Container:
    return start_container(request.param, "distroless")


@pytest.fixture(params=runtimes.RUNTIMES)
def musl_container(start_container: ContainerFactory, request: pytest.FixtureRequest) -> Container:
    return start_container(request.param, "musl")


@pytest.fixture(params=_pairs(), ids=_ids)
def readonly_container(
    start_container: ContainerFactory, request: pytest.FixtureRequest
) -> Container:
    runtime, image = request.param
    return start_container(runtime, image, read_only=True)


# Docker has no per-container user namespace (userns-remap is daemon-wide).
@pytest.fixture(params=_pairs(("podman", "containerd", "runc")), ids=_ids)
def userns_container(
    start_container: ContainerFactory, request: pytest.FixtureRequest
) -> Container:
    runtime, image = request.param
    return start_container(runtime, image, userns=True)


@pytest.fixture
def leakcheck() -> leakcheck_mod.LeakCheckFn:
    """``with leakcheck(container): ...`` raises AssertionError listing what leaked."""
    return leakcheck_mod.leakcheck

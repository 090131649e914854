"""Fixtures for attach tests: the toolbox image, how to name a container as a TARGET, and
pods on containerd's real CRI (`kubelet`; shared by test_k8s.py and test_node_image.py)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import pytest

from tests import ccrun
from tests.testbed import cri, runtimes
from tests.testbed.cri import Kubelet
from tests.testbed.require import missing, require_runtime
from tests.testbed.runtimes import Container


@pytest.fixture(scope="session")
def toolbox() -> str:
    """The toolbox image the tests attach with (scripts/test builds the minimal recipe)."""
    path = ccrun.test_image()
    if not os.path.exists(path):
        missing(
            f"no toolbox image at {path}: run `crashcart image build --recipe minimal "
            f"--output {path}` (or set CRASHCART_TEST_IMAGE)"
        )
    return path


def target(c: Container) -> str:
    """The runtime-prefixed TARGET for a fixture container (unambiguous by construction)."""
    if c.runtime == "containerd":
        return f"containerd://{c.namespace}/{c.id}"
    return f"{c.runtime}://{c.name}"


@pytest.fixture(scope="module")
def cri_images() -> None:
    require_runtime("containerd")
    if importlib.util.find_spec("grpc") is None:
        missing("grpcio is not installed (the test extra: pip install '.[test]')")
    try:
        cri.check_host()
        cri.ensure_images()
    except runtimes.TestbedError as e:
        missing(f"containerd's CRI test bed is not ready: {e}")


@pytest.fixture
def kubelet(cri_images: None, toolbox: str) -> Iterator[Kubelet]:
    """Pods on containerd's CRI for one test, all removed at teardown (tests/testbed/cri.py)."""
    with cri.kubelet() as k:
        yield k

"""Fixtures for attach tests: the toolbox image, and how to name a container as a TARGET."""

from __future__ import annotations

import os

import pytest

from tests import ccrun
from tests.testbed.require import missing
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

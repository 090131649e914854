"""Skip or fail: what a missing runtime means depends on where the tests run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

from tests.testbed import runtimes


def runtimes_required() -> bool:
    """True in CI (CI or CRASHCART_REQUIRE_RUNTIMES set): a missing runtime is a failure."""
    for var in ("CRASHCART_REQUIRE_RUNTIMES", "CI"):
        if os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no"):
            return True
    return False


def missing(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it when runtimes are required."""
    if runtimes_required():
        pytest.fail(f"{reason} (runtimes are required here: CI or CRASHCART_REQUIRE_RUNTIMES)")
    pytest.skip(reason)


def require_runtime(*names: str) -> None:
    """Skip (or fail, in CI) unless every runtime in ``names`` can run containers."""
    for name in names:
        reason = runtimes.unavailable_reason(name)
        if reason is not None:
            missing(f"{name}: {reason}")

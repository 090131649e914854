"""A short soak (tests/fault/soak.py): random attach/detach cycles with random kills on
every runtime, a leak check after each. Long runs: `python -m tests.fault.soak -n 1000`."""

from __future__ import annotations

import os

from tests.fault import soak
from tests.testbed import runtimes
from tests.testbed.require import missing


def test_soak_cycles_leave_nothing(tiny: str, tiny_squashfs: str) -> None:
    rts = [rt for rt in runtimes.RUNTIMES if runtimes.unavailable_reason(rt) is None]
    if not rts:
        missing("no container runtime available")
    n = int(os.environ.get("CRASHCART_SOAK_N", "12"))
    lines: list[str] = []
    report = soak.soak(n, seed=int(os.environ.get("CRASHCART_SOAK_SEED", "7")), rts=rts,
                       settle=5.0, out=lines.append)  # fmt: skip
    assert report["leaks"] == [] and report["unexpected"] == [], "\n".join(lines)

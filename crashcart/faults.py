"""Fault injection for the fault suite: CRASHCART_FAULT=NAME makes crashcart SIGKILL
itself (and, inside a helper child, its parent first) when it reaches point NAME, so
tests can prove that a kill at any phase leaves nothing behind that `crashcart cleanup`
cannot remove. Unset (the normal case) it costs one string comparison per point."""

from __future__ import annotations

import os

ARMED = os.environ.get("CRASHCART_FAULT", "")


def point(name: str, parent_too: bool = False) -> None:
    if ARMED == name:
        parent = os.getppid()
        if parent_too and parent > 1:  # 0 across pid namespaces: never kill(0) (our group)
            os.kill(parent, 9)
        os.kill(os.getpid(), 9)

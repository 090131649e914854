"""Fault injection for the fault suite: CRASHCART_FAULT=NAME makes crashcart SIGKILL
itself (and, inside a helper child, its parent first) when it reaches point NAME, so
tests can prove that a kill at any phase leaves nothing behind that `crashcart cleanup`
cannot remove. CRASHCART_FAULT=stop:NAME makes the process SIGSTOP itself there instead,
so a test can act at that exact moment (kill the target, the host process, ...) and then
SIGCONT it. Unset (the normal case) it costs one string comparison per point."""

from __future__ import annotations

import os

ARMED = os.environ.get("CRASHCART_FAULT", "")


def point(name: str, parent_too: bool = False) -> None:
    if ARMED == name:
        parent = os.getppid()
        if parent_too and parent > 1:  # 0 across pid namespaces: never kill(0) (our group)
            os.kill(parent, 9)
        os.kill(os.getpid(), 9)
    elif ARMED[:5] == "stop:" and ARMED[5:] == name:
        os.kill(os.getpid(), 19)  # SIGSTOP

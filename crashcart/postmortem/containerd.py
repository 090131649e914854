"""containerd: not yet."""

from __future__ import annotations

from crashcart.postmortem.record import Record


def available() -> bool:
    return False


def find(query: str, namespace: str | None = None) -> Record | None:
    return None

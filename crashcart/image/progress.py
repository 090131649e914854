"""Progress for the long build steps: one status line on a terminal, silence otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.timings: dict[str, float] = {}
        self._step = ""
        self._start = 0.0
        self._last_draw = 0.0

    @contextmanager
    def step(self, name: str) -> Iterator[Progress]:
        self._step, self._start = name, time.monotonic()
        self.update("")
        try:
            yield self
        finally:
            elapsed = time.monotonic() - self._start
            self.timings[name] = round(elapsed, 2)
            if self.enabled:
                self._draw(f"{name}: done in {elapsed:.1f} s", final=True)

    def update(self, detail: str) -> None:
        """Redraw the status line (at most 10 times a second)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and detail:
            return
        self._last_draw = now
        elapsed = now - self._start
        self._draw(f"{self._step} ({elapsed:.0f} s) {detail}")

    def count(self, done: int, total: int) -> None:
        self.update(f"{done}/{total}")

    def _draw(self, text: str, final: bool = False) -> None:
        width = 100
        line = text if len(text) <= width else text[: width - 1] + "…"
        self.stream.write("\r\x1b[K" + line + ("\n" if final else ""))
        self.stream.flush()

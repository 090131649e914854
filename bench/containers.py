"""The benchmark's containers: started through the testbed helpers, named cc-bench-*, so that
neither a test run's cleanup (cc-test-*) removes them mid-measurement nor ours touches theirs,
and all removed by name at the end however the run ends."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor

from bench.env import log
from tests.testbed import runtimes as tb
from tests.testbed.runtimes import Container

PREFIX = "cc-bench-"
# docker/podman/ctr run in parallel: the daemons do the work, 2 cores serve 4 clients fine.
WORKERS = 4


class Fleet:
    """Every container this run created; :meth:`close` removes them all."""

    def __init__(self, run_token: str | None = None) -> None:
        self.token = run_token or secrets.token_hex(3)
        self.started: list[Container] = []
        self.pending: list[tuple[str, str]] = []  # (runtime, name) asked for, maybe half-made

    def name(self, hint: str) -> str:
        return f"{PREFIX}{self.token}-{hint}-{secrets.token_hex(3)}"

    def start(self, runtime: str, image: str, hint: str) -> Container:
        name = self.name(hint)
        self.pending.append((runtime, name))
        c = tb.start(runtime, image, name=name)
        self.started.append(c)
        return c

    def start_many(self, runtime: str, image: str, count: int, hint: str) -> list[Container]:
        tb.ensure_image(runtime, image)  # once, before the threads
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [pool.submit(self.start, runtime, image, f"{hint}{i}") for i in range(count)]
            out = []
            errors = []
            for f in futures:
                try:
                    out.append(f.result())
                except Exception as e:  # noqa: BLE001 - collect, then fail with all of them
                    errors.append(str(e))
        if errors:
            raise tb.TestbedError(f"{len(errors)} of {count} containers failed: {errors[0]}")
        return out

    def remove(self, containers: list[Container]) -> list[str]:
        """Remove ``containers`` (in parallel); return the errors."""
        errors: list[str] = []

        def one(c: Container) -> None:
            try:
                tb.remove(c)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{c.runtime} {c.name}: {e}")

        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(one, containers))
        gone = {c.name for c in containers}
        self.started = [c for c in self.started if c.name not in gone]
        self.pending = [p for p in self.pending if p[1] not in gone]
        return errors

    def close(self) -> list[str]:
        errors = self.remove(list(self.started))
        # Names asked for whose start failed half-way: remove_by_name is idempotent.
        for runtime, name in self.pending:
            try:
                tb.remove_by_name(runtime, name)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{runtime} {name}: {e}")
        self.pending.clear()
        left = {
            rt: names
            for rt in tb.RUNTIMES
            if (names := tb.list_names(rt, f"{PREFIX}{self.token}-"))
        }
        if left:
            errors.append(f"still listed after removal: {left}")
        if errors:
            log(f"cleanup: {len(errors)} problem(s): {errors[:3]}")
        return errors

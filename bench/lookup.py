"""What each runtime module costs a bare-name attach: `crashcart NAME` asks every available
runtime in turn, so a runtime that is installed but runs nothing still costs its
available() and a miss in find(NAME). Measured in-process (the lookup only, no attach),
as the median of many calls, for a Docker container's name (a miss everywhere else).

    sudo .venv/bin/python -m bench.lookup [--name NAME] [--runs N]

Without --name it starts a `cc-bench-lookup-*` busybox container in Docker and removes it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator

from crashcart import targets
from crashcart.targets import model

ORIGINAL = ("docker", "podman", "containerd", "runc")


def median_us(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(samples)


def state_of(name: str) -> str:
    """What the runtime has on this machine right now (so the row can be read)."""
    paths = {"lxc": "/var/lib/lxc", "machine": "/run/systemd/nspawn/propagate",
             "crun": "/run/crun", "runc": "/run/runc"}  # fmt: skip
    path = paths.get(name)
    if not path:
        return ""
    try:
        return f"{path}: {len(os.listdir(path))} entries"
    except OSError:
        return f"{path}: absent"


@contextlib.contextmanager
def docker_container() -> Iterator[str]:
    from tests.testbed import runtimes as tb

    name = tb.new_name("lookup").replace("cc-test-", "cc-bench-")
    tb.ensure_image("docker", "busybox")
    tb.run([tb.DOCKER, "run", "-d", "--name", name, "--network", "none",
            tb.image_ref("docker", "busybox")])  # fmt: skip
    try:
        yield name
    finally:
        tb.run([tb.DOCKER, "rm", "-f", name], check=False)


def resolve_with(runtimes: tuple[str, ...], name: str) -> Callable[[], object]:
    def run() -> object:
        saved = targets.RUNTIMES
        targets.RUNTIMES = runtimes  # type: ignore[misc]  # what _search iterates
        try:
            return targets.resolve(model.parse_spec(name))
        finally:
            targets.RUNTIMES = saved  # type: ignore[misc]

    return run


def measure(name: str, runs: int) -> None:
    print(f"bare-name lookup of docker container {name!r}, median of {runs} calls, in-process")
    print(f"{'runtime':<11} {'available()':>12} {'find() miss':>12}  state")
    for rt, module in targets.MODULES.items():
        avail = median_us(module.available, runs)
        if rt == "docker" or not module.available():
            miss = "-" if rt != "docker" else "(the hit)"
        else:
            miss = f"{median_us(lambda m=module: m.find(name), runs):.1f} us"  # type: ignore[misc]
        print(f"{rt:<11} {avail:>9.1f} us {miss:>12}  {state_of(rt)}")
    # Interleaved, so that the Docker daemon's own variance falls on both alike.
    fns = (resolve_with(ORIGINAL, name), resolve_with(model.RUNTIMES, name))
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for fn, out in zip(fns, samples, strict=True):
            t0 = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - t0) / 1000)
    before, after = (statistics.median(s) for s in samples)
    added = ", ".join(sorted(set(model.RUNTIMES) - set(ORIGINAL)))
    print(f"resolve(), {', '.join(ORIGINAL)} only: {before:.0f} us")
    print(
        f"resolve(), all {len(model.RUNTIMES)} runtimes: {after:.0f} us "
        f"({after - before:+.0f} us for {added})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lookup")
    parser.add_argument("--name", help="an existing Docker container's name")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()
    if args.name:
        measure(args.name, args.runs)
        return 0
    with docker_container() as name:
        measure(name, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

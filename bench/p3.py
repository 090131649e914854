"""P3: N containers, N simultaneous `crashcart NAME -- true`; then N simultaneous `-m`, then
N simultaneous `-u`. Wall time, failures, and leaks (see bench/leaks.py).

All N commands are started back to back with posix_spawn (a few ms for 100), then waited for;
the wall time runs from the first spawn to the last exit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from bench import leaks, procs
from bench.containers import Fleet
from bench.env import CRASHCART, loadavg, log
from bench.stats import summary
from tests.testbed.runtimes import Container

SETTLE_S = 5.0  # teardown that completes asynchronously (autoclear, reaping) gets this long


def _batch(
    label: str, argvs: list[list[str]], env: Mapping[str, str], err_dir: str
) -> tuple[list[procs.Result], dict[str, object]]:
    load_before = loadavg()
    results, wall = procs.run_concurrently(argvs, env, err_dir=err_dir, timeout=120)
    failed = [r for r in results if not r.ok]
    log(f"P3 {label}: {len(results) - len(failed)}/{len(results)} ok in {wall / 1e3:.2f} s")
    for r in failed[:3]:
        log(f"P3 {label}: {' '.join(r.argv[1:])}: exit {r.code}: {r.stderr[-300:]}")
    ok = [r for r in results if r.ok]
    return results, {
        "wall_s": round(wall / 1e3, 3),
        "count": len(results),
        "succeeded": len(ok),
        "failed": len(failed),
        "failure_samples": [
            f"{' '.join(r.argv[1:])}: exit {r.code}: {r.stderr[-300:]}" for r in failed[:5]
        ],
        "per_process_ms": summary([r.wall_ms for r in results]),
        "cpu_ms": summary([r.cpu_ms for r in ok]),
        "cpu_total_s": round(sum(r.cpu_ms for r in results) / 1e3, 3),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def _settled_diffs(
    containers: list[Container],
    before: dict[str, leaks.CtrState],
    host_before: leaks.HostState,
    runner: int,
    toolbox: str,
) -> dict[str, object]:
    """Poll until nothing differs or SETTLE_S passed; return what still differs."""
    our_mntns = {s.mntns for s in before.values()}
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = leaks.states(containers)
        per = {
            c.name: d
            for c in containers
            if (d := leaks.diff_container(before[c.name], after[c.name]))
        }
        ours, foreign = leaks.diff_host(host_before, leaks.host_state(runner), toolbox, our_mntns)
        if (not per and not ours) or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    return {
        "containers_with_leaks": len(per),
        "container_leaks": {name: lines[:10] for name, lines in list(per.items())[:5]},
        "host_leaks": ours,
        "foreign_host_changes": foreign,
        "leaks": len(per) + len(ours),
    }


def run_runtime(
    fleet: Fleet,
    runtime: str,
    count: int,
    env: Mapping[str, str],
    err_dir: str,
    runner: int,
    toolbox: str,
) -> dict[str, object]:
    cc = str(CRASHCART)
    out: dict[str, object] = {"runtime": runtime, "image": "distroless", "containers": count}
    t0 = time.monotonic()
    log(f"P3 {runtime}: starting {count} distroless containers")
    containers = fleet.start_many(runtime, "distroless", count, f"p3{runtime[:3]}")
    out["container_start_s"] = round(time.monotonic() - t0, 2)
    try:
        # One attach at a time with N containers present: does target lookup scale?
        single = [
            procs.run([cc, containers[i % count].name, "--", "true"], env, err_dir=err_dir)
            for i in range(5)
        ]
        out["sequential_attach_ms"] = summary([r.wall_ms for r in single if r.ok])

        before = leaks.states(containers)
        host_before = leaks.host_state(runner)

        _, out["session"] = _batch(
            f"{runtime} session", [[cc, c.name, "--", "true"] for c in containers], env, err_dir
        )
        out["session_leaks"] = _settled_diffs(containers, before, host_before, runner, toolbox)

        _, out["mount"] = _batch(
            f"{runtime} -m", [[cc, "-m", c.name] for c in containers], env, err_dir
        )
        mounted = [c for c in containers if leaks.toolbox_mounted(c)]
        out["mount"]["toolbox_mounted"] = len(mounted)  # type: ignore[index]
        _, out["unmount"] = _batch(
            f"{runtime} -u", [[cc, "-u", c.name] for c in containers], env, err_dir
        )
        still = [c for c in containers if leaks.toolbox_mounted(c)]
        out["unmount"]["toolbox_still_mounted"] = len(still)  # type: ignore[index]
        out["sideload_leaks"] = _settled_diffs(containers, before, host_before, runner, toolbox)
        for c in still:  # leave nothing: a failed -u is retried with --force
            procs.run([cc, "-u", "--force", c.name], env, err_dir=err_dir)
    finally:
        t1 = time.monotonic()
        errors = fleet.remove(containers)
        out["container_remove_s"] = round(time.monotonic() - t1, 2)
        out["remove_errors"] = errors
    return out

"""P3: N containers, N simultaneous `crashcart NAME -- true`; then N simultaneous `-m`, then
N simultaneous `-u`. Wall time, failures, and leaks (see bench/leaks.py).

All N commands are started back to back with posix_spawn (a few ms for 100), then waited for;
the wall time runs from the first spawn to the last exit.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping

from bench import leaks, procs
from bench.containers import Fleet
from bench.env import CRASHCART, Contention, log
from bench.stats import summary
from tests.testbed.runtimes import Container

SETTLE_S = 5.0  # teardown that completes asynchronously (autoclear, reaping) gets this long


def _messages(results: list[procs.Result]) -> dict[str, int]:
    """How often each stderr line was printed, with the target's own description left out
    ("podman NAME (ID, pid N): not mounted" counts as "not mounted")."""
    counts: Counter[str] = Counter()
    for r in results:
        for line in r.stderr.splitlines():
            counts[line.split("): ", 1)[-1][:200]] += 1
    return dict(counts.most_common(10))


def _batch(
    label: str, argvs: list[list[str]], env: Mapping[str, str], err_dir: str
) -> tuple[list[procs.Result], dict[str, object]]:
    busy = Contention()
    results, wall = procs.run_concurrently(
        argvs, env, err_dir=err_dir, timeout=120, keep_stderr=True
    )
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
        "stderr_lines": _messages(results),
        "machine": busy.done(sum(r.cpu_ms for r in results) / 1e3),
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
        # a single read() of /proc/PID/mountinfo returns at most one page (seq_file)
        "mountinfo_bytes": _mountinfo_sizes(containers, set(per)),
        "host_leaks": ours,
        "foreign_host_changes": foreign,
        "leaks": len(per) + len(ours),
    }


def _mountinfo_sizes(containers: list[Container], leaky: set[str]) -> dict[str, object]:
    sizes = {}
    for c in containers:
        try:
            with open(f"/proc/{c.pid}/mountinfo", "rb") as f:
                sizes[c.name] = len(f.read())
        except OSError:
            continue
    ok = [v for k, v in sizes.items() if k not in leaky]
    bad = [v for k, v in sizes.items() if k in leaky]
    return {
        "clean": [min(ok), max(ok)] if ok else None,
        "leaky": [min(bad), max(bad)] if bad else None,
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
        # ... and with the runtime named (runtime://NAME): what searching the others costs.
        variants = {"sequential_attach_ms": "", "sequential_attach_prefixed_ms": f"{runtime}://"}
        walls: dict[str, list[float]] = {key: [] for key in variants}
        for i in range(5):
            for key, prefix in variants.items():
                name = prefix + containers[-1 - i % count].name
                r = procs.run([cc, name, "--", "true"], env, err_dir=err_dir)
                if r.ok:
                    walls[key].append(r.wall_ms)
        for key in variants:
            out[key] = summary(walls[key])

        before = leaks.states(containers)
        host_before = leaks.host_state(runner)

        _, out["session"] = _batch(
            f"{runtime} session", [[cc, c.name, "--", "true"] for c in containers], env, err_dir
        )
        out["session_leaks"] = _settled_diffs(containers, before, host_before, runner, toolbox)

        with leaks.ForeignCleanupWatch(runner) as watch:
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
        out["foreign_cleanups"] = watch.report()
        if watch.report():
            log(
                f"P3 {runtime}: another user's crashcart cleanup/-u ran during -m/-u: "
                f"{watch.report()[:3]}"
            )
        for c in still:  # leave nothing: a failed -u is retried with --force
            procs.run([cc, "-u", "--force", c.name], env, err_dir=err_dir)
    finally:
        t1 = time.monotonic()
        errors = fleet.remove(containers)
        out["container_remove_s"] = round(time.monotonic() - t1, 2)
        out["remove_errors"] = errors
    return out

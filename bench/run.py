"""crashcart's benchmarks (issue 7), in one command, as root:

    sudo .venv/bin/python -m bench            # or: sudo .venv/bin/python bench/run.py

starts the runtimes it needs (reusing running daemons, through scripts/runtimes), creates its
containers (named cc-bench-*), runs P1 (attach + true), P2 (time to the first prompt), P3 (N
containers at once, with leak checks) and P5 (footprint, from P1's and P3's rusage), removes
everything it created, prints the tables, and writes bench/results/<date>.json plus a PNG of
P1. --publish also copies the chart to bench/p1.png and the tables into bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import chart, env, p1, p2, p3, p5, report  # noqa: E402
from bench.containers import Fleet  # noqa: E402
from bench.env import BenchError, log  # noqa: E402
from tests.testbed import runtimes as tb  # noqa: E402

PHASES = ("p1", "p2", "p3", "p5")
RESULTS = env.REPO / "bench" / "results"
README = env.REPO / "bench" / "README.md"
PUBLISHED_CHART = env.REPO / "bench" / "p1.png"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--only",
        default=",".join(PHASES),
        help="phases to run, comma-separated (default: p1,p2,p3,p5)",
    )
    ap.add_argument("--runs", type=int, default=50, help="P1 iterations counted (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="iterations not counted (default 3)")
    ap.add_argument("--p2-runs", type=int, default=20, help="P2 iterations (default 20)")
    ap.add_argument("--p5-runs", type=int, default=10, help="P5 iterations (default 10)")
    ap.add_argument("--containers", type=int, default=100, help="P3 containers (default 100)")
    ap.add_argument(
        "--runtimes",
        default=",".join(tb.RUNTIMES),
        help="P1 runtimes (default: docker,podman,containerd,runc)",
    )
    ap.add_argument(
        "--p3-runtimes", default="docker,podman", help="P3 runtimes (default: docker,podman)"
    )
    ap.add_argument(
        "--image",
        help="toolbox image (default: $CRASHCART_IMAGE, else "
        "/var/lib/crashcart/crashcart-minimal.img, else /var/tmp/crashcart-dev.img)",
    )
    ap.add_argument(
        "--no-diagnostics",
        action="store_true",
        help="leave out P1's diagnostic rows (bare interpreter, --version, ...)",
    )
    ap.add_argument(
        "--no-start",
        action="store_true",
        help="do not run scripts/runtimes start/load-images (daemons already up)",
    )
    ap.add_argument("--seed", type=int, default=None, help="order of the interleaved runs")
    ap.add_argument(
        "--publish",
        action="store_true",
        help="copy the chart to bench/p1.png and the tables into bench/README.md",
    )
    args = ap.parse_args(argv)
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    for p in args.only:
        if p not in PHASES:
            ap.error(f"unknown phase {p!r}; known: {', '.join(PHASES)}")
    args.runtimes = [r for r in args.runtimes.split(",") if r]
    args.p3_runtimes = [r for r in args.p3_runtimes.split(",") if r]
    for r in args.runtimes + args.p3_runtimes:
        if r not in tb.RUNTIMES:
            ap.error(f"unknown runtime {r!r}")
    if args.seed is None:
        args.seed = int(time.time())
    return args


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def child_env(toolbox: Path) -> dict[str, str]:
    """The environment every measured command gets: ours, with the toolbox chosen, and no
    PYTHONPATH (the installed crashcart must be the one that runs)."""
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    e["CRASHCART_IMAGE"] = str(toolbox)
    return e


def measure(args: argparse.Namespace, res: dict[str, Any], fleet: Fleet, tmp: Path) -> None:
    toolbox = env.toolbox(args.image)
    res["toolbox"] = env.toolbox_facts(toolbox)
    res["crashcart"] = env.console_script()
    pkg = Path(str(res["crashcart"]["package"]))
    res["pyc"] = {"compileall": env.compile_package(pkg)}
    base_env = child_env(toolbox)
    nopyc_env = dict(base_env)
    nopyc_env["PYTHONPATH"] = str(env.source_snapshot(pkg, tmp / "nopyc"))
    nopyc_env["PYTHONDONTWRITEBYTECODE"] = "1"
    err_dir = str(tmp / "stderr")
    os.makedirs(err_dir)

    available = []
    for rt in sorted(set(args.runtimes) | set(args.p3_runtimes), key=tb.RUNTIMES.index):
        reason = tb.unavailable_reason(rt)
        if reason:
            log(f"{rt}: unavailable, skipped: {reason}")
            res.setdefault("skipped", {})[rt] = reason
        else:
            available.append(rt)

    if {"p1", "p2", "p5"} & set(args.only):
        distroless, busybox = {}, {}
        for rt in args.runtimes:
            if rt in available:
                distroless[rt] = fleet.start(rt, "distroless", f"{rt[:3]}-dl")
                busybox[rt] = fleet.start(rt, "busybox", f"{rt[:3]}-bb")
        if "p1" in args.only:
            cases = p1.build_cases(
                distroless,
                busybox,
                base_env,
                nopyc_env,
                fleet.token,
                diagnostics=not args.no_diagnostics,
            )
            busy = env.Contention()
            t0 = time.monotonic()
            p1.run(cases, args.runs, args.warmup, args.seed, err_dir)
            res["p1"] = p1.results(cases)
            ours = sum(r.cpu_ms for c in cases for r in c.results) / 1e3
            res["p1"]["machine"] = busy.done(ours)
            res["p1"]["duration_s"] = round(time.monotonic() - t0, 1)
            stale = env.pyc_report(pkg)["stale"]
            res["pyc"]["stale_after_p1"] = stale
            if stale:
                log(f"warning: .pyc went stale during P1 (sources edited meanwhile): {stale}")
        if "p2" in args.only and "docker" in distroless:
            cases2 = [
                p2.Case(
                    "crashcart/docker",
                    "crashcart (toolbox bash)",
                    distroless["docker"],
                    [str(env.CRASHCART), distroless["docker"].name],
                    base_env,
                ),
                p2.Case(
                    "docker-exec",
                    "docker exec -it sh",
                    busybox["docker"],
                    [tb.DOCKER, "exec", "-it", busybox["docker"].name, "sh"],
                    base_env,
                ),
            ]
            if "podman" in busybox:
                podman = shutil.which("podman") or "podman"
                cases2.append(
                    p2.Case(
                        "podman-exec",
                        "podman exec -it sh",
                        busybox["podman"],
                        [podman, "exec", "-it", busybox["podman"].name, "sh"],
                        base_env,
                    )
                )
            busy = env.Contention()
            p2.run(cases2, args.p2_runs, min(args.warmup, 2), args.seed + 1)
            res["p2"] = p2.results(cases2)
            ours = sum(s.cpu_ms for c in cases2 for s in c.samples) / 1e3
            res["p2"]["machine"] = busy.done(ours)
        if "p5" in args.only and "docker" in distroless:
            why = p5.available()
            if why:
                log(f"P5 skipped: {why}")
                res["p5_skipped"] = why
            else:
                cases5 = p5.build_cases(distroless["docker"], busybox.get("docker"))
                p5.run(cases5, args.p5_runs, base_env, args.seed + 2, err_dir)
                res["p5_raw"] = p5.results(cases5)
        fleet.remove(
            [c for c in fleet.started if c in distroless.values() or c in busybox.values()]
        )

    if "p3" in args.only:
        res["p3"] = {"runtimes": []}
        for rt in args.p3_runtimes:
            if rt not in available:
                continue
            try:
                out = p3.run_runtime(
                    fleet, rt, args.containers, base_env, err_dir, os.getpid(), str(toolbox)
                )
            except tb.TestbedError as e:
                log(f"P3 {rt}: {e}")
                out = {"runtime": rt, "error": str(e)}
            res["p3"]["runtimes"].append(out)


def publish(res: dict[str, Any], table: str, png: Path | None) -> None:
    if png is not None:
        shutil.copyfile(png, PUBLISHED_CHART)
    text = README.read_text() if README.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = f"{BEGIN}\n<!-- written by `python -m bench --publish`; do not edit by hand -->\n\n"
    body += table + "\n\n"
    if png is not None:
        body += f"![P1 distribution]({PUBLISHED_CHART.name})\n\n"
    README.write_text(head + body + END + tail)
    log(f"published: {README.relative_to(env.REPO)}, {PUBLISHED_CHART.relative_to(env.REPO)}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("bench: must run as root (containers, namespaces, mounts)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    stamp = time.strftime("%Y-%m-%dT%H%M%S")
    cmd = "sudo .venv/bin/python -m bench" + "".join(
        f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv)
    )
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": cmd,
        "params": {
            "runs": args.runs,
            "warmup": args.warmup,
            "p2_runs": args.p2_runs,
            "p5_runs": args.p5_runs,
            "containers": args.containers,
            "runtimes": args.runtimes,
            "p3_runtimes": args.p3_runtimes,
            "seed": args.seed,
            "phases": args.only,
        },
        "machine": env.machine(),
        "git": env.git_facts(),
    }
    holder = os.getpid()
    status = 0
    with env.exclusive():
        if not args.no_start:
            env.start_runtimes(holder)
            env.ensure_bench_deps()
        res["versions"] = env.versions(tb.DOCKER)
        fleet = Fleet()
        tmp = Path(tempfile.mkdtemp(prefix="crashcart-bench-run-", dir="/var/tmp"))
        try:
            measure(args, res, fleet, tmp)
        except (BenchError, tb.TestbedError) as e:
            log(f"error: {e}")
            res["error"] = str(e)
            status = 1
        except Exception as e:  # noqa: BLE001 - a harness bug: still clean up and keep the data
            log(f"internal error:\n{traceback.format_exc()}")
            res["error"] = f"internal error: {type(e).__name__}: {e}"
            status = 1
        except KeyboardInterrupt:
            log("interrupted: cleaning up")
            res["error"] = "interrupted"
            status = 130
        finally:
            errors = fleet.close()
            if errors:
                res["cleanup_errors"] = errors
                status = status or 1
            shutil.rmtree(tmp, ignore_errors=True)
            if not args.no_start:
                env.stop_runtimes(holder)
    res["machine"]["loadavg_end"] = env.loadavg()
    res["git"]["head_end"] = env.git_facts()["head"]
    res["p5"] = report.p5(res)
    res["targets"] = report.targets(res)
    table = report.tables(res) if "toolbox" in res else ""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    png = None
    if res.get("p1"):
        png = RESULTS / f"{stamp}-p1.png"
        m = res["machine"]
        title = (
            f"crashcart P1: attach + true, {args.runs} interleaved runs, {res['date']}\n"
            f"{m['cores']} cores, kernel {m['kernel']}; during P1 the machine was "
            f"{res['p1']['machine']['machine_busy_pct']:.0f}% busy, "
            f"{res['p1']['machine']['others_pct']:.0f}% not in the measured commands"
        )
        if not chart.draw(res["p1"], title, png):
            log("matplotlib not installed: no chart (pip install -e '.[bench]')")
            png = None
    print(table)
    log(
        f"results: {out.relative_to(env.REPO)}"
        + (f", chart: {png.relative_to(env.REPO)}" if png else "")
    )
    if args.publish and status == 0:
        publish(res, table, png)
    return status


if __name__ == "__main__":
    sys.exit(main())

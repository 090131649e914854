"""The zipapp's attach time next to the installed package's (issue: one-file install).

    sudo .venv/bin/python -m bench.pyz [--runs 40] [--crashcart .venv/bin/crashcart]

`crashcart NAME -- true` on one docker distroless container, interleaved in random order:
the installed console script, and build/bench/crashcart.pyz (scripts/build-pyz, #! the same
/usr/bin/python3) run directly and as `python3 -I -S crashcart.pyz` (no site: what a bare
node gives). P1 (bench/p1.py) runs the same pyz case as `crashcart/docker-pyz`.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
from pathlib import Path

from bench import procs
from bench.containers import Fleet
from bench.env import CRASHCART, REPO
from bench.stats import summary

PYZ = REPO / "build" / "bench" / "crashcart.pyz"
PYTHON = "/usr/bin/python3"


def build_pyz(output: Path = PYZ) -> Path:
    subprocess.run([PYTHON, str(REPO / "scripts" / "build-pyz"), "-o", str(output), "--python",
                    PYTHON], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--crashcart", default=str(CRASHCART), help="the installed command")
    parser.add_argument("--image", default="/var/lib/crashcart/crashcart-minimal.img")
    args = parser.parse_args()
    pyz = str(build_pyz())
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CRASHCART_IMAGE": args.image}
    fleet = Fleet()
    try:
        c = fleet.start("docker", "distroless", "pyz-dl")
        cases = {
            "installed package": [args.crashcart, c.name, "--", "true"],
            "crashcart.pyz": [pyz, c.name, "--", "true"],
            "python3 -I -S crashcart.pyz": [PYTHON, "-I", "-S", pyz, c.name, "--", "true"],
        }
        walls: dict[str, list[float]] = {k: [] for k in cases}
        rng = random.Random(1)
        for i in range(args.runs + 3):
            order = list(cases)
            rng.shuffle(order)
            for key in order:
                res = procs.run(cases[key], env, timeout=60)
                if not res.ok:
                    print(f"{key}: exit {res.code}: {res.stderr[-300:]}", file=sys.stderr)
                elif i >= 3:
                    walls[key].append(res.wall_ms)
        print(f"attach + true, docker distroless, {args.runs} interleaved runs each")
        for key, values in walls.items():
            s = summary(values)
            print(f"  {key:30} median {s['median']:.1f} ms  p95 {s['p95']:.1f} ms")
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

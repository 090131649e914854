"""P5: crashcart's peak RSS and CPU time per attach.

The rusage that P1 gets from wait4 is right for CPU time but not for the peak RSS: a child
started by posix_spawn (vfork) or fork starts out in this harness's address space, and the
kernel keeps that mm's high-water mark at exec (ru_maxrss would read >= the harness's own ~25
MB for every command, `true` included). So every command here runs under GNU time
(/usr/bin/time, ~1 MB itself), whose wait4 sees a child forked from a small process: %M is
then the largest RSS of crashcart, its session supervisor and the command.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench import procs
from bench.env import CRASHCART, VENV, log
from bench.stats import summary
from tests.testbed import runtimes as tb
from tests.testbed.runtimes import Container

TIME = "/usr/bin/time"


@dataclass
class Case:
    key: str
    label: str
    argv: list[str]
    kind: str  # crashcart or baseline
    samples: list[dict[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def available() -> str | None:
    """None when GNU time is there, else why P5 is skipped."""
    if not os.access(TIME, os.X_OK):
        return f"{TIME} not installed (Debian package `time`)"
    return None


def build_cases(distroless: Container, busybox: Container | None) -> list[Case]:
    cc = str(CRASHCART)
    name = distroless.name
    cases = [
        Case("crashcart/docker", "crashcart NAME -- true", [cc, name, "--", "true"], "crashcart"),
        Case("crashcart-m", "crashcart -m NAME", [cc, "-m", name], "crashcart"),
        Case("crashcart-u", "crashcart -u NAME", [cc, "-u", name], "crashcart"),
        Case("crashcart-version", "crashcart --version", [cc, "--version"], "diagnostic"),
        Case(
            "python-venv",
            "venv python -c pass",
            [str(VENV / "bin" / "python"), "-c", "pass"],
            "diagnostic",
        ),
        Case(
            "python-bare",
            "python3 -I -S -c pass",
            ["/usr/bin/python3", "-I", "-S", "-c", "pass"],
            "diagnostic",
        ),
    ]
    if busybox is not None:
        cases.append(
            Case(
                "docker-exec",
                "docker exec NAME true (CLI only)",
                [tb.DOCKER, "exec", busybox.name, "true"],
                "baseline",
            )
        )
        nsenter = shutil.which("nsenter") or "nsenter"
        cases.append(
            Case(
                "nsenter",
                "nsenter -a -t PID true",
                [nsenter, "-a", "-t", str(busybox.pid), "true"],
                "baseline",
            )
        )
    return cases


def run(cases: list[Case], runs: int, env: Mapping[str, str], seed: int, tmp: str) -> None:
    rng = random.Random(seed)
    out = os.path.join(tmp, "time.out")
    for _ in range(runs):
        # -m and -u stay a pair, in that order; the others are shuffled around them.
        singles = [c for c in cases if c.key not in ("crashcart-m", "crashcart-u")]
        pair = [c for c in cases if c.key in ("crashcart-m", "crashcart-u")]
        order: list[list[Case]] = [[c] for c in singles] + ([pair] if pair else [])
        rng.shuffle(order)
        for group in order:
            for case in group:
                r = procs.run([TIME, "-o", out, "-f", "%M %U %S %e", *case.argv], env, err_dir=tmp)
                if not r.ok:
                    case.failures.append(f"exit {r.code}: {r.stderr[-300:]}")
                    continue
                with open(out) as f:
                    rss, user, sys_, wall = f.read().split()[-4:]
                case.samples.append(
                    {
                        "maxrss_kb": float(rss),
                        "user_ms": float(user) * 1e3,
                        "sys_ms": float(sys_) * 1e3,
                        "cpu_ms": (float(user) + float(sys_)) * 1e3,
                    }
                )
    log(f"P5: {runs} iterations")


def results(cases: list[Case]) -> dict[str, object]:
    out: dict[str, object] = {}
    for c in cases:
        out[c.key] = {
            "label": c.label,
            "kind": c.kind,
            "argv": c.argv,
            "maxrss_kb": summary([s["maxrss_kb"] for s in c.samples]),
            "cpu_ms": summary([s["cpu_ms"] for s in c.samples]),
            "user_ms": summary([s["user_ms"] for s in c.samples]),
            "sys_ms": summary([s["sys_ms"] for s in c.samples]),
            "runs": len(c.samples) + len(c.failures),
            "failures": len(c.failures),
            "failure_samples": c.failures[:3],
        }
    return {
        "cases": out,
        "note": "GNU time %M (largest RSS in the tree), %U+%S; 10 ms "
        "resolution for CPU under GNU time; P1's cpu_ms (wait4, us resolution) is finer",
    }

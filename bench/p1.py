"""P1: attach + `true`, crashcart against each runtime's own exec and nsenter, interleaved.

Every iteration runs every case once, in a fresh random order, so that load from other
work on the machine (and any drift: page cache, daemons' housekeeping) falls on all of them
alike; the first ``warmup`` iterations are not counted.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bench import procs
from bench.env import CRASHCART, VENV, log
from bench.stats import paired_ratio, summary
from tests.testbed import runtimes as tb
from tests.testbed.runtimes import Container

KINDS = ("crashcart", "baseline", "diagnostic")


@dataclass
class Case:
    key: str
    label: str
    kind: str  # crashcart, baseline (another tool) or diagnostic (explains crashcart's time)
    container: Container | None
    argv: Callable[[int], list[str]]
    env: Mapping[str, str]
    note: str = ""
    results: list[procs.Result] = field(default_factory=list)

    def walls(self) -> list[float | None]:
        return [r.wall_ms if r.ok else None for r in self.results]

    def ok_walls(self) -> list[float]:
        return [r.wall_ms for r in self.results if r.ok]

    def failures(self) -> list[procs.Result]:
        return [r for r in self.results if not r.ok]


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(name)
    return path


def build_cases(
    distroless: Mapping[str, Container],
    busybox: Mapping[str, Container],
    env: Mapping[str, str],
    nopyc_env: Mapping[str, str] | None,
    token: str,
    diagnostics: bool = True,
) -> list[Case]:
    cc = str(CRASHCART)
    cases: list[Case] = []

    def crashcart(
        c: Container,
        key: str,
        label: str,
        e: Mapping[str, str] = env,
        kind: str = "crashcart",
        extra: tuple[str, ...] = (),
        note: str = "",
    ) -> None:
        argv = [cc, *extra, c.name, "--", "true"]
        cases.append(Case(key, label, kind, c, lambda i, a=argv: list(a), e, note))

    for rt, c in distroless.items():
        crashcart(c, f"crashcart/{rt}", f"crashcart {rt} (distroless)")
    if "docker" in busybox:
        crashcart(busybox["docker"], "crashcart/docker-busybox", "crashcart docker (busybox)")
    if "docker" in distroless:  # the one-file install, same interpreter (bench/pyz.py)
        from bench.pyz import build_pyz

        pyz = [str(build_pyz()), distroless["docker"].name, "--", "true"]
        cases.append(
            Case(
                "crashcart/docker-pyz",
                "crashcart.pyz docker (distroless)",
                "crashcart",
                distroless["docker"],
                lambda i, a=pyz: list(a),
                env,
                "scripts/build-pyz",
            )
        )
    if nopyc_env is not None and "docker" in distroless:
        crashcart(
            distroless["docker"],
            "crashcart/docker-nopyc",
            "crashcart docker, no .pyc",
            nopyc_env,
            kind="diagnostic",
            note="package copy without __pycache__ first on PYTHONPATH",
        )

    def base(c: Container, key: str, label: str, argv: Callable[[int], list[str]]) -> None:
        cases.append(Case(key, label, "baseline", c, argv, env, "busybox container"))

    if "docker" in busybox:
        c = busybox["docker"]
        base(c, "docker-exec", "docker exec", lambda i, n=c.name: [tb.DOCKER, "exec", n, "true"])
    if "podman" in busybox:
        c = busybox["podman"]
        podman = _which("podman")
        base(c, "podman-exec", "podman exec", lambda i, n=c.name: [podman, "exec", n, "true"])
    if "containerd" in busybox:
        c = busybox["containerd"]
        ctr = _which("ctr")
        base(
            c,
            "ctr-exec",
            "ctr task exec",
            lambda i, c=c: [
                ctr,
                "-n",
                c.namespace or tb.CTR_NAMESPACE,
                "task",
                "exec",
                "--exec-id",
                f"bench-{token}-{i}",
                c.id,
                "true",
            ],
        )
    if "runc" in busybox:
        c = busybox["runc"]
        runc = _which("runc")
        base(c, "runc-exec", "runc exec", lambda i, n=c.id: [runc, "exec", n, "true"])
    if busybox:
        c = busybox.get("docker") or next(iter(busybox.values()))
        nsenter = _which("nsenter")
        base(
            c,
            "nsenter",
            "nsenter -a (floor)",
            lambda i, p=c.pid: [nsenter, "-a", "-t", str(p), "true"],
        )

    if diagnostics:
        py = str(VENV / "bin" / "python")
        for key, label, argv, note in (
            (
                "python-bare",
                "python3 -I -S -c pass",
                ["/usr/bin/python3", "-I", "-S", "-c", "pass"],
                "the interpreter alone",
            ),
            (
                "python-venv",
                "venv python -c pass",
                [py, "-c", "pass"],
                "interpreter + site + the venv's .pth files (editable finder)",
            ),
            (
                "crashcart-version",
                "crashcart --version",
                [cc, "--version"],
                "console script + crashcart.cli, no attach",
            ),
        ):
            cases.append(Case(key, label, "diagnostic", None, lambda i, a=argv: list(a), env, note))
        if "docker" in distroless:
            crashcart(
                distroless["docker"],
                "crashcart/docker-nocgroup",
                "crashcart docker --no-cgroup",
                kind="diagnostic",
                extra=("--no-cgroup",),
                note="same as crashcart/docker without joining the target's cgroups",
            )
    return cases


def run(cases: list[Case], runs: int, warmup: int, seed: int, err_dir: str) -> None:
    rng = random.Random(seed)
    total = warmup + runs
    for i in range(total):
        order = cases[:]
        rng.shuffle(order)
        for case in order:
            res = procs.run(case.argv(i), case.env, err_dir=err_dir, timeout=60)
            if i >= warmup:
                case.results.append(res)
            if not res.ok and (i < warmup or len(case.failures()) <= 2):
                log(f"P1 {case.key}: exit {res.code}: {res.stderr[-300:]}")
        if (i + 1) % 10 == 0 or i + 1 == total:
            log(f"P1: {i + 1}/{total} iterations ({warmup} warm-up)")


PAIRS = (
    ("crashcart/docker", "docker-exec"),
    ("crashcart/docker-busybox", "docker-exec"),
    ("crashcart/podman", "podman-exec"),
    ("crashcart/containerd", "ctr-exec"),
    ("crashcart/runc", "runc-exec"),
    ("crashcart/docker", "nsenter"),
    ("crashcart/docker", "crashcart/docker-nopyc"),
    ("crashcart/docker-pyz", "crashcart/docker"),
    ("crashcart/docker-nocgroup", "crashcart/docker"),
)


def results(cases: list[Case]) -> dict[str, object]:
    by_key = {c.key: c for c in cases}
    out_cases = {}
    for c in cases:
        ok = [r for r in c.results if r.ok]
        out_cases[c.key] = {
            "label": c.label,
            "kind": c.kind,
            "note": c.note,
            "argv": c.argv(0),
            "container": None
            if c.container is None
            else {
                "runtime": c.container.runtime,
                "image": c.container.image,
                "name": c.container.name,
                "pid": c.container.pid,
            },
            "wall_ms": summary([r.wall_ms for r in ok]),
            "cpu_ms": summary([r.cpu_ms for r in ok]),
            "user_ms": summary([r.user_ms for r in ok]),
            "sys_ms": summary([r.sys_ms for r in ok]),
            "runs": len(c.results),
            "failures": len(c.results) - len(ok),
            "failure_samples": [f"exit {r.code}: {r.stderr[-300:]}" for r in c.failures()[:3]],
            "samples_ms": [round(r.wall_ms, 3) if r.ok else None for r in c.results],
        }
    ratios = {}
    for a, b in PAIRS:
        if a in by_key and b in by_key:
            ratios[f"{a} / {b}"] = paired_ratio(by_key[a].walls(), by_key[b].walls())
    return {"cases": out_cases, "ratios": ratios}

"""P1 for Kubernetes pods: attach to a pod's container and run `true`, against the exec that
`kubectl exec` ends up running on a containerd node (`ctr -n k8s.io task exec`).

One real CRI pod (tests/testbed/cri.py plays the kubelet): a distroless server and a busybox
sidecar; crashcart attaches to both by k8s://NS/POD/CONTAINER (the pod look-up reads the
CRI's bundles on every run), `ctr task exec` and the nsenter floor run `true` in the
sidecar, the only container with a `true`. Interleaved like bench/p1.py: each iteration runs
every case once in a fresh random order; the first ``--warmup`` iterations are not counted.

    sudo .venv/bin/python -m bench.k8s [-n 50] [--crashcart PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from collections.abc import Callable

from bench import procs
from bench.env import CRASHCART, exclusive, log
from bench.stats import paired_ratio, summary
from tests.testbed import cri


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(name)
    return path  # posix_spawn does not search PATH


def cases(pod: cri.Pod, crashcart: str) -> dict[str, Callable[[int], list[str]]]:
    side = pod["side"]
    ctr, nsenter = _which("ctr"), _which("nsenter")
    return {
        "crashcart k8s://NS/POD/app -- true (distroless)": lambda i: [
            crashcart, pod.target("app"), "--", "true"],
        "crashcart k8s://NS/POD/side -- true (busybox)": lambda i: [
            crashcart, pod.target("side"), "--", "true"],
        "crashcart containerd://k8s.io/ID -- true (busybox, by ID)": lambda i: [
            crashcart, f"containerd://k8s.io/{side.id}", "--", "true"],
        "ctr -n k8s.io task exec ... true (busybox)": lambda i: [
            ctr, "-n", "k8s.io", "task", "exec", "--exec-id", f"bench-{os.getpid()}-{i}",
            side.id, "true"],
        "nsenter -a -t PID true (the floor)": lambda i: [
            nsenter, "-a", "-t", str(side.pid), "true"],
    }  # fmt: skip


def measure(pod: cri.Pod, crashcart: str, n: int, warmup: int) -> dict[str, list[float | None]]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    env["CRASHCART_IMAGE"] = os.environ.get("CRASHCART_IMAGE", "/var/lib/crashcart/crashcart.img")
    table = cases(pod, crashcart)
    walls: dict[str, list[float | None]] = {k: [] for k in table}
    for i in range(warmup + n):
        order = list(table)
        random.shuffle(order)
        for key in order:
            r = procs.run(table[key](i), env)
            if i >= warmup:
                walls[key].append(r.wall_ms if r.ok else None)
    return walls


def report(walls: dict[str, list[float | None]]) -> None:
    base = "ctr -n k8s.io task exec ... true (busybox)"
    print("| command | median | p95 | failures | ratio to ctr task exec (paired median) |")
    print("|---|---:|---:|---:|---:|")
    for key, values in walls.items():
        ok = [v for v in values if v is not None]
        s = summary(ok)
        ratio = paired_ratio(values, walls[base]) if key != base else {}
        r = f"{ratio['paired_median']:.2f}x" if ratio.get("n") else ""
        fails = len(values) - len(ok)
        print(
            f"| `{key}` | {s.get('median', 0):.1f} ms | {s.get('p95', 0):.1f} ms | {fails} | {r} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.k8s")
    parser.add_argument("-n", type=int, default=50, help="counted iterations (default 50)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--crashcart", default=str(CRASHCART), help="the installed command")
    args = parser.parse_args(argv)
    if not os.access(args.crashcart, os.X_OK):
        log(f"{args.crashcart} is not executable: run scripts/runtimes install first")
        return 1
    with exclusive():
        cri.check_host()
        cri.ensure_images()
        with cri.kubelet() as kubelet:
            sidecar = cri.ContainerSpec("side", "busybox", command=["/bin/sleep", "3600"])
            spec = cri.PodSpec(
                cri.pod_name("bench"), containers=[cri.ContainerSpec("app"), sidecar]
            )
            pod = kubelet.run_pod(spec)
            log(f"pod {pod.namespace}/{pod.name}: {args.n} iterations + {args.warmup} warm-up")
            walls = measure(pod, args.crashcart, args.n, args.warmup)
    print(f"load average after: {os.getloadavg()[0]:.2f}; crashcart: {args.crashcart}")
    report(walls)
    return 0


if __name__ == "__main__":
    sys.exit(main())

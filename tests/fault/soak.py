"""Soak: N attach/detach cycles with random kills, a leak check after every one.

    python -m tests.fault.soak -n 1000 [--seed S] [--runtimes docker,runc,...] [--json FILE]

Each cycle picks a container (one busybox container per runtime, started here and removed
at the end), a toolbox (the tiny static one as erofs or squashfs) and one of:

- a session that runs to its end (`true`, or a command with a background job);
- a session SIGKILLed at a random fault point (host side, setup steps, before exec);
- a session whose crashcart gets SIGKILL, SIGTERM, SIGINT or SIGHUP mid-command, or
  whose supervisor is SIGKILLed;
- -m killed at a random point (or not), then `cleanup` (or -u);
- -e killed after its mount or mid-command (or not), then `cleanup`;
- -m then -u killed after its detach, then `cleanup`;

and then checks that the container, its files and mounts, the host's mounts and loop
devices and the crashcart processes are exactly as before (tests.fault.kit.leaks, which
waits up to --settle seconds for teardown that finishes asynchronously). A leak is
reported with its cycle, seed and action; the run goes on from a fresh baseline.
Exit status: 0 with no leak and no unexpected exit status, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests import ccrun
from tests.fault import kit
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.runtimes import Container

SESSION_FAULTS = [
    "session:before-fork", "session:after-fork", "session:child-start",
    "session:after-clone_target_proc", "session:after-join_namespaces",
    "session:after-clone_target_root", "session:after-private_mount_namespace",
    "session:after-pivot_to_toolbox", "session:after-attach_target",
    "session:after-attach_proc", "session:after-build_dev", "session:after-bind_sys",
    "session:after-mount_tmp", "session:after-setup", "session:after-set_credentials",
]  # fmt: skip
MOUNT_FAULTS = ["mount:after-record", "mount:after-mkdir", "mount:after-attach"]
PYTHON_STARTUP = ("Could not import runpy module", "Fatal Python error: init_import_site")
SIGNALS: list[int | str] = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP]


def target(c: Container) -> str:
    if c.runtime == "containerd":
        return f"containerd://{c.namespace}/{c.id}"
    return f"{c.runtime}://{c.name}"


class Unexpected(Exception):
    """A run ended in a way no phase of the fault model allows."""


@dataclass
class Cycle:
    rng: random.Random
    c: Container
    image: str
    log: list[str] = field(default_factory=list)

    def run(self, *args: str, fault: str | None = None, expect: tuple[int, ...] = (0,)) -> int:
        p = kit.popen(*args, fault=fault, image=self.image)
        status, err = kit.finish(p, timeout=120)
        self.log.append(f"{' '.join(args)} [{fault}] -> {status}")
        if status not in expect or "Traceback" in err or "internal error" in err:
            raise Unexpected(f"{' '.join(args)} (fault {fault}): status {status}: {err.strip()}")
        return status

    def cleanup(self) -> None:
        self.run("cleanup")

    # --- actions ---------------------------------------------------------------------------

    def session_ok(self) -> None:
        cmd = self.rng.choice([["true"], ["sh", "-c", "sleep 0.2 & echo hi"]])
        self.run(target(self.c), "--", *cmd)

    def session_fault(self) -> None:
        point = self.rng.choice(SESSION_FAULTS)
        self.run(target(self.c), "--", "true", fault=point, expect=(-9, 125))

    def session_signal(self) -> None:
        p = kit.popen(target(self.c), "--", "sh", "-c", "sleep 31 & sleep 32", image=self.image)
        delay = self.rng.uniform(0, 0.6)
        time.sleep(delay)
        how = self.rng.choice([*SIGNALS, "supervisor"])
        if isinstance(how, int):
            p.send_signal(how)
        else:
            for pid in kit.supervisors(self.c):
                kit.kill(pid)
        status, err = kit.finish(p, timeout=60)
        self.log.append(f"session killed by {how} after {delay:.2f}s -> {status}")
        if err.startswith(PYTHON_STARTUP):
            return  # SIGINT while the interpreter itself started: not crashcart's yet
        if "Traceback" in err or "internal error" in err:
            raise Unexpected(err)

    def mount(self) -> None:
        point = self.rng.choice([None, *MOUNT_FAULTS])
        self.run("-m", target(self.c), fault=point, expect=(-9,) if point else (0,))
        if point or self.rng.random() < 0.5:
            self.cleanup()
        else:
            self.run("-u", target(self.c))

    def exec(self) -> None:
        how = self.rng.choice(["none", "after-mount", "mid-command"])
        if how == "none":
            self.run("-e", target(self.c), "--", "/dev/crashcart/bin/true")
            return
        if how == "after-mount":
            self.run("-e", target(self.c), "--", "true", fault="exec:after-mount", expect=(-9,))
        else:
            p = kit.popen("-e", target(self.c), "--", "/dev/crashcart/bin/sleep", "0.5",
                          image=self.image)  # fmt: skip
            time.sleep(self.rng.uniform(0, 0.4))
            kit.kill(p.pid)
            p.wait(60)
            time.sleep(0.6)  # the runtime's own process runs its course
        self.cleanup()

    def unmount_killed(self) -> None:
        self.run("-m", target(self.c))
        self.run("-u", target(self.c), fault="unmount:after-detach", expect=(-9,))
        self.cleanup()


ACTIONS: dict[str, Callable[[Cycle], None]] = {
    "session-ok": Cycle.session_ok,
    "session-fault": Cycle.session_fault,
    "session-signal": Cycle.session_signal,
    "mount": Cycle.mount,
    "exec": Cycle.exec,
    "unmount-killed": Cycle.unmount_killed,
}


def soak(
    n: int, seed: int, rts: list[str], settle: float, out: Callable[[str], None]
) -> dict[str, Any]:
    rng = random.Random(seed)
    images = [str(kit.tiny_toolbox("erofs")), str(kit.tiny_toolbox("squashfs"))]
    containers = [runtimes.start(rt, "busybox", name=runtimes.new_name(f"soak-{rt}"))
                  for rt in rts]  # fmt: skip
    report: dict[str, Any] = {"n": n, "seed": seed, "runtimes": rts, "leaks": [], "unexpected": [],
                    "actions": {}}  # fmt: skip
    t0 = time.monotonic()
    try:
        for i in range(n):
            cycle = Cycle(rng, rng.choice(containers), rng.choice(images))
            name = rng.choice(list(ACTIONS))
            report["actions"][name] = report["actions"].get(name, 0) + 1
            before = lc.snapshot(cycle.c)
            try:
                ACTIONS[name](cycle)
            except (Unexpected, subprocess.TimeoutExpired, TimeoutError) as e:
                report["unexpected"].append({"cycle": i, "action": name, "error": str(e)})
                out(f"cycle {i} {name}: UNEXPECTED {e}")
                subprocess.run(ccrun.argv("cleanup"), env=ccrun.env(), cwd=ccrun.REPO,
                               capture_output=True)  # fmt: skip
            found = kit.leaks(before, settle)
            if found:
                report["leaks"].append({"cycle": i, "action": name, "runtime": cycle.c.runtime,
                                        "log": cycle.log, "leak": found})  # fmt: skip
                out(f"cycle {i} {name} on {cycle.c.runtime}: LEAK\n  " + "\n  ".join(found))
            if (i + 1) % 50 == 0:
                out(f"{i + 1}/{n} cycles, {len(report['leaks'])} leaks, "
                    f"{time.monotonic() - t0:.0f}s")  # fmt: skip
    finally:
        for c in containers:
            runtimes.remove_by_name(c.runtime, c.name)
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fault.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("-n", type=int, default=100, help="cycles (default 100)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--runtimes", default="docker,podman,containerd,runc")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds a teardown may take")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: its containers are removed on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rts = [rt for rt in args.runtimes.split(",") if runtimes.unavailable_reason(rt) is None]
    if not rts:
        print("soak: no runtime available", file=sys.stderr)
        return 1
    report = soak(args.n, seed, rts, args.settle, lambda s: print(s, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(f"soak: {args.n} cycles (seed {seed}, {', '.join(rts)}) in {report['seconds']}s: "
          f"{len(report['leaks'])} leaks, {len(report['unexpected'])} unexpected; "
          f"actions {report['actions']}")  # fmt: skip
    return 1 if report["leaks"] or report["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())

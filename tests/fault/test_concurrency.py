"""Many crashcart runs at once: fifty sessions against ten containers of four runtimes, and
-e, -m and -u racing on one target. Every run succeeds or fails with one clear line, and
the final state is consistent: no leak anywhere, and a toolbox that is mounted exactly
when something still holds it."""

from __future__ import annotations

import contextlib
import random
import time

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container, ContainerFactory

MIX = ["runc"] * 4 + ["containerd"] * 3 + ["docker"] * 2 + ["podman"]


def test_fifty_sessions_against_ten_containers(
    start_container: ContainerFactory, tiny: str, tiny_squashfs: str, leakcheck: lc.LeakCheckFn
) -> None:
    containers = [start_container(rt, "busybox") for rt in MIX]
    script = "echo $CRASHCART_TARGET_ID; wc -l < /target/etc/passwd; ls /proc | wc -l; sleep 0.3"
    with contextlib.ExitStack() as stack:
        for c in containers:
            stack.enter_context(leakcheck(c, settle=5))
        runs = []
        for i in range(50):
            c = containers[i % len(containers)]
            image = tiny_squashfs if i % 3 == 0 else tiny  # a third through loop devices
            runs.append((c, kit.popen(target(c), "--", "sh", "-c", script, image=image)))
        results = [(c, *p.communicate(timeout=120), p.returncode) for c, p in runs]
    for c, out, err, code in results:
        assert code == 0, (c.name, err)
        assert out.split()[0].decode() == c.id, (c.id, out)
        assert out.split()[1] == b"3", out  # the busybox fixture's passwd


def test_exec_runs_at_once_leave_no_toolbox(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """Six -e at once, no -m: whoever mounted it, the last one out removes it."""
    with leakcheck(shared, settle=5):
        runs = [kit.popen("-e", target(shared), "--", "/dev/crashcart/bin/sleep", "0.5",
                          image=tiny) for _ in range(6)]  # fmt: skip
        results = [(*p.communicate(timeout=120), p.returncode) for p in runs]
        assert all(code == 0 for _, _, code in results), results
        assert not kit.mounted(shared)


def test_unmount_mount_and_exec_racing_end_consistent(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    rng = random.Random(6)
    ops = ["-e"] * 8 + ["-u"] * 8 + ["-m"] * 3
    rng.shuffle(ops)
    with leakcheck(shared, settle=5):
        runs = []
        for op in ops:
            args = [op, target(shared)]
            if op == "-e":
                args += ["--", "/dev/crashcart/bin/sleep", "0.4"]
            runs.append((op, kit.popen(*args, image=tiny)))
            time.sleep(rng.uniform(0, 0.15))
        results = [(op, *p.communicate(timeout=120), p.returncode) for op, p in runs]
        for op, _, err, code in results:
            text = err.decode()
            assert "Traceback" not in text and "internal error" not in text, (op, text)
            if op == "-u" and code != 0:
                assert code == 125 and "in use by" in text, (op, text)
            else:
                assert code == 0, (op, text)
        # Consistent: mounted (a -m came after the last -u) with a record and no live
        # lease, or nothing at all; either way one -u leaves nothing.
        status = ccrun.run("status", "--json")
        if kit.mounted(shared):
            assert shared.name.encode() in status.stdout and b'"exec_users": []' in status.stdout
        else:
            assert shared.name.encode() not in status.stdout, status.stdout
        final = ccrun.run("-u", target(shared))
        assert final.returncode == 0, final.stderr

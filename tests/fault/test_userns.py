"""A container with its own user namespace (podman --uidmap, containerd and runc with a
user namespace in their spec): session and sideload both work, leave nothing, and act
as the container's root, never as an unmapped host root."""

from __future__ import annotations

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.runtimes import ContainerFactory


@pytest.mark.parametrize("runtime", ["podman", "containerd", "runc"])
def test_session_and_sideload_in_a_user_namespace(
    start_container: ContainerFactory, runtime: str, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    c = start_container(runtime, "busybox", userns=True)
    with leakcheck(c, settle=5):
        session = ccrun.run(target(c), "--", "sh", "-c", "id -u; cat /proc/self/uid_map",
                            image=tiny)  # fmt: skip
        exec_ = ccrun.run("-e", target(c), "--", "/dev/crashcart/bin/id", "-u", image=tiny)
        mount = ccrun.run("-m", target(c), image=tiny)
        owner = kit.in_container(c, ["stat", "-c", "%u", "/dev"])
        unmount = ccrun.run("-u", target(c))
    assert session.returncode == 0, session.stderr
    out = ccrun.text(session).split()
    assert out[:4] == ["0", "0", str(runtimes.USERNS_HOST_ID), str(runtimes.USERNS_SIZE)], out
    # /dev is a tmpfs of the container's user namespace: crashcart makes its mount point as
    # the container's root (a host root it cannot map gets EOVERFLOW).
    assert exec_.returncode == 0 and exec_.stdout == b"0\n", exec_.stderr
    assert mount.returncode == 0 and unmount.returncode == 0, (mount.stderr, unmount.stderr)
    assert owner.strip() == "0"

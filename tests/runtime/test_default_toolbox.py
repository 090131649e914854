"""The default toolbox on a real distroless container: every tool of the recipe works, in
session mode and in sideload mode (through the runtime's own exec)."""

from __future__ import annotations

import os
import re

import pytest

from tests import ccrun
from tests.runtime.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.require import missing
from tests.testbed.runtimes import ContainerFactory


@pytest.fixture(scope="module")
def default_toolbox() -> str:
    path = os.environ.get("CRASHCART_TEST_DEFAULT_IMAGE", "/var/lib/crashcart/crashcart.img")
    if not os.path.exists(path):
        missing(f"no default toolbox at {path}: crashcart image build --recipe default")
    return path


def _tally(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+)/(\d+) tools work", out)
    assert m, out
    return int(m.group(1)), int(m.group(2))


def test_check_tools_in_a_session_and_through_docker_exec(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, default_toolbox: str
) -> None:
    c = start_container("docker", "distroless")
    with leakcheck(c):
        session = ccrun.run(target(c), "--", "check-tools", image=default_toolbox, timeout=300)
        assert ccrun.run("-m", target(c), image=default_toolbox).returncode == 0
        sideload = runtimes.exec_in(c, ["/dev/crashcart/shell", "check-tools"], timeout=300)
        assert ccrun.run("-u", target(c)).returncode == 0
    ok, total = _tally(ccrun.text(session))
    assert session.returncode == 0 and ok == total >= 40, ccrun.text(session)
    ok, total = _tally(sideload.stdout)
    assert sideload.returncode == 0 and ok == total >= 40, sideload.stdout + sideload.stderr


def test_the_demo_commands(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, default_toolbox: str
) -> None:
    """What scripts/demo shows: a tcpdump of one request inside the container's netns."""
    c = start_container("docker", "distroless")
    script = (
        "tcpdump -i lo -nn -c 4 -l 'tcp port 8080' 2>/dev/null & sleep 1; "
        "curl -s -o /dev/null -w 'HTTP %{http_code}\\n' http://127.0.0.1:8080/; wait"
    )
    with leakcheck(c):
        proc = ccrun.run(target(c), "--", "bash", "-c", script, image=default_toolbox)
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    assert "HTTP 200" in out and "127.0.0.1.8080" in out, out

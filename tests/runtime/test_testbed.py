"""The test bed itself, against the real runtimes: the fixture containers are what they claim
to be, their server answers inside their own network namespace only, the leak checker sees a
real leak, and nothing is left after teardown."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.testbed import images, runtimes
from tests.testbed import leakcheck as lc
from tests.testbed.require import require_runtime
from tests.testbed.runtimes import Container, ContainerFactory

pytestmark = pytest.mark.runtime

REPO = Path(__file__).resolve().parents[2]
NOT_FOUND = re.compile(r"not found|no such file", re.IGNORECASE)

# Runs on the host's python inside the container's network namespace (nsenter -n only: the
# mount namespace stays the host's). Loopback only, bounded retries.
HTTP_CLIENT = textwrap.dedent(
    """
    import socket, sys, time
    deadline = time.monotonic() + 5
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", 8080), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    s.sendall(b"GET / HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(4096):
        data += chunk
    sys.stdout.write(data.decode())
    """
)


def http_get_in_netns(pid: int) -> str:
    """GET http://127.0.0.1:8080/ from inside the network namespace of ``pid``."""
    proc = runtimes.run(["nsenter", "-t", str(pid), "-n", sys.executable, "-c", HTTP_CLIENT])
    return proc.stdout


def host_network() -> tuple[str, list[str]]:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text(), sorted(os.listdir("/sys/class/net"))


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_exec_shell_fails_in_distroless_and_works_in_busybox(
    start_container: ContainerFactory, runtime: str
) -> None:
    distroless = start_container(runtime, "distroless")
    busybox = start_container(runtime, "busybox")

    r = runtimes.exec_in(distroless, ["sh", "-c", "echo reached"])
    assert r.returncode != 0, f"{runtime} exec sh in distroless succeeded: {r.stdout!r}"
    assert NOT_FOUND.search(r.stdout + r.stderr), r.stdout + r.stderr
    assert "reached" not in r.stdout

    r = runtimes.exec_in(
        busybox, ["sh", "-c", "echo reached from $(cat /etc/os-release | head -1)"]
    )
    assert r.returncode == 0, r.stderr
    assert 'reached from NAME="crashcart-test busybox"' in r.stdout


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_musl_image_has_a_shell_and_no_glibc(
    start_container: ContainerFactory, runtime: str
) -> None:
    c = start_container(runtime, "musl")
    r = runtimes.exec_in(c, ["sh", "-c", "ls /lib; cat /etc/os-release"])
    assert r.returncode == 0, r.stderr
    assert "ld-musl-x86_64.so.1" in r.stdout
    assert "ID_LIKE=alpine" in r.stdout
    files = lc.list_tree(Path(f"/proc/{c.pid}/root"), frozenset({"/proc", "/sys"}))
    glibc = [p for p in files if re.search(r"/(libc\.so\.6|ld-linux[^/]*)$", p)]
    assert glibc == []
    # The server runs through the musl loader: it is mapped into the main process.
    maps = Path(f"/proc/{c.pid}/maps").read_text()
    assert "/lib/ld-musl-x86_64.so.1" in maps


def test_server_answers_inside_its_own_netns_only(any_container: Container) -> None:
    c = any_container
    body = http_get_in_netns(c.pid)
    assert body.startswith("HTTP/1.") and " 200 " in body.splitlines()[0], body
    assert f"crashcart-test {c.image}" in body
    # Its own network namespace, with nothing in it but loopback.
    assert os.stat(f"/proc/{c.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino
    devices = [
        line.split(":")[0].strip()
        for line in Path(f"/proc/{c.pid}/net/dev").read_text().splitlines()[2:]
    ]
    assert devices == ["lo"]


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_starting_containers_leaves_host_network_alone(
    start_container: ContainerFactory, runtime: str
) -> None:
    before = host_network()
    c = start_container(runtime, "busybox")
    http_get_in_netns(c.pid)
    assert host_network() == before


def test_read_only_container_has_read_only_root(readonly_container: Container) -> None:
    c = readonly_container
    root = [
        m
        for m in lc.parse_mountinfo(Path(f"/proc/{c.pid}/mountinfo").read_text())
        if m.mountpoint == "/"
    ]
    assert root and root[-1].options.split("|")[0].split(",")[0] == "ro", root
    assert "crashcart-test" in http_get_in_netns(c.pid)


def test_userns_container_maps_root(userns_container: Container) -> None:
    c = userns_container
    uid_map = Path(f"/proc/{c.pid}/uid_map").read_text().split()
    assert uid_map == ["0", str(runtimes.USERNS_HOST_ID), str(runtimes.USERNS_SIZE)]
    assert os.stat(f"/proc/{c.pid}/ns/user").st_ino != os.stat("/proc/self/ns/user").st_ino
    assert "crashcart-test" in http_get_in_netns(c.pid)


def _mount_tmpfs(pid: int, where: str) -> None:
    # mount -N runs the host's mount(8) with only the mount namespace switched, so it works
    # in a container without a mount binary (distroless).
    runtimes.run(["mount", "-n", "-N", f"/proc/{pid}/ns/mnt", "-t", "tmpfs", "cc-leakcheck", where])


def _umount(pid: int, where: str) -> None:
    runtimes.run(["umount", "-n", "-N", f"/proc/{pid}/ns/mnt", where])


def test_leakcheck_sees_a_mount_left_in_the_container(any_container: Container) -> None:
    c = any_container
    before = lc.snapshot(c)
    lc.check(before, lc.snapshot(c))  # nothing changed yet
    _mount_tmpfs(c.pid, "/tmp")
    try:
        with pytest.raises(AssertionError) as err:
            lc.check(before, lc.snapshot(c))
        report = str(err.value)
        assert "container mounts:" in report
        assert re.search(r"^  \+ /tmp tmpfs cc-leakcheck ", report, re.MULTILINE), report
        assert "host mounts" not in report  # the host never saw it
    finally:
        _umount(c.pid, "/tmp")
    lc.check(before, lc.snapshot(c))


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_leakcheck_fixture_fails_a_leaky_block(
    start_container: ContainerFactory, leakcheck: lc.LeakCheckFn, runtime: str
) -> None:
    c = start_container(runtime, "distroless")
    with pytest.raises(AssertionError, match=r"\+ /tmp tmpfs cc-leakcheck"):
        try:
            with leakcheck(c, settle=0.2):
                _mount_tmpfs(c.pid, "/tmp")
        finally:
            _umount(c.pid, "/tmp")
    with leakcheck(c):
        _mount_tmpfs(c.pid, "/tmp")
        _umount(c.pid, "/tmp")


def test_leakcheck_sees_stray_processes(start_container: ContainerFactory) -> None:
    c = start_container("runc", "busybox")
    before = lc.snapshot(c)
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "crashcart-leak-probe"]
    )
    inside = subprocess.Popen(["nsenter", "-t", str(c.pid), "-a", "/bin/busybox", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while True:
            lines = lc.diff(before, lc.snapshot(c))
            text = "\n".join(lines)
            if "busybox sleep 60" in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert f"pid {stray.pid}: " in text and "crashcart-leak-probe" in text, text
        assert "new processes in the container:" in text and "busybox sleep 60" in text, text
    finally:
        for p in lc.pidns_procs(c.pid) - before.container_procs:
            os.kill(p.pid, signal.SIGKILL)  # the sleep we started inside
        stray.kill()
        stray.wait()
        inside.wait(timeout=10)
    lc.check(before, lc.snapshot(c))


def _host_mounts() -> set[lc.Mount]:
    return set(lc.parse_mountinfo(Path("/proc/self/mountinfo").read_text()))


@pytest.mark.parametrize("runtime", runtimes.RUNTIMES)
def test_remove_leaves_nothing(runtime: str) -> None:
    require_runtime(runtime)
    before = _host_mounts()
    c = runtimes.start(runtime, "busybox", name=runtimes.new_name(f"remove-{runtime}"))
    try:
        # docker, podman and containerd mount the container's rootfs on the host; runc
        # mounts only inside the container's own mount namespace.
        made = _host_mounts() - before
    finally:
        runtimes.remove(c)
    assert not runtimes.exists(runtime, c.name)
    assert not Path(f"/proc/{c.pid}").exists() or "Z" in Path(f"/proc/{c.pid}/stat").read_text()
    assert not runtimes.workdir(c.name).exists()
    assert (runtime == "runc") == (not made), made
    assert made & _host_mounts() == set(), "host mounts outlived the container"


def test_containers_are_removed_when_a_test_fails(tmp_path: Path) -> None:
    require_runtime(*runtimes.RUNTIMES)
    record = tmp_path / "started.json"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            import json
            RUNTIMES = {runtimes.RUNTIMES!r}

            def test_fails(start_container):
                started = [start_container(rt, "busybox") for rt in RUNTIMES]
                with open({str(record)!r}, "w") as f:
                    json.dump([[c.runtime, c.name, c.pid] for c in started], f)
                assert False, "deliberate failure"
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider"]
        + [str(tmp_path / "test_inner.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "deliberate failure" in proc.stdout, proc.stdout + proc.stderr
    started = json.loads(record.read_text())
    assert sorted(rt for rt, _, _ in started) == sorted(runtimes.RUNTIMES)
    for rt, name, pid in started:
        assert not runtimes.exists(rt, name), f"{rt} container {name} survived a failing test"
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or not Path(f"/proc/{pid}/cmdline").read_bytes()
        )


def test_images_are_loaded_once(fixture_images: dict[str, images.BuiltImage]) -> None:
    require_runtime("docker", "podman", "containerd")
    for rt in ("docker", "podman", "containerd"):
        for img in fixture_images.values():
            runtimes.load_image(rt, img)
            assert runtimes.load_image(rt, img) is False  # already there: nothing to do
            want = img.manifest_digest if rt == "containerd" else img.config_digest
            assert runtimes.loaded_image_id(rt, img.name) == want

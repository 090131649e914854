"""Session mode against a runtime-less "container" (unshare + chroot), on the real kernel,
with toolbox images in every format: erofs straight from the file, squashfs and ext4 via
autoclear loop devices. Nothing may stay behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from crashcart.linux import loop
from tests import ccrun
from tests.kernel.conftest import Jail


@pytest.mark.parametrize("fmt", ["erofs", "squashfs", "ext4"])
def test_session_in_a_chroot_jail(jail: Jail, tiny_toolboxes: dict[str, Path], fmt: str) -> None:
    if fmt not in tiny_toolboxes:
        pytest.skip(f"no mkfs for {fmt}")
    before_mounts, before_loops = jail.mountinfo(), loop.bound_devices()
    proc = ccrun.run(f"pid://{jail.pid}", "--", "sh", "-c",
                     "ps; ls /target; readlink /proc/1/exe; cat /target/etc/passwd; "
                     "grep -c ' /dev/crashcart ' /proc/self/mountinfo; exit 3",
                     image=str(tiny_toolboxes[fmt]))  # fmt: skip
    out = ccrun.text(proc)
    assert proc.returncode == 3, proc.stderr
    assert "sleep 100000" in out  # the jail's PID 1, seen from inside its pid namespace
    assert "root:x:0:0:root:/:/bin/sh" in out
    assert "/bin/busybox" in out
    assert jail.mountinfo() == before_mounts
    assert loop.bound_devices() == before_loops


def test_host_root_is_not_reachable_from_the_session(
    jail: Jail, tiny_toolboxes: dict[str, Path]
) -> None:
    """For a chroot-based runtime the mount namespace holds the host's filesystems; the
    session pivots away from them and detaches the old root."""
    proc = ccrun.run(f"pid://{jail.pid}", "--", "sh", "-c",
                     "ls /; ls /target/..; cat /proc/self/mountinfo",
                     image=str(tiny_toolboxes["erofs"]))  # fmt: skip
    out = ccrun.text(proc)
    assert proc.returncode == 0, proc.stderr
    listing = out.split(" - ")[0]
    assert "work" not in listing.split() and "pytest-of-root" not in listing
    lines = [ln for ln in out.splitlines() if " - " in ln]
    points = {ln.split()[4] for ln in lines}
    allowed = {"/", "/target", "/target/proc", "/target/dev", "/target/dev/crashcart", "/proc",
               "/dev", "/dev/crashcart", "/tmp", "/run", "/sys"}  # fmt: skip
    assert points <= allowed, points


def test_host_pid_is_refused_without_allow_host(tiny_toolboxes: dict[str, Path]) -> None:
    import os

    proc = ccrun.run(f"pid://{os.getpid()}", "--", "true", image=str(tiny_toolboxes["erofs"]))
    assert proc.returncode == 125
    assert b"is not in a container" in proc.stderr
    assert b"--allow-host" in proc.stderr


@pytest.mark.parametrize(
    "content,message",
    [(b"", b"not a toolbox image"), (b"x" * 5000, b"not a toolbox image")],
)
def test_bad_images(jail: Jail, tmp_path: Path, content: bytes, message: bytes) -> None:
    bad = tmp_path / "bad.img"
    bad.write_bytes(content)
    proc = ccrun.run(f"pid://{jail.pid}", "--", "true", image=str(bad))
    assert proc.returncode == 125 and message in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr


def test_missing_image(jail: Jail, tmp_path: Path) -> None:
    proc = ccrun.run(f"pid://{jail.pid}", "--", "true", image=str(tmp_path / "none.img"))
    assert proc.returncode == 125
    assert b"does not exist" in proc.stderr and b"crashcart image build" in proc.stderr


def test_truncated_erofs_image(jail: Jail, tiny_toolboxes: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.img"
    cut.write_bytes(tiny_toolboxes["erofs"].read_bytes()[:4096])
    before = jail.mountinfo()
    proc = ccrun.run(f"pid://{jail.pid}", "--", "true", image=str(cut))
    assert proc.returncode == 125, proc.stderr
    assert proc.stderr.startswith(b"crashcart: "), proc.stderr
    assert jail.mountinfo() == before


def test_image_without_target_dir(jail: Jail, tmp_path: Path) -> None:
    import shutil
    import subprocess

    src = tmp_path / "plain"
    (src / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", src / "bin" / "sh")
    img = tmp_path / "plain.img"
    subprocess.run(["mkfs.erofs", str(img), str(src)], check=True, capture_output=True)
    proc = ccrun.run(f"pid://{jail.pid}", "--", "true", image=str(img))
    assert proc.returncode == 125 and b"not a crashcart toolbox" in proc.stderr

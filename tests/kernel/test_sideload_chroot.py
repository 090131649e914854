"""Sideload mode with a chroot-based "runtime" (unshare + chroot, no pivot_root): the mount
namespace's root is the host's tree, the container's root a directory in it. crashcart
must find the container's /dev through the process's root, not the namespace's."""

from __future__ import annotations

import subprocess
from pathlib import Path

from crashcart.linux import loop
from tests import ccrun
from tests.kernel.conftest import Jail


def test_mount_and_unmount_in_a_chroot_jail(
    dev_jail: Jail, tiny_toolboxes: dict[str, Path]
) -> None:
    before, loops = dev_jail.mountinfo(), loop.bound_devices()
    dev = Path(f"/proc/{dev_jail.pid}/root/dev")  # the jail's tmpfs, not the host's directory
    listing = sorted(p.name for p in dev.iterdir())
    m = ccrun.run("-m", f"pid://{dev_jail.pid}", image=str(tiny_toolboxes["erofs"]))
    assert m.returncode == 0, m.stderr
    inside = subprocess.run(
        ["nsenter", "-t", str(dev_jail.pid), "-m", "-p", "-r", "-w",
         "/dev/crashcart/bin/sh", "-c", "ls /dev/crashcart; ls /; ps"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    u = ccrun.run("-u", f"pid://{dev_jail.pid}")
    assert inside.returncode == 0, inside.stderr
    names = inside.stdout.split()
    assert "target" in names and "etc" in names  # the toolbox, then the jail's own /
    assert "sleep" in inside.stdout  # the jail's processes
    assert u.returncode == 0 and b"unmounted" in u.stderr, u.stderr
    assert dev_jail.mountinfo() == before and loop.bound_devices() == loops
    # The mount point crashcart made in the jail's /dev (its tmpfs) is gone again.
    assert "crashcart" not in dev_jail.mountinfo()
    assert not (dev / "crashcart").exists()
    assert listing == sorted(p.name for p in dev.iterdir())


def test_dev_on_the_root_filesystem_is_refused(jail: Jail, tiny_toolboxes: dict[str, Path]) -> None:
    """No /dev mount of its own: a mount point would be written into the container's files."""
    m = ccrun.run("-m", f"pid://{jail.pid}", image=str(tiny_toolboxes["erofs"]))
    assert m.returncode == 125
    assert b"not a mount of its own" in m.stderr and b"session mode" in m.stderr
    assert not (jail.root / "dev" / "crashcart").exists()

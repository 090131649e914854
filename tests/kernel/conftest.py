"""Real-kernel fixtures that need no container runtime: a tiny busybox toolbox image in
each format, and a "container" made with unshare(1) + chroot, the way chroot-based
runtimes (LXC's older modes, nspawn without pivot) build theirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "ls", "cat", "ps", "id", "hostname", "sleep", "true", "mount", "readlink")


def _busybox_tree(root: Path, extra_dirs: tuple[str, ...] = ()) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for d in extra_dirs:
        (root / d).mkdir(parents=True, exist_ok=True)


def _need(tool: str) -> None:
    if not shutil.which(tool) or not BUSYBOX.exists():
        pytest.skip(f"{tool} or {BUSYBOX} missing (scripts/runtimes install provides them)")


MAKERS = {
    "erofs": lambda src, out: ["mkfs.erofs", "-zlz4", str(out), str(src)],
    "squashfs": lambda src, out: ["mksquashfs", str(src), str(out), "-quiet", "-noappend"],
    "ext4": lambda src, out: ["mkfs.ext4", "-q", "-d", str(src), str(out), "16M"],
}


@pytest.fixture(scope="session")
def tiny_toolboxes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A busybox 'toolbox' with the mount points crashcart expects, in every format."""
    base = tmp_path_factory.mktemp("toolbox")
    src = base / "root"
    _busybox_tree(src, ("target", "proc", "dev", "sys", "tmp", "run"))
    out = {}
    for fmt, maker in MAKERS.items():
        tool = maker(src, base / "x")[0]
        if not shutil.which(tool):
            continue
        path = base / f"toolbox.{fmt}"
        subprocess.run(maker(src, path), check=True, capture_output=True)
        out[fmt] = path
    if "erofs" not in out:
        _need("mkfs.erofs")
    return out


class Jail:
    """A process in its own pid, mount, net, uts and ipc namespaces, chrooted into a
    busybox tree: a container without a runtime."""

    def __init__(self, root: Path, dev_tmpfs: bool = False) -> None:
        self.root = root
        # With dev_tmpfs, /dev is a tmpfs of the jail's own, as LXC and nspawn give theirs.
        run = f"mount -t tmpfs -o mode=755 jail-dev {root}/dev && " if dev_tmpfs else ""
        self.unshare = subprocess.Popen(
            ["unshare", "--fork", "--pid", "--mount", "--net", "--uts", "--ipc",
             f"--mount-proc={root}/proc", "sh", "-c",
             f"{run}exec chroot {root} /bin/sleep 100000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.pid = self._wait_child()

    def _wait_child(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
                pids = children.read_text().split()
                if pids and os.readlink(f"/proc/{pids[0]}/exe").endswith("busybox"):
                    return int(pids[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.02)
        raise RuntimeError("the unshare jail did not start")

    def mountinfo(self) -> str:
        return Path(f"/proc/{self.pid}/mountinfo").read_text()

    def stop(self) -> None:
        self.unshare.kill()
        self.unshare.wait()
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass


def _jail(tmp_path: Path, dev_tmpfs: bool) -> Iterator[Jail]:
    _need("unshare")
    root = tmp_path / "jail"
    _busybox_tree(root, ("proc", "dev", "etc", "tmp"))
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/:/bin/sh\n")
    j = Jail(root, dev_tmpfs)
    try:
        yield j
    finally:
        j.stop()


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[Jail]:
    yield from _jail(tmp_path, False)


@pytest.fixture
def dev_jail(tmp_path: Path) -> Iterator[Jail]:
    """A chroot jail whose /dev is a tmpfs mount of its own."""
    yield from _jail(tmp_path, True)

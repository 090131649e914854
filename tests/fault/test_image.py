"""The toolbox image under attack or decay: deleted, truncated or replaced while a session
runs and while it is sideloaded; and --image pointing at something that is not a usable
toolbox. Each bad image gives one clear line and exit 125, never a traceback or a hang,
and leaves nothing.

While mounted, the kernel holds the image *file* (erofs: the mount's file; squashfs: the
loop device's), not its path: deleting or replacing the path changes nothing for a live
session or mount. Truncating the file in place makes reads of what was not cached yet
fail with EIO inside the session; the command fails, crashcart and the host do not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory under build/fault: the leak checker tells the suite's loop devices from
    other runs' by their backing file's directory."""
    d = kit.BUILD / "scratch" / tmp_path.name
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def copy_of(image: str, tmp_path: Path) -> Path:
    dst = tmp_path / ("toolbox" + Path(image).suffix)
    shutil.copy(image, dst)
    os.chmod(dst, 0o644)
    return dst


def delete(p: Path) -> None:
    p.unlink()


def replace(p: Path) -> None:
    other = p.with_name("other")
    other.write_bytes(b"not an image at all\n" * 100)
    other.rename(p)


def truncate(p: Path) -> None:
    os.truncate(p, 8192)  # the superblock stays; every block after it is gone


CHANGES: dict[str, Callable[[Path], None]] = {
    "deleted": delete, "replaced": replace, "truncated": truncate,
}  # fmt: skip


@pytest.mark.parametrize("change", CHANGES)
def test_image_changes_under_a_live_session(
    shared: Container, any_tiny: str, change: str, scratch: Path, leakcheck: lc.LeakCheckFn
) -> None:
    image = copy_of(any_tiny, scratch)
    with leakcheck(shared):
        p = kit.popen(target(shared), "--", "sh", "-c",
                      "echo started; read x; cat /bin/probe | wc -c", image=str(image),
                      stdin=subprocess.PIPE)  # fmt: skip
        assert p.stdout is not None and p.stdout.readline() == b"started\n"
        CHANGES[change](image)
        out, err = p.communicate(b"go\n", timeout=30)
    assert b"Traceback" not in err and b"internal error" not in err, err
    size = str(kit.static_binary("probe").stat().st_size).encode()
    if change == "truncated":  # EIO for what was not in the page cache yet
        assert b"I/O error" in err or out.strip() != size, (out, err)
    else:
        assert p.returncode == 0, err
        assert out.strip() == size


@pytest.mark.parametrize("change", CHANGES)
def test_image_changes_while_sideloaded(
    shared: Container, any_tiny: str, change: str, scratch: Path, leakcheck: lc.LeakCheckFn
) -> None:
    image = copy_of(any_tiny, scratch)
    with leakcheck(shared):
        assert ccrun.run("-m", target(shared), image=str(image)).returncode == 0
        CHANGES[change](image)
        used = kit.in_container(shared, ["/dev/crashcart/bin/sh", "-c", "echo used"])
        status = ccrun.run("status")
        u = ccrun.run("-u", target(shared))
    assert "used" in used or change == "truncated", used
    assert status.returncode == 0, status.stderr
    assert u.returncode == 0, u.stderr


def _ext4_unknown_feature(tmp_path: Path, tiny_root: Path) -> Path:
    """An ext4 toolbox with an incompat feature bit no kernel knows: it refuses to mount."""
    img = tmp_path / "future.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tiny_root), str(img), "8M"], check=True)
    with open(img, "r+b") as f:
        f.seek(1024 + 0x60)  # s_feature_incompat
        value = int.from_bytes(f.read(4), "little") | 1 << 31
        f.seek(1024 + 0x60)
        f.write(value.to_bytes(4, "little"))
    return img


def bad_images(tmp_path: Path, tiny: str) -> dict[str, tuple[str, str]]:
    """name -> (--image path, what the error must say)."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "x").write_text("x")
    out: dict[str, tuple[str, str]] = {}
    empty = tmp_path / "empty"
    empty.touch()
    out["empty-file"] = (str(empty), "is not a toolbox image")
    out["text-file"] = ("/etc/hostname", "is not a toolbox image")
    out["dev-zero"] = ("/dev/zero", "not a regular file")
    out["directory"] = (str(tmp_path), "not a regular file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out["fifo"] = (str(fifo), "not a regular file")
    out["missing"] = (str(tmp_path / "nope"), "does not exist")
    head = tmp_path / "head.erofs"
    head.write_bytes(Path(tiny).read_bytes()[:4096])
    out["truncated-erofs"] = (str(head), str(head))
    garbage = tmp_path / "garbage.erofs"
    data = bytearray(Path(tiny).read_bytes()[:65536])
    data[1028:4096] = os.urandom(4096 - 1028)  # magic kept, superblock garbage
    garbage.write_bytes(bytes(data))
    out["corrupt-erofs"] = (str(garbage), "cannot mount")
    squash = tmp_path / "garbage.squashfs"
    squash.write_bytes(b"hsqs" + os.urandom(8192))
    out["corrupt-squashfs"] = (str(squash), "cannot mount")
    no_target = tmp_path / "notbox.erofs"
    subprocess.run(["mkfs.erofs", "-zlz4", str(no_target), str(root)], check=True,
                   capture_output=True)  # fmt: skip
    out["not-a-toolbox"] = (str(no_target), "not a crashcart toolbox")
    if shutil.which("mkfs.ext4"):
        out["unmountable-ext4"] = (str(_ext4_unknown_feature(tmp_path, root)), "cannot mount")
    writable = tmp_path / "writable.erofs"
    shutil.copy(tiny, writable)
    os.chmod(writable, 0o666)
    out["world-writable"] = (str(writable), "writable by")
    for p in (empty, head, garbage, squash, no_target):
        os.chmod(p, 0o644)
    return out


@pytest.mark.parametrize("mode", ["session", "sideload"])
def test_bad_images_give_one_clear_line(
    shared: Container, tiny: str, tmp_path: Path, mode: str, leakcheck: lc.LeakCheckFn
) -> None:
    os.chmod(tmp_path, 0o755)
    images = bad_images(tmp_path, tiny)
    results = {}
    with leakcheck(shared):
        for name, (path, _) in images.items():
            args = ["--image", path] + (["-m"] if mode == "sideload" else [])
            args += [target(shared)] + (["--", "true"] if mode == "session" else [])
            results[name] = ccrun.run(*args, timeout=20)
    for name, (_, says) in images.items():
        r = results[name]
        err = r.stderr.decode()
        assert r.returncode == 125, (name, err)
        assert says in err, (name, err)
        assert "Traceback" not in err and "internal error" not in err, (name, err)
        assert len(err.strip().splitlines()) <= 2, (name, err)
    assert not Path(f"/proc/{shared.pid}/root/dev/crashcart").exists()

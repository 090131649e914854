"""Building images other ways: --from-rootfs into squashfs and ext4, --from-image of a musl
container image, `image info` with and without the sidecar, and the errors a user meets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crashcart.image import manifest
from crashcart.image.build import BuildOptions, build
from tests.image.conftest import RootfsFactory, loop_devices_for, require_builder, sandbox

pytestmark = [pytest.mark.image, pytest.mark.slow]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crashcart", "image", *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="session")
def extracted_minimal(minimal_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The minimal image unpacked again: an already relocated glibc rootfs."""
    dest = tmp_path_factory.mktemp("extracted") / "rootfs"
    subprocess.run(["fsck.erofs", f"--extract={dest}", str(minimal_image)],
                   check=True, capture_output=True)  # fmt: skip
    return dest


@pytest.mark.parametrize("fmt", ["squashfs", "ext4"])
def test_from_rootfs_formats_and_info_without_sidecar(
    extracted_minimal: Path, rootfs: RootfsFactory, tmp_path: Path, fmt: str
) -> None:
    out = tmp_path / f"t.{fmt}"
    result = build(BuildOptions(from_rootfs=str(extracted_minimal), fmt=fmt, output=str(out)))
    reloc = result.manifest["relocation"]
    # relocating a relocated tree changes nothing: interpreters and rpaths already point
    # under the prefix, symlinks are relative, #! lines prefixed
    assert reloc["elf_patched"] == 0 and reloc["symlinks_rewritten"] == 0, reloc
    assert result.manifest["source"] == f"rootfs:{extracted_minimal}"
    assert manifest.detect_format(str(out)) == fmt
    os.unlink(manifest.sidecar_path(str(out)))  # read it from inside the image
    info = _cli("info", "--json", str(out))
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["build_id"] == result.manifest["build_id"]
    ran = sandbox("sideload", rootfs("busybox"), out, "/dev/crashcart/shell check-tools -q")
    assert "tools work" in ran.check()
    assert loop_devices_for(out) == ""  # the autoclear loop device went with the mount


def test_info_reads_erofs_without_sidecar(minimal_image: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.img"
    shutil.copyfile(minimal_image, copy)
    info = _cli("info", str(copy))
    assert info.returncode == 0, info.stderr
    assert "recipe:     minimal" in info.stdout and "format:     erofs" in info.stdout
    assert "tools (10):" in info.stdout
    assert loop_devices_for(copy) == ""


def test_from_image_relocates_musl_programs(
    testbed_tars: dict[str, Path], rootfs: RootfsFactory, tmp_path: Path
) -> None:
    """An Alpine-like image (musl loader, musl-linked server, static busybox) becomes a
    toolbox whose musl program runs from /dev/crashcart in a rootfs without musl."""
    require_builder()
    out = tmp_path / "musl.img"
    result = build(BuildOptions(from_image=f"oci-archive:{testbed_tars['musl']}",
                                output=str(out)))  # fmt: skip
    reloc = result.manifest["relocation"]
    assert reloc["interpreters"] == {
        "/lib/ld-musl-x86_64.so.1": "/dev/crashcart/lib/ld-musl-x86_64.so.1"
    }
    assert any("no bash in the image" in p for p in reloc["not_relocated"])
    script = (
        "/dev/crashcart/usr/local/bin/server musl 8081 & sleep 0.5;"
        " /bin/busybox wget -q -O - http://127.0.0.1:8081/ | head -c 100; kill $!"
    )
    busybox_root = rootfs("busybox")
    assert not (busybox_root / "lib/ld-musl-x86_64.so.1").exists()
    ran = sandbox("sideload", busybox_root, out, script, shell="/bin/sh")
    assert "musl" in ran.check()


def test_docker_image_when_docker_runs(tmp_path: Path, testbed_tars: dict[str, Path]) -> None:
    require_builder()
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True).returncode:
        pytest.skip("no running docker daemon")
    load = subprocess.run([docker, "load", "-i", str(testbed_tars["musl"])],
                          capture_output=True, text=True)  # fmt: skip
    if load.returncode:
        pytest.skip(f"docker load failed: {load.stderr.strip()}")
    out = tmp_path / "d.img"
    result = build(BuildOptions(from_image="docker://crashcart-test/musl:latest",
                                output=str(out)))  # fmt: skip
    assert result.manifest["relocation"]["interpreters"]


# ---- errors: one line, a hint, exit 125, no traceback ---------------------------------


def _expect_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 125, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("crashcart: ")
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_error_missing_package(tmp_path: Path) -> None:
    require_builder()
    recipe = tmp_path / "r.recipe"
    recipe.write_text("bash no-such-package-crashcart\n")
    proc = _cli("build", "--recipe", str(recipe), "--output", str(tmp_path / "x.img"))
    _expect_error(proc, "package not found in the suite: no-such-package-crashcart", "hint:")


def test_error_unreachable_mirror_and_unknown_suite(tmp_path: Path) -> None:
    require_builder()
    out = str(tmp_path / "x.img")
    _expect_error(_cli("build", "--mirror", "http://127.0.0.1:9/debian", "--output", out),
                  "cannot reach mirror http://127.0.0.1:9/debian")  # fmt: skip
    _expect_error(_cli("build", "--suite", "no-such-suite", "--output", out),
                  "suite 'no-such-suite' not found")  # fmt: skip


def test_error_missing_programs_name_the_package(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    out = str(tmp_path / "x.img")
    _expect_error(_cli("build", "--output", out, env=env), "mkfs.erofs not found",
                  "apt-get install erofs-utils")  # fmt: skip
    for tool in ("mkfs.erofs", "patchelf", "unshare"):
        found = shutil.which(tool)
        if found:
            (empty / tool).symlink_to(found)
    _expect_error(_cli("build", "--output", out, env=env), "mmdebstrap not found",
                  "apt-get install mmdebstrap")  # fmt: skip


def test_error_bad_recipe_and_missing_image(tmp_path: Path) -> None:
    (tmp_path / "bad.recipe").write_text("colour = blue\n")
    _expect_error(_cli("build", "--recipe", str(tmp_path / "bad.recipe")), "unknown setting")
    _expect_error(_cli("info", str(tmp_path / "none.img")), "no image at")

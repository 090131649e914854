"""Manifest contents, the sidecar binding, format detection and the info summary."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from crashcart.errors import ImageError
from crashcart.image import manifest, pack


def _manifest() -> manifest.Manifest:
    return manifest.build_manifest(
        recipe="minimal", source="mmdebstrap", suite="bookworm",
        mirror="http://deb.debian.org/debian", fmt="erofs", compression="lz4hc",
        packages=[{"name": "bash", "version": "5.2.15-2+b13", "arch": "amd64"}],
        tools=[{"name": "bash", "check": ["bash", "--version"]}],
        relocation={"prefix": "/dev/crashcart", "elf_patched": 3, "not_relocated": []},
        build_id="0d4c3f6e-1111-4222-8333-444455556666",
        now=datetime.datetime(2026, 1, 2, 3, 4, 5, 678, tzinfo=datetime.UTC),
    )  # fmt: skip


def test_build_manifest_fields() -> None:
    m = _manifest()
    assert m["built"] == "2026-01-02T03:04:05+00:00"
    assert m["prefix"] == "/dev/crashcart"
    for key in ("recipe", "suite", "packages", "format", "tools", "crashcart_version"):
        assert key in m
    assert json.loads(manifest.dumps(m)) == m


def test_sidecar_is_bound_to_the_image_size(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * 2048)
    manifest.write_sidecar(str(image), _manifest())
    assert manifest.read_manifest(str(image))["recipe"] == "minimal"
    image.write_bytes(b"\0" * 4096)  # rebuilt without its sidecar: do not trust it
    with pytest.raises(ImageError, match="not an erofs, squashfs or ext4"):
        manifest.read_manifest(str(image))


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as e:
        manifest.read_manifest(str(tmp_path / "none.img"))
    assert e.value.hint is not None and "image build" in e.value.hint


@pytest.mark.parametrize(
    "offset, magic, fmt",
    [(0, b"hsqs", "squashfs"), (1024, b"\xe2\xe1\xf5\xe0", "erofs"), (1080, b"\x53\xef", "ext4")],
)
def test_detect_format(tmp_path: Path, offset: int, magic: bytes, fmt: str) -> None:
    data = bytearray(4096)
    data[offset : offset + len(magic)] = magic
    (tmp_path / "i").write_bytes(bytes(data))
    assert manifest.detect_format(str(tmp_path / "i")) == fmt


def test_summary(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"\0" * (3 << 20))
    text = manifest.summary(_manifest(), str(image))
    assert "size:       3.0 MiB" in text
    assert "tools (1): bash" in text
    assert "packages:   1" in text


def test_default_format_follows_the_kernel(tmp_path: Path) -> None:
    assert pack.default_format({"ext4", "squashfs", "erofs"}) == "erofs"
    assert pack.default_format({"ext4", "squashfs"}) == "squashfs"
    assert pack.default_format(set()) == "ext4"
    (tmp_path / "fs").write_text("nodev\tproc\n\text4\n\terofs\n")
    assert {"proc", "ext4", "erofs"} <= pack.kernel_formats(str(tmp_path / "fs"))

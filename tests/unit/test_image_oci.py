"""Applying container image layers: whiteouts, opaque dirs, symlink escapes, references."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from crashcart.errors import ImageError
from crashcart.image import oci


def _layer(path: Path, entries: list[tuple[str, str, bytes | str]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                tar.addfile(info)
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(raw), 0o755
                tar.addfile(info, io.BytesIO(raw))
    return path


def test_layers_with_whiteouts(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    oci.apply_layer(str(_layer(tmp_path / "1.tgz", [
        ("etc/", "dir", ""), ("etc/a", "file", "a"), ("etc/b", "file", "b"),
        ("opt/", "dir", ""), ("opt/old", "file", "x"), ("lib", "sym", "/usr/lib"),
        ("usr/lib/", "dir", ""),
    ])), str(root))  # fmt: skip
    oci.apply_layer(str(_layer(tmp_path / "2.tgz", [
        ("etc/.wh.a", "file", ""), ("opt/", "dir", ""), ("opt/.wh..wh..opq", "file", ""),
        ("opt/new", "file", "n"), ("lib/libx.so", "file", "so"),
        ("../escape", "file", "no"),
    ])), str(root))  # fmt: skip
    assert sorted(os.listdir(root / "etc")) == ["b"]
    assert os.listdir(root / "opt") == ["new"]
    # through the absolute symlink /lib -> /usr/lib, resolved inside the rootfs
    assert (root / "usr/lib/libx.so").read_text() == "so"
    assert not (tmp_path / "escape").exists()


def test_layer_files_docker_archive_and_oci_index(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps([{"Layers": ["a/layer.tar"]}]))
    assert oci.layer_files(str(tmp_path)) == [str(tmp_path / "a/layer.tar")]
    oci_dir = tmp_path / "oci"
    blobs = oci_dir / "blobs/sha256"
    blobs.mkdir(parents=True)
    (blobs / "m").write_text(json.dumps({"layers": [{"digest": "sha256:l1"}]}))
    (blobs / "i").write_text(json.dumps({"manifests": [{"digest": "sha256:m"}]}))
    (oci_dir / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:i"}]}))
    assert oci.layer_files(str(oci_dir)) == [str(blobs / "l1")]


@pytest.mark.parametrize(
    "ref, parsed",
    [
        ("docker://nicolaka/netshoot:latest", ("docker", "nicolaka/netshoot:latest")),
        ("podman://localhost/tools", ("podman", "localhost/tools")),
        ("oci-archive:/tmp/x.tar", ("oci-archive", "/tmp/x.tar")),
        ("oci-archive:/tmp/x.tar:tag", ("oci-archive", "/tmp/x.tar")),
    ],
)
def test_parse_ref(ref: str, parsed: tuple[str, str]) -> None:
    assert oci.parse_ref(ref) == parsed


def test_parse_ref_rejects_others() -> None:
    with pytest.raises(ImageError):
        oci.parse_ref("registry.example/x")

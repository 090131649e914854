"""The fixture image writer: tar layout, digests, reproducibility, and what each image holds."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import tarfile
from pathlib import Path

import pytest

from tests.testbed import images
from tests.testbed.require import missing


def _tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "bin" / "tool").write_bytes(b"\x7fELF not really")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "etc" / "passwd").write_text("root:x:0:0::/:/bin/tool\n")
    (root / "bin" / "sh").symlink_to("/bin/tool")
    return root


def _members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isfile() else None
            out[m.name] = (m, f.read() if f else b"")
    return out


def test_layer_is_normalised(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    os.utime(root / "etc" / "passwd", (1, 1))
    layer = _members(images.layer_tar(root))
    assert list(layer) == ["bin", "bin/sh", "bin/tool", "etc", "etc/passwd", "tmp"]
    for info, _ in layer.values():
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        assert info.mtime == images.EPOCH
    assert layer["tmp"][0].mode == 0o1777
    assert layer["bin/tool"][0].mode == 0o755
    assert layer["bin/sh"][0].issym() and layer["bin/sh"][0].linkname == "/bin/tool"
    assert layer["etc/passwd"][1] == b"root:x:0:0::/:/bin/tool\n"


def test_layer_is_reproducible(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    b = _tree(tmp_path / "b")
    os.utime(b / "bin" / "tool", (12345, 12345))
    assert images.layer_tar(a) == images.layer_tar(b)
    (b / "etc" / "passwd").write_text("changed\n")
    assert images.layer_tar(a) != images.layer_tar(b)


def test_layer_refuses_special_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    os.mkfifo(root / "fifo")
    with pytest.raises(images.ImageBuildError, match="only dirs, files and symlinks"):
        images.layer_tar(root)


def test_image_tar_is_oci_layout_and_docker_archive(tmp_path: Path) -> None:
    layer = images.layer_tar(_tree(tmp_path / "root"))
    blobs = images.image_blobs(layer, ["/bin/tool", "x"], "busybox")
    images.write_image_tar(blobs, tmp_path / "image.tar")
    files = {n: d for n, (_, d) in _members((tmp_path / "image.tar").read_bytes()).items()}

    # Every blob is named by the sha256 of its content.
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert name.rsplit("/", 1)[1] == hashlib.sha256(data).hexdigest()

    def blob(digest: str) -> bytes:
        return files["blobs/sha256/" + digest.removeprefix("sha256:")]

    # OCI: oci-layout -> index.json -> manifest -> config + layer.
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["mediaType"] == images.MT_MANIFEST
    assert (
        desc["annotations"]["io.containerd.image.name"] == "docker.io/crashcart-test/busybox:latest"
    )
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "latest"
    manifest_bytes = blob(desc["digest"])
    assert len(manifest_bytes) == desc["size"]
    manifest = json.loads(manifest_bytes)
    assert len(blob(manifest["config"]["digest"])) == manifest["config"]["size"]
    (layer_desc,) = manifest["layers"]
    assert blob(layer_desc["digest"]) == layer
    assert layer_desc["mediaType"] == images.MT_LAYER  # uncompressed
    config = json.loads(blob(manifest["config"]["digest"]))
    assert config["rootfs"] == {"type": "layers", "diff_ids": [images.digest(layer)]}
    assert config["config"]["Cmd"] == ["/bin/tool", "x"]
    assert (config["os"], config["architecture"]) == ("linux", "amd64")

    # docker-archive: manifest.json points at the same blobs.
    (entry,) = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["crashcart-test/busybox:latest"]
    assert entry["Config"] == "blobs/sha256/" + manifest["config"]["digest"][7:]
    assert entry["Layers"] == ["blobs/sha256/" + layer_desc["digest"][7:]]

    assert blobs.config_digest == manifest["config"]["digest"]
    assert blobs.manifest_digest == desc["digest"]
    assert blobs.layer_digest == layer_desc["digest"]


def test_image_tar_is_reproducible(tmp_path: Path) -> None:
    layer = images.layer_tar(_tree(tmp_path / "root"))
    for out in ("one.tar", "two.tar"):
        images.write_image_tar(images.image_blobs(layer, ["/x"], "musl"), tmp_path / out)
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()


def test_refs() -> None:
    assert images.ref("distroless") == "crashcart-test/distroless:latest"
    assert images.full_ref("distroless") == "docker.io/crashcart-test/distroless:latest"


# ---------------------------------------------------------------------------------------------
# Real builds (need busybox-static and musl-tools, which scripts/runtimes install installs)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, images.BuiltImage]:
    if shutil.which("musl-gcc") is None or not images.BUSYBOX.exists():
        missing("musl-gcc or /bin/busybox missing: run scripts/runtimes install")
    return images.build_all(tmp_path_factory.mktemp("images"))


def _interp(path: Path) -> str | None:
    """PT_INTERP of a 64-bit little-endian ELF file, or None for a static one."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, f"{path} is not a 64-bit ELF"
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == 3:  # PT_INTERP
            return data[p_offset : p_offset + p_filesz].rstrip(b"\0").decode()
    return None


def _paths(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_distroless_is_one_static_binary(built: dict[str, images.BuiltImage]) -> None:
    root = built["distroless"].rootfs
    assert _paths(root) == {"etc", "etc/passwd", "etc/group", "tmp", "server"}
    assert _interp(root / "server") is None
    assert built["distroless"].cmd == ("/server", "distroless")


def test_musl_has_no_glibc(built: dict[str, images.BuiltImage]) -> None:
    root = built["musl"].rootfs
    paths = _paths(root)
    assert "lib/ld-musl-x86_64.so.1" in paths
    assert not [p for p in paths if "libc.so.6" in p or "ld-linux" in p]
    assert _interp(root / "usr/local/bin/server") == "/lib/ld-musl-x86_64.so.1"
    for applet in ("sh", "ls", "cat", "ps"):
        assert os.readlink(root / "bin" / applet) == "/bin/busybox"
    assert "ID_LIKE=alpine" in (root / "etc/os-release").read_text()


def test_busybox_has_applets_and_users(built: dict[str, images.BuiltImage]) -> None:
    root = built["busybox"].rootfs
    assert _interp(root / "bin/busybox") is None
    for applet in ("bin/sh", "bin/ls", "usr/sbin/httpd", "bin/mount"):
        assert os.readlink(root / applet) == "/bin/busybox"
    assert (root / "etc/passwd").read_text().startswith("root:x:0:0:")
    assert (root / "etc/group").read_text().startswith("root:x:0:")


def test_build_matches_meta_and_is_cached(
    built: dict[str, images.BuiltImage], tmp_path: Path
) -> None:
    for img in built.values():
        files = {n: d for n, (_, d) in _members(img.tar.read_bytes()).items()}
        layer = files["blobs/sha256/" + img.layer_digest[7:]]
        assert layer == images.layer_tar(img.rootfs)
        assert images.digest(files["blobs/sha256/" + img.config_digest[7:]]) == img.config_digest
    out = built["busybox"].tar.parent.parent
    stamp = built["busybox"].tar.stat().st_mtime_ns
    again = images.build_all(out, ["busybox"])["busybox"]
    assert again == built["busybox"]
    assert again.tar.stat().st_mtime_ns == stamp  # not rewritten
    forced = images.build_all(out, ["busybox"], force=True)["busybox"]
    assert forced.config_digest == built["busybox"].config_digest  # reproducible


def test_cli_builds(tmp_path: Path) -> None:
    if shutil.which("musl-gcc") is None:
        missing("musl-gcc missing: run scripts/runtimes install")
    assert images.main(["build", "--out", str(tmp_path), "distroless"]) == 0
    assert (tmp_path / "distroless" / "image.tar").is_file()
    with pytest.raises(SystemExit):
        images.main(["build", "--out", str(tmp_path), "alpine"])

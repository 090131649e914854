"""crashcart/image/ociwrite.py (the node image's archive writer) and the pure parts of
crashcart/nodeimage.py, on temporary trees: no runtime, no root needed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from crashcart import nodeimage
from crashcart.errors import ImageError, UsageError
from crashcart.image import nodebuild, ociwrite
from tests import ccrun


def _tree(root: Path) -> Path:
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "b" / "deep" / "x").write_bytes(b"x" * 3000)
    os.link(root / "a.txt", root / "b" / "hard")
    (root / "link").symlink_to("/etc/passwd")
    os.mkfifo(root / "fifo")
    (root / "skipme").mkdir()
    (root / "skipme" / "inner").write_text("no")
    return root


def _layer(root: Path, out: Path) -> ociwrite.Layer:
    w = ociwrite.LayerWriter(str(out))
    w.add_tree(str(root), skip=("skipme",))
    w.add_bytes("usr/bin/tool", b"#!/bin/sh\n", mode=0o755)
    return w.close()


def test_layer_is_reproducible_sorted_and_hashed(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    one, two = _layer(root, tmp_path / "1.tar"), _layer(root, tmp_path / "2.tar")
    data = Path(one.path).read_bytes()
    assert one.digest == two.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert one.size == len(data)
    with tarfile.open(one.path) as t:
        members = {m.name: m for m in t.getmembers()}
        names = [m.name for m in t.getmembers()]
    assert names[:8] == ["a.txt", "b", "b/deep", "b/deep/x", "b/hard", "link", "skipme", "usr"]
    assert "fifo" not in members and "skipme/inner" not in members
    assert members["b/hard"].islnk() and members["b/hard"].linkname == "a.txt"
    assert members["link"].issym() and members["link"].linkname == "/etc/passwd"
    assert members["usr/bin"].isdir() and members["usr/bin/tool"].mode == 0o755
    assert {m.mtime for m in members.values()} == {ociwrite.EPOCH}
    assert {m.uname for m in members.values()} == {""}


def _archive(tmp_path: Path, name: str) -> tuple[ociwrite.WrittenImage, ociwrite.Layer]:
    root = _tree(tmp_path / f"root-{name}")
    layer = _layer(root, tmp_path / f"{name}.layer")
    cfg = ociwrite.ImageConfig(entrypoint=["crashcart"], env=["A=1"], labels={"l": "v"})
    out = tmp_path / f"{name}.tar"
    return ociwrite.write_archive(str(out), [layer], cfg, "localhost/x-node:1.0"), layer


def _json_member(t: tarfile.TarFile, name: str) -> object:
    f = t.extractfile(name)
    assert f is not None, name
    return json.load(f)


def test_archive_is_an_oci_layout_and_a_docker_archive(tmp_path: Path) -> None:
    image, layer = _archive(tmp_path, "one")
    again, _ = _archive(tmp_path, "two")
    assert Path(image.path).read_bytes() == Path(again.path).read_bytes()
    with tarfile.open(image.path) as t:
        index = _json_member(t, "index.json")
        docker = _json_member(t, "manifest.json")
        assert _json_member(t, "oci-layout") == {"imageLayoutVersion": "1.0.0"}
        desc = index["manifests"][0]  # type: ignore[index]
        assert desc["digest"] == image.manifest_digest
        assert desc["annotations"]["io.containerd.image.name"] == "localhost/x-node:1.0"
        manifest = _json_member(t, "blobs/sha256/" + desc["digest"][7:])
        config_blob = "blobs/sha256/" + manifest["config"]["digest"][7:]  # type: ignore[index]
        config = _json_member(t, config_blob)
        for blob in t.getmembers():
            if blob.name.startswith("blobs/sha256/") and blob.isfile():
                f = t.extractfile(blob)
                assert f is not None
                assert hashlib.sha256(f.read()).hexdigest() == blob.name.rsplit("/", 1)[1]
    assert manifest["layers"][0]["digest"] == layer.digest  # type: ignore[index]
    assert config["rootfs"]["diff_ids"] == [layer.digest]  # type: ignore[index]
    assert config["config"]["Entrypoint"] == ["crashcart"]  # type: ignore[index]
    assert image.config_digest == manifest["config"]["digest"]  # type: ignore[index]
    assert docker == [{"Config": config_blob, "RepoTags": ["localhost/x-node:1.0"],
                       "Layers": ["blobs/sha256/" + layer.digest[7:]]}]  # fmt: skip


def test_references() -> None:
    assert ociwrite.full_reference("crashcart-node:1") == "docker.io/library/crashcart-node:1"
    assert ociwrite.full_reference("me/crashcart-node:1") == "docker.io/me/crashcart-node:1"
    assert ociwrite.full_reference("localhost/c:1") == "localhost/c:1"
    assert ociwrite.full_reference("reg.example:5000/c:1") == "reg.example:5000/c:1"
    for bad in ("no-tag", "Upper/case:1", "x:", ":1", "x:a/b"):
        with pytest.raises(ImageError):
            ociwrite.check_ref(bad)
    ociwrite.check_ref(nodeimage.default_node_image())


def test_node_config_marks_the_node_image() -> None:
    cfg = nodebuild.image_config()
    assert cfg.entrypoint == ["crashcart"]
    assert f"{nodeimage.NODE_ENV}=1" in cfg.env


FULL_CAPS = "000001ffffffffff"


@pytest.mark.parametrize(
    ("status", "want"),
    [
        ({"CapEff": FULL_CAPS, "Seccomp": "0"}, ""),
        ({"CapEff": "00000000a80425fb", "Seccomp": "2"},
         "lacks CAP_SYS_ADMIN, CAP_SYS_PTRACE; a seccomp filter is on"),
        ({"CapEff": "000001ffffdfffff", "Seccomp": "0"}, "lacks CAP_SYS_ADMIN"),
        ({"CapEff": FULL_CAPS, "Seccomp": "2"}, "a seccomp filter is on"),
    ],
)  # fmt: skip
def test_missing_privileges(status: dict[str, str], want: str) -> None:
    assert nodeimage._missing_privileges(status) == want


def _proc(tmp_path: Path, kthreadd: bool, pid1_mnt: str) -> str:
    proc = tmp_path / "proc"
    for pid in ("1", "2", "self"):
        (proc / pid / "ns").mkdir(parents=True)
    (proc / "2" / "stat").write_text("2 (kthreadd) S 0 0 0" if kthreadd else "2 (sh) S 1 1 1")
    (proc / "1" / "ns" / "mnt").symlink_to(pid1_mnt)
    (proc / "self" / "ns" / "mnt").symlink_to("mnt:[4026532000]")
    (proc / "self" / "status").write_text(f"Name:\tx\nCapEff:\t{FULL_CAPS}\nSeccomp:\t0\n")
    return str(proc)


def test_host_pid_namespace_detection(tmp_path: Path) -> None:
    assert nodeimage.in_host_pid_namespace(_proc(tmp_path / "a", True, "mnt:[4026532000]"))
    # A node that is a container itself (kind): no kernel threads, PID 1 is not ours.
    assert nodeimage.in_host_pid_namespace(_proc(tmp_path / "b", False, "mnt:[4026531841]"))
    own = _proc(tmp_path / "c", False, "mnt:[4026532000]")
    assert not nodeimage.in_host_pid_namespace(own)
    with pytest.raises(UsageError, match="host's pid namespace"):
        nodeimage.check_node_container(own)
    nodeimage.check_node_container(_proc(tmp_path / "d", True, "mnt:[4026532000]"))


def test_node_verb_bad_input_is_one_line(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "crashcart", "image", "node", *args],
                              env=ccrun.env(), cwd=ccrun.REPO, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip

    cases = {
        "no-output": ((), "the following arguments are required: --output/-o"),
        "no-toolbox": (("-o", str(tmp_path / "x.tar"), "--toolbox", str(tmp_path / "none")),
                       "no toolbox image at"),
        "bad-tag": (("-o", str(tmp_path / "x.tar"), "--tag", "NoTag"), "bad image reference"),
    }  # fmt: skip
    for name, (args, message) in cases.items():
        res = run(*args)
        assert res.returncode == 125, (name, res.stderr)
        assert message in res.stderr.splitlines()[0], (name, res.stderr)
        assert "Traceback" not in res.stderr, name
    assert not (tmp_path / "x.tar").exists()

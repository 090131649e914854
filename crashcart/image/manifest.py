"""The image manifest: what is in a toolbox image, readable without mounting it.

The manifest lives twice: inside the image at /.crashcart/manifest.json (the image is
self-describing wherever it is copied) and next to it as IMAGE.manifest.json. `crashcart
image info` reads the sidecar when it belongs to the image (same size and build id), and
otherwise reads the copy inside the image without mounting it on the host: `debugfs` for
ext4, `unsquashfs -cat` for squashfs. erofs-utils 1.5 has no "cat" (dump.erofs shows
inodes, fsck.erofs extracts whole trees), so for erofs the file-backed image is mounted in a
private mount namespace that dies with the command: no loop device, nothing visible to the
host, gone on exit.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any

import crashcart
from crashcart.errors import ImageError

MANIFEST_PATH = "/.crashcart/manifest.json"
SCHEMA = 1

Manifest = dict[str, Any]


def build_manifest(
    *,
    recipe: str,
    source: str,
    suite: str | None,
    mirror: str | None,
    fmt: str,
    compression: str,
    packages: list[dict[str, str]],
    tools: list[dict[str, Any]],
    relocation: dict[str, object],
    build_id: str,
    now: datetime.datetime | None = None,
) -> Manifest:
    when = (now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0)
    return {
        "schema": SCHEMA,
        "build_id": build_id,
        "crashcart_version": crashcart.__version__,
        "built": when.isoformat(),
        "recipe": recipe,
        "source": source,
        "suite": suite,
        "mirror": mirror,
        "format": fmt,
        "compression": compression,
        "prefix": relocation.get("prefix", "/dev/crashcart"),
        "tools": tools,
        "packages": packages,
        "relocation": relocation,
    }


def dumps(manifest: Manifest) -> str:
    return json.dumps(manifest, indent=1, sort_keys=False) + "\n"


def sidecar_path(image: str) -> str:
    return image + ".manifest.json"


def write_sidecar(image: str, manifest: Manifest) -> None:
    """Write IMAGE.manifest.json, bound to the image by its size."""
    data = dict(manifest, image_size=os.path.getsize(image))
    tmp = sidecar_path(image) + ".tmp"
    with open(tmp, "w") as f:
        f.write(dumps(data))
    os.replace(tmp, sidecar_path(image))


def read_manifest(image: str) -> Manifest:
    """The manifest of `image`: from the sidecar when it matches, else from the image."""
    if not os.path.exists(image):
        raise ImageError(f"no image at {image}", hint="build one with `crashcart image build`")
    side = _read_sidecar(image)
    if side is not None:
        return side
    return _read_from_image(image)


def _read_sidecar(image: str) -> Manifest | None:
    try:
        with open(sidecar_path(image)) as f:
            data: Manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if data.get("image_size") != os.path.getsize(image):
        return None  # the image was rebuilt or replaced without its sidecar
    return data


def detect_format(image: str) -> str:
    """erofs, squashfs or ext4, from the superblock magic."""
    with open(image, "rb") as f:
        head = f.read(1024 + 1024)
    if head[:4] == b"hsqs":
        return "squashfs"
    if head[1024:1028] == b"\xe2\xe1\xf5\xe0":  # EROFS_SUPER_MAGIC_V1, little-endian
        return "erofs"
    if head[1024 + 56 : 1024 + 58] == b"\x53\xef":  # ext2/3/4 s_magic
        return "ext4"
    raise ImageError(f"{image} is not an erofs, squashfs or ext4 image")


def _read_from_image(image: str) -> Manifest:
    fmt = detect_format(image)
    if fmt == "squashfs":
        text = _tool_output(["unsquashfs", "-cat", image, MANIFEST_PATH], "squashfs-tools")
    elif fmt == "ext4":
        text = _tool_output(["debugfs", "-R", f"cat {MANIFEST_PATH}", image], "e2fsprogs")
    else:
        text = _erofs_cat(image)
    try:
        data: Manifest = json.loads(text)
    except ValueError:
        raise ImageError(
            f"{image} has no crashcart manifest ({MANIFEST_PATH})",
            hint="was it built by `crashcart image build`?",
        ) from None
    return data


def _tool_output(cmd: list[str], apt_package: str) -> str:
    if shutil.which(cmd[0]) is None:
        raise ImageError(f"{cmd[0]} not found", hint=f"apt-get install {apt_package}")
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ImageError(f"{cmd[0]} could not read {MANIFEST_PATH}: {proc.stderr.strip()}")
    return proc.stdout


def _erofs_cat(image: str) -> str:
    if os.geteuid() != 0:
        raise ImageError(
            f"reading the manifest from inside an erofs image needs root "
            f"(no {sidecar_path(image)} next to it)"
        )
    with tempfile.TemporaryDirectory(prefix="crashcart-info-") as mnt:
        script = 'mount -t erofs -o ro "$1" "$2" && cat "$2$3"'
        return _tool_output(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                os.path.abspath(image),
                mnt,
                MANIFEST_PATH,
            ],
            "util-linux",
        )


def summary(manifest: Manifest, image: str) -> str:
    """What `crashcart image info` prints."""
    size = os.path.getsize(image)
    tools = [t["name"] for t in manifest.get("tools", [])]
    reloc = manifest.get("relocation", {})
    lines = [
        f"image:      {image}",
        f"size:       {size / 2**20:.1f} MiB ({size} bytes)",
        f"format:     {manifest.get('format')} ({manifest.get('compression')})",
        f"recipe:     {manifest.get('recipe')}  source: {manifest.get('source')}",
        f"suite:      {manifest.get('suite')}  mirror: {manifest.get('mirror')}",
        f"built:      {manifest.get('built')} by crashcart {manifest.get('crashcart_version')}",
        f"prefix:     {manifest.get('prefix')}",
        f"packages:   {len(manifest.get('packages', []))}",
        f"relocation: {reloc.get('elf_patched', 0)} ELF files patched, "
        f"{reloc.get('symlinks_rewritten', 0)} symlinks and "
        f"{reloc.get('shebangs_rewritten', 0)} #! lines rewritten, "
        f"{_count(len(reloc.get('not_relocated', [])), 'problem')}",
        f"tools ({len(tools)}): {' '.join(tools)}",
    ]
    lines += [f"  not relocated: {p}" for p in reloc.get("not_relocated", [])]
    return "\n".join(lines) + "\n"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s") + (":" if n else "")

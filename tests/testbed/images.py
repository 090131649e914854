"""Build the fixture target images offline, with the standard library only.

Three images stand for the containers crashcart must handle:

- ``busybox``: Debian's static busybox with its applet links, /etc/passwd and /etc/group;
  it serves /www over HTTP on 8080 (``busybox httpd -f -p 8080 -h /www``).
- ``distroless``: one static binary, ``/server`` (tests/testbed/server.c built with
  ``musl-gcc -static``), plus /etc/passwd and /etc/group (root, nobody, nonroot as in
  Google's distroless images) and an empty /tmp: no shell, no libc, no /bin.
- ``musl``: Alpine-like: /lib/ld-musl-x86_64.so.1 from Debian's musl package, the same server
  linked against it, /etc/os-release, and busybox links sh, ls, cat, ps. No glibc library is
  in it (the static busybox carries its own copy of libc code inside the binary).

Each image is written as ``OUT/NAME/rootfs/`` (a directory for plain runc bundles) and
``OUT/NAME/image.tar``: one uncompressed layer, written so that the tar is at once an OCI
image layout (oci-layout, index.json, blobs/sha256) and a docker-archive (manifest.json whose
paths point into blobs/): ``docker load``, ``podman load`` and ``ctr images import`` all take
it. Builds are reproducible (fixed mtimes and owners, sorted entries) and cached: an image is
rebuilt only when a hash over its inputs (this file, server.c, the busybox and musl files and
the compiler) changes.

Run as ``python -m tests.testbed.images build [--out DIR] [--force]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVER_C = HERE / "server.c"

NAMES = ("busybox", "distroless", "musl")
REPOSITORY = "crashcart-test"
TAG = "latest"
# Every entry of every layer gets this mtime: 2020-01-01T00:00:00Z.
EPOCH = 1_577_836_800
CREATED = "2020-01-01T00:00:00Z"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

BUSYBOX = Path("/bin/busybox")
MUSL_LD = Path("/lib/ld-musl-x86_64.so.1")
MUSL_GCC = "musl-gcc"
MUSL_INPUTS = (
    Path("/usr/lib/x86_64-linux-musl/libc.a"),
    Path("/usr/lib/x86_64-linux-musl/musl-gcc.specs"),
)

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\nnonroot:x:65532:\n"


class ImageBuildError(RuntimeError):
    """A fixture image could not be built; the message names the step and the fix."""


def ref(name: str) -> str:
    """The short reference Docker uses: ``crashcart-test/NAME:latest``."""
    return f"{REPOSITORY}/{name}:{TAG}"


def full_ref(name: str) -> str:
    """The fully qualified reference Podman and containerd use."""
    return f"docker.io/{ref(name)}"


def default_out_dir() -> Path:
    env = os.environ.get("CRASHCART_TESTBED_IMAGES")
    return Path(env) if env else REPO / "build" / "testbed-images"


# ---------------------------------------------------------------------------------------------
# Rootfs contents


@dataclass(frozen=True)
class Entry:
    """One path of a rootfs: a directory (data is None, target is None), a regular file
    (data is bytes) or a symlink (target is set)."""

    path: str
    mode: int = 0o755
    data: bytes | None = None
    target: str | None = None


def _dirs(*paths: str, mode: int = 0o755) -> list[Entry]:
    return [Entry(p, mode) for p in paths]


def _common(os_release: str) -> list[Entry]:
    return [
        *_dirs("dev", "proc", "sys", "etc", "root"),
        Entry("tmp", 0o1777),
        Entry("etc/passwd", 0o644, PASSWD.encode()),
        Entry("etc/group", 0o644, GROUP.encode()),
        Entry("etc/os-release", 0o644, os_release.encode()),
    ]


def _os_release(name: str, pretty: str, like: str = "") -> str:
    lines = [f'NAME="{name}"', f"ID={name.replace(' ', '-')}", f'PRETTY_NAME="{pretty}"']
    if like:
        lines.append(f"ID_LIKE={like}")
    return "\n".join(lines) + "\n"


def busybox_applets(busybox: Path = BUSYBOX) -> list[str]:
    """Install paths of every applet (``bin/ls``, ``usr/sbin/httpd`` ...), from the binary."""
    out = subprocess.run(
        [str(busybox), "--list-full"], check=True, capture_output=True, text=True
    ).stdout
    return sorted(p for p in out.split() if p not in ("bin/busybox", "linuxrc"))


def busybox_entries() -> list[Entry]:
    applets = busybox_applets()
    dirs = sorted({str(Path(a).parent) for a in applets} | {"bin", "usr", "www"})
    return [
        *_dirs(*dirs),
        *_common(_os_release("crashcart-test busybox", "crashcart test image (static busybox)")),
        Entry("bin/busybox", 0o755, BUSYBOX.read_bytes()),
        *[Entry(a, 0o777, target="/bin/busybox") for a in applets],
        Entry("www/index.html", 0o644, b"crashcart-test busybox\n"),
    ]


def distroless_entries(server_static: bytes) -> list[Entry]:
    # Deliberately no os-release, /dev, /proc or /sys: the runtimes create mount points.
    return [
        *_dirs("etc"),
        Entry("tmp", 0o1777),
        Entry("etc/passwd", 0o644, PASSWD.encode()),
        Entry("etc/group", 0o644, GROUP.encode()),
        Entry("server", 0o755, server_static),
    ]


def musl_entries(server_dynamic: bytes) -> list[Entry]:
    release = _os_release(
        "crashcart-test musl", "crashcart test image (musl libc, Alpine-like)", like="alpine"
    )
    return [
        *_dirs("bin", "lib", "usr", "usr/local", "usr/local/bin"),
        *_common(release),
        Entry("lib/ld-musl-x86_64.so.1", 0o755, MUSL_LD.read_bytes()),
        Entry("lib/libc.musl-x86_64.so.1", 0o777, target="ld-musl-x86_64.so.1"),
        Entry("bin/busybox", 0o755, BUSYBOX.read_bytes()),
        *[Entry(f"bin/{a}", 0o777, target="/bin/busybox") for a in ("sh", "ls", "cat", "ps")],
        Entry("usr/local/bin/server", 0o755, server_dynamic),
    ]


IMAGE_CMDS: dict[str, list[str]] = {
    "busybox": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"],
    "distroless": ["/server", "distroless"],
    "musl": ["/usr/local/bin/server", "musl"],
}


def compile_server(out: Path, *, static: bool) -> bytes:
    """Compile server.c with musl-gcc; static for distroless, musl-dynamic for musl."""
    if shutil.which(MUSL_GCC) is None:
        raise ImageBuildError("musl-gcc not found: install musl-tools (scripts/runtimes install)")
    cmd = [MUSL_GCC, "-Os", "-s", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SERVER_C)]
    if static:
        cmd.insert(1, "-static")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageBuildError(f"compiling {SERVER_C.name} failed: {proc.stderr.strip()}")
    return out.read_bytes()


def materialize(entries: Sequence[Entry], root: Path) -> None:
    """Create ``entries`` under ``root`` with their modes (root must exist)."""
    for e in entries:
        dst = root / e.path
        if e.target is not None:
            dst.symlink_to(e.target)
        elif e.data is not None:
            dst.write_bytes(e.data)
            os.chmod(dst, e.mode)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            os.chmod(dst, e.mode)


# ---------------------------------------------------------------------------------------------
# Layer and image tar


def _walk(root: Path) -> Iterator[Path]:
    """Every path under root, depth first in name order (a directory before its contents);
    symlinks are not followed."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))


def layer_tar(root: Path) -> bytes:
    """A reproducible uncompressed layer of the directory tree at ``root``: entries sorted,
    owned by 0:0 with no names, mtime fixed at EPOCH. Only dirs, files and symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(root):
            st = path.lstat()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                raise ImageBuildError(f"{path}: only dirs, files and symlinks go in a layer")
    return buf.getvalue()


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest(data), "size": len(data), **extra}


@dataclass(frozen=True)
class ImageBlobs:
    """Every file of an image tar, by its path in the tar, and the digests that name it."""

    files: dict[str, bytes]
    layer_digest: str
    config_digest: str
    manifest_digest: str


def image_blobs(layer: bytes, cmd: Sequence[str], name: str) -> ImageBlobs:
    """The files of a single-layer image that is both an OCI layout and a docker-archive."""
    config = _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": {
                "Cmd": list(cmd),
                "Env": [PATH_ENV],
                "WorkingDir": "/",
                "ExposedPorts": {"8080/tcp": {}},
                "Labels": {"org.crashcart.test.image": name},
            },
            "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
            "history": [{"created": CREATED, "created_by": "tests/testbed/images.py"}],
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": _descriptor(MT_CONFIG, config),
            "layers": [_descriptor(MT_LAYER, layer)],
        }
    )
    annotations = {
        "io.containerd.image.name": full_ref(name),
        "org.opencontainers.image.ref.name": TAG,
    }
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [
                _descriptor(
                    MT_MANIFEST,
                    manifest,
                    annotations=annotations,
                    platform={"architecture": "amd64", "os": "linux"},
                )
            ],
        }
    )

    def blob(data: bytes) -> str:
        return "blobs/sha256/" + hashlib.sha256(data).hexdigest()

    docker_manifest = _json(
        [{"Config": blob(config), "RepoTags": [ref(name)], "Layers": [blob(layer)]}]
    )
    files = {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        "manifest.json": docker_manifest,
        blob(layer): layer,
        blob(config): config,
        blob(manifest): manifest,
    }
    return ImageBlobs(files, digest(layer), digest(config), digest(manifest))


def write_image_tar(blobs: ImageBlobs, out: Path) -> None:
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path, data in sorted(blobs.files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------------------------------------
# Building with a cache


@dataclass(frozen=True)
class BuiltImage:
    name: str
    ref: str
    full_ref: str
    rootfs: Path
    tar: Path
    cmd: tuple[str, ...]
    layer_digest: str
    config_digest: str
    manifest_digest: str

    @property
    def image_id(self) -> str:
        """The image ID Docker and Podman report: the config digest."""
        return self.config_digest


def _file_hash(path: Path) -> bytes:
    try:
        content = hashlib.sha256(path.read_bytes()).digest()
    except FileNotFoundError:
        content = b"missing"
    return str(path).encode() + b"\0" + content


def inputs_hash(name: str) -> str:
    """A hash over everything the image ``name`` is made from."""
    h = hashlib.sha256(name.encode() + b"\0")
    paths = [Path(__file__).resolve()]
    if name in ("busybox", "musl"):
        paths.append(BUSYBOX)
    if name in ("distroless", "musl"):
        paths += [SERVER_C, *MUSL_INPUTS]
    if name == "musl":
        paths.append(MUSL_LD.resolve())
    for p in paths:
        h.update(_file_hash(p))
    return h.hexdigest()


def _entries(name: str, scratch: Path) -> list[Entry]:
    if name != "distroless" and not BUSYBOX.exists():
        raise ImageBuildError(f"{BUSYBOX} not found: install busybox-static")
    if name == "busybox":
        return busybox_entries()
    if name == "distroless":
        return distroless_entries(compile_server(scratch / "server-static", static=True))
    if name == "musl":
        if not MUSL_LD.exists():
            raise ImageBuildError(f"{MUSL_LD} not found: install musl (musl-tools)")
        return musl_entries(compile_server(scratch / "server-dynamic", static=False))
    raise ImageBuildError(f"unknown fixture image {name!r}; known: {', '.join(NAMES)}")


def _load_meta(dest: Path) -> dict[str, str] | None:
    try:
        meta: dict[str, str] = json.loads((dest / "meta.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not (dest / "image.tar").is_file() or not (dest / "rootfs").is_dir():
        return None
    return meta


def _built(name: str, dest: Path, meta: dict[str, str]) -> BuiltImage:
    return BuiltImage(
        name=name,
        ref=ref(name),
        full_ref=full_ref(name),
        rootfs=dest / "rootfs",
        tar=dest / "image.tar",
        cmd=tuple(IMAGE_CMDS[name]),
        layer_digest=meta["layer_digest"],
        config_digest=meta["config_digest"],
        manifest_digest=meta["manifest_digest"],
    )


def build_image(name: str, out: Path, *, force: bool = False) -> BuiltImage:
    """Build ``name`` into ``out/name`` unless a build from the same inputs is there."""
    dest = out / name
    want = inputs_hash(name)
    meta = _load_meta(dest)
    if meta is not None and meta.get("inputs") == want and not force:
        return _built(name, dest, meta)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
    try:
        rootfs = work / "rootfs"
        rootfs.mkdir(mode=0o755)
        materialize(_entries(name, work), rootfs)
        blobs = image_blobs(layer_tar(rootfs), IMAGE_CMDS[name], name)
        write_image_tar(blobs, work / "image.tar")
        meta = {
            "inputs": want,
            "ref": ref(name),
            "layer_digest": blobs.layer_digest,
            "config_digest": blobs.config_digest,
            "manifest_digest": blobs.manifest_digest,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for leftover in ("server-static", "server-dynamic"):
            (work / leftover).unlink(missing_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        # mkdtemp makes the directory 0700; the runtimes read the rootfs as other users.
        os.chmod(work, 0o755)
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return _built(name, dest, meta)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_all(
    out: Path | None = None,
    names: Sequence[str] = NAMES,
    *,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, BuiltImage]:
    """Build (or reuse) every fixture image; safe to call from concurrent processes."""
    out = (out or default_out_dir()).resolve()
    with _locked(out):
        images = {n: build_image(n, out, force=force) for n in names}
    if log:
        for img in images.values():
            log(f"{img.name:<10} {img.ref:<32} {img.config_digest[:19]}  {img.tar}")
    return images


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.images")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the fixture images (cached)")
    b.add_argument("--out", type=Path, default=None, help="default: build/testbed-images")
    b.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    b.add_argument("names", nargs="*", metavar="NAME", help=f"default: {' '.join(NAMES)}")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(NAMES)
    if unknown:
        parser.error(f"unknown image(s): {', '.join(sorted(unknown))}; known: {', '.join(NAMES)}")
    try:
        build_all(args.out, args.names or NAMES, force=args.force, log=print)
    except (ImageBuildError, OSError, subprocess.CalledProcessError) as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

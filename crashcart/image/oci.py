"""Unpack a local container image into a rootfs directory (for --from-image).

Sources, all through the runtimes' own CLIs (no SDK, no registry access):

    docker://REF        `docker save REF`   (docker-archive; OCI layout too since Docker 25)
    podman://REF        `podman save --format docker-archive REF`
    oci-archive:PATH    an OCI image layout in a tar file (skopeo, buildah, podman save)

Layers are applied in order with OCI whiteouts (`.wh.NAME` deletes NAME from lower layers,
`.wh..wh..opq` empties a directory of lower-layer entries). Every path is resolved inside
the rootfs the way a chroot would resolve it, so a layer's absolute symlink (`/lib ->
/usr/lib`) can never make a later entry land on the host.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from crashcart.errors import ImageError
from crashcart.image import rootpath

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CAP_PAX = "SCHILY.xattr.security.capability"


def parse_ref(ref: str) -> tuple[str, str]:
    """('docker'|'podman'|'oci-archive', rest) from a --from-image argument."""
    for scheme in ("docker://", "podman://"):
        if ref.startswith(scheme) and len(ref) > len(scheme):
            return scheme[:-3], ref[len(scheme) :]
    if ref.startswith("oci-archive:") and len(ref) > len("oci-archive:"):
        path = ref[len("oci-archive:") :].split(":", 1)[0]
        return "oci-archive", path
    raise ImageError(
        f"cannot use image reference {ref!r}",
        hint="use docker://REF, podman://REF or oci-archive:PATH",
    )


def unpack_image(ref: str, rootfs: str, workdir: str) -> None:
    kind, rest = parse_ref(ref)
    if kind == "oci-archive":
        archive = rest
        if not os.path.isfile(archive):
            raise ImageError(f"no OCI archive at {archive}")
    else:
        archive = os.path.join(workdir, "image.tar")
        _save(kind, rest, archive)
    layout = os.path.join(workdir, "layout")
    _extract_archive(archive, layout)
    os.makedirs(rootfs, exist_ok=True)
    for layer in layer_files(layout):
        apply_layer(layer, rootfs)


def _save(kind: str, ref: str, out: str) -> None:
    if shutil.which(kind) is None:
        raise ImageError(f"{kind} not found (needed for {kind}://)")
    cmd = [kind, "save", "-o", out, ref]
    if kind == "podman":
        cmd[2:2] = ["--format", "docker-archive"]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise ImageError(
            f"{kind} save {ref} failed: {proc.stderr.strip()[-500:]}",
            hint=f"is the image present locally? `{kind} images`",
        )


def _extract_archive(archive: str, dest: str) -> None:
    """Unpack a docker-archive/OCI archive (manifests and blobs: regular files and
    directories only). tarfile's filter="data" would do the checks, but Debian 12's Python
    is 3.11.2, which predates extraction filters (3.11.4)."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if _plain_member(m)]
            tar.extractall(dest, members=members)
    except (tarfile.TarError, OSError) as e:
        raise ImageError(f"cannot read image archive {archive}: {e}") from None


def _plain_member(m: tarfile.TarInfo) -> bool:
    name = m.name.lstrip("./")
    parts = name.split("/")
    safe = not m.name.startswith("/") and ".." not in parts
    return safe and (m.isfile() or m.isdir())


def layer_files(layout: str) -> list[str]:
    """The layer blobs of an unpacked docker-archive or OCI layout, bottom first."""
    docker_manifest = os.path.join(layout, "manifest.json")
    if os.path.exists(docker_manifest):
        with open(docker_manifest) as f:
            entries = json.load(f)
        if not entries:
            raise ImageError("image archive has an empty manifest.json")
        return [os.path.join(layout, p) for p in entries[0]["Layers"]]
    index = os.path.join(layout, "index.json")
    if not os.path.exists(index):
        raise ImageError("image archive has neither manifest.json nor index.json")
    with open(index) as f:
        manifest = _resolve_manifest(layout, json.load(f))
    return [_blob(layout, layer["digest"]) for layer in manifest["layers"]]


def _resolve_manifest(layout: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Follow an index (possibly nested, possibly multi-arch) to an image manifest."""
    for _ in range(8):
        if "layers" in doc:
            return doc
        manifests = doc.get("manifests") or []
        if not manifests:
            break
        chosen = next(
            (
                m
                for m in manifests
                if m.get("platform", {}).get("architecture") in (_go_arch(), None)
            ),
            manifests[0],
        )
        with open(_blob(layout, chosen["digest"])) as f:
            doc = json.load(f)
    raise ImageError("cannot find an image manifest in the OCI index")


def _go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _blob(layout: str, digest: str) -> str:
    algo, _, hexdigest = digest.partition(":")
    return os.path.join(layout, "blobs", algo, hexdigest)


@contextmanager
def _open_layer(path: str) -> Iterator[tarfile.TarFile]:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":  # zstd: not in Python 3.11's stdlib
        if shutil.which("zstd") is None:
            raise ImageError("image layer is zstd-compressed", hint="apt-get install zstd")
        proc = subprocess.Popen(["zstd", "-dc", path], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
                yield tar
        finally:
            proc.stdout.close()
            proc.wait()
        return
    with tarfile.open(path, mode="r|*") as tar:
        yield tar


def apply_layer(path: str, rootfs: str) -> None:
    added: set[str] = set()
    with _open_layer(path) as tar:
        for member in tar:
            name = _clean(member.name)
            if name is None:
                continue
            base = os.path.basename(name)
            if base == OPAQUE:
                _opaque(rootfs, os.path.dirname(name), added)
            elif base.startswith(WHITEOUT):
                _remove(rootfs, os.path.join(os.path.dirname(name), base[len(WHITEOUT) :]))
            else:
                _extract(tar, member, rootfs, name)
                added.add(name)


def _clean(name: str) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/" + "/".join(parts)


def _physical(rootfs: str, name: str) -> str | None:
    """Host path for rootfs-absolute `name`: parent resolved chroot-style, leaf as is."""
    parent = rootpath.resolve(rootfs, os.path.dirname(name))
    if parent is None:
        return None
    return rootpath.host_path(rootfs, os.path.join(parent, os.path.basename(name)))


def _remove(rootfs: str, name: str) -> None:
    host = _physical(rootfs, name)
    if host is None or not os.path.lexists(host):
        return
    if os.path.isdir(host) and not os.path.islink(host):
        shutil.rmtree(host)
    else:
        os.unlink(host)


def _opaque(rootfs: str, directory: str, added: set[str]) -> None:
    real = rootpath.resolve(rootfs, directory)
    if real is None:
        return
    host = rootpath.host_path(rootfs, real)
    for entry in os.listdir(host):
        if os.path.join(directory, entry) not in added:
            _remove(rootfs, os.path.join(real, entry))


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, rootfs: str, name: str) -> None:
    host = _physical(rootfs, name)
    if host is None:
        os.makedirs(rootpath.host_path(rootfs, os.path.dirname(name)), exist_ok=True)
        host = _physical(rootfs, name)
        if host is None:
            return
    if m.isdir():
        if os.path.lexists(host) and not os.path.isdir(host):
            os.unlink(host)
        os.makedirs(host, exist_ok=True)
        os.chmod(host, m.mode & 0o7777)
        return
    if os.path.isdir(host) and not os.path.islink(host):
        shutil.rmtree(host)
    elif os.path.lexists(host):
        os.unlink(host)
    if m.issym():
        os.symlink(m.linkname, host)
    elif m.islnk():
        source = _physical(rootfs, _clean(m.linkname) or "/")
        if source and os.path.exists(source):
            os.link(source, host, follow_symlinks=False)
    elif m.isreg():
        _write_file(tar.extractfile(m), host, m)
    # device nodes and fifos are skipped: the image's /dev is a mount point anyway


def _write_file(src: IO[bytes] | None, host: str, m: tarfile.TarInfo) -> None:
    fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        if src is not None:
            shutil.copyfileobj(src, out, 1 << 20)
    os.chmod(host, stat.S_IMODE(m.mode))
    os.utime(host, (m.mtime, m.mtime))
    caps = m.pax_headers.get(CAP_PAX)
    if caps:
        try:
            os.setxattr(host, "security.capability", caps.encode("latin-1"))
        except OSError:
            pass

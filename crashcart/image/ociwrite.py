"""Write a container image as one tar that is at once an OCI image layout and a
docker-archive, with the standard library only (no Docker, no skopeo).

The tar holds `oci-layout`, `index.json` and `blobs/sha256/*` (the OCI layout `ctr images
import` and `podman load` read) and `manifest.json` whose paths point into the same blobs
(the docker-archive `docker load` reads). Layers are uncompressed tars, written to files
and hashed as they are written (a layer can be hundreds of MB: nothing is held in memory).

Reproducible: entries sorted, mtimes fixed, owners numeric with no names, no pax headers
that carry the time of writing; the same inputs give the same bytes and digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from crashcart.errors import ImageError

# 2020-01-01T00:00:00Z: every entry's mtime and the config's "created".
EPOCH = 1_577_836_800
CREATED = "2020-01-01T00:00:00Z"

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Layer:
    """An uncompressed layer tar on disk and its sha256 (the diff ID and blob digest)."""

    path: str
    digest: str
    size: int
    created_by: str = ""


@dataclass
class ImageConfig:
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    working_dir: str = "/"


@dataclass(frozen=True)
class WrittenImage:
    path: str
    size: int
    config_digest: str  # the image ID Docker and Podman show
    manifest_digest: str  # what containerd and a registry call the image's digest


class _HashingWriter(io.RawIOBase):
    """A file wrapper that hashes and counts what tarfile writes through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha.update(data)
        self.size += len(data)
        self.f.write(data)
        return len(data)


class LayerWriter:
    """Build one layer: add a directory tree, single files; close() gives the Layer."""

    def __init__(self, path: str, created_by: str = "") -> None:
        self.path, self.created_by = path, created_by
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._hash = _HashingWriter(self._file)
        self._tar = tarfile.open(fileobj=self._hash, mode="w", format=tarfile.GNU_FORMAT)
        self._dirs: set[str] = set()
        self._links: dict[tuple[int, int], str] = {}

    def add_tree(self, root: str, prefix: str = "", skip: Sequence[str] = ()) -> int:
        """Every entry under `root`, sorted, as `prefix/relpath`; `skip`: relative paths
        whose contents stay out (the directory itself goes in, empty). Returns the count."""
        n = 0
        if prefix.strip("/"):
            self._parents(prefix.strip("/") + "/.")  # the prefix's directories first
        for rel in walk_sorted(root, skip):
            self._add_path(os.path.join(root, rel), _join(prefix, rel))
            n += 1
        return n

    def add_file(self, src: str, name: str, mode: int = 0o644) -> None:
        """A regular file from the host at `name`; missing parents are added as 0755 dirs."""
        self._parents(name)
        info = _info(name, mode)
        info.size = os.stat(src).st_size
        with open(src, "rb") as f:
            self._tar.addfile(info, f)

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        info = _info(name, mode)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> Layer:
        self._tar.close()
        self._file.close()
        return Layer(self.path, "sha256:" + self._hash.sha.hexdigest(), self._hash.size,
                     self.created_by)  # fmt: skip

    def _parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                info = _info(d, 0o755)
                info.type = tarfile.DIRTYPE
                self._tar.addfile(info)

    def _add_path(self, path: str, name: str) -> None:
        st = os.lstat(path)
        info = _info(name, stat.S_IMODE(st.st_mode))
        info.uid, info.gid = st.st_uid, st.st_gid
        if stat.S_ISDIR(st.st_mode):
            self._dirs.add(name)
            info.type = tarfile.DIRTYPE
            self._tar.addfile(info)
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            self._tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            self._add_regular(path, info, st)
        else:
            # Device nodes, fifos, sockets: a runtime gives the container its own /dev.
            return

    def _add_regular(self, path: str, info: tarfile.TarInfo, st: os.stat_result) -> None:
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._links:
            info.type, info.linkname = tarfile.LNKTYPE, self._links[key]
            self._tar.addfile(info)
            return
        if st.st_nlink > 1:
            self._links[key] = info.name
        info.size = st.st_size
        with open(path, "rb") as f:
            self._tar.addfile(info, f)


def _info(name: str, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = mode, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _join(prefix: str, rel: str) -> str:
    return f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel


def walk_sorted(root: str, skip: Sequence[str] = (), rel: str = "") -> Iterator[str]:
    """Relative paths under `root`, sorted, each directory before its contents; the
    contents of a directory in `skip` are left out."""
    for name in sorted(os.listdir(os.path.join(root, rel))):
        child = _join(rel, name)
        yield child
        if child not in skip and stat.S_ISDIR(os.lstat(os.path.join(root, child)).st_mode):
            yield from walk_sorted(root, skip, child)


def _json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _desc(media_type: str, digest: str, size: int, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def config_json(layers: Sequence[Layer], cfg: ImageConfig) -> bytes:
    container: dict[str, object] = {
        "Entrypoint": cfg.entrypoint,
        "Env": cfg.env,
        "WorkingDir": cfg.working_dir,
        "Labels": cfg.labels,
    }
    if cfg.cmd:
        container["Cmd"] = cfg.cmd
    return _json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": CREATED,
            "config": container,
            "rootfs": {"type": "layers", "diff_ids": [la.digest for la in layers]},
            "history": [{"created": CREATED, "created_by": la.created_by} for la in layers],
        }
    )


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def metadata(layers: Sequence[Layer], cfg: ImageConfig, ref: str) -> dict[str, bytes]:
    """The small files of the archive (everything but the layer blobs), by path.

    `ref` is "NAME:TAG". containerd takes the name from `io.containerd.image.name` (a full
    reference: docker.io/ is added to a bare name); podman and docker read manifest.json's
    RepoTags."""
    config = config_json(layers, cfg)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": _desc(MT_CONFIG, _sha(config), len(config)),
            "layers": [_desc(MT_LAYER, la.digest, la.size) for la in layers],
        }
    )
    name, _, tag = ref.rpartition(":")
    notes = {"io.containerd.image.name": full_reference(ref),
             "org.opencontainers.image.ref.name": tag}  # fmt: skip
    platform = {"architecture": "amd64", "os": "linux"}
    index = _json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        _desc(MT_MANIFEST, _sha(manifest), len(manifest), annotations=notes, platform=platform)
    ]})  # fmt: skip
    docker = _json([{"Config": _blob(_sha(config)), "RepoTags": [ref],
                     "Layers": [_blob(la.digest) for la in layers]}])  # fmt: skip
    return {
        "oci-layout": _json({"imageLayoutVersion": "1.0.0"}),
        "index.json": index,
        "manifest.json": docker,
        _blob(_sha(config)): config,
        _blob(_sha(manifest)): manifest,
    }


def full_reference(ref: str) -> str:
    """docker.io/library/x:t for x:t, docker.io/a/x:t for a/x:t; a host stays as it is."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return "docker.io/" + ref if "/" in ref else "docker.io/library/" + ref


def check_ref(ref: str) -> None:
    name, sep, tag = ref.rpartition(":")
    if not (sep and name and tag) or "/" in tag or name != name.lower():
        raise ImageError(f"bad image reference {ref!r}", hint="use NAME:TAG, e.g. crashcart-node:1")


def write_archive(out: str, layers: Sequence[Layer], cfg: ImageConfig, ref: str) -> WrittenImage:
    """Write the archive to `out` (through a temporary name, renamed at the end)."""
    check_ref(ref)
    files = metadata(layers, cfg, ref)
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for d in ("blobs", "blobs/sha256"):
                info = _info(d, 0o755)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            blobs = {_blob(la.digest): la for la in layers}
            for path in sorted({*files, *blobs}):
                if path in files:
                    info = _info(path, 0o644)
                    info.size = len(files[path])
                    tar.addfile(info, io.BytesIO(files[path]))
                else:
                    info = _info(path, 0o644)
                    info.size = blobs[path].size
                    with open(blobs[path].path, "rb") as f:
                        tar.addfile(info, f)
        os.rename(tmp, out)
    except OSError as e:
        _unlink(tmp)
        raise ImageError(f"cannot write {out}: {e.strerror or e}") from None
    config = json.loads(files["index.json"])["manifests"][0]
    cfg_digest = json.loads(files[_blob(config["digest"])])["config"]["digest"]
    return WrittenImage(out, os.path.getsize(out), cfg_digest, config["digest"])


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

"""Read-only lookups in a bbolt database file (containerd's metadata store, meta.db).

containerd's CRI keeps what the task bundles do not carry (a pod's annotations, a
container's restart attempt) only in its metadata store, a bbolt file that containerd holds
open and flock()s. Reading it needs no lock and no client: bbolt never overwrites a page
that the newest committed tree uses (copy-on-write), and a page freed by transaction N+1 is
reused by N+2 at the earliest, so a walk of the tree of transaction N is consistent if, when
it ends, the newest transaction is at most N+1. :func:`lookup` checks exactly that and
retries otherwise.

On-disk format (go.etcd.io/bbolt, page.go and db.go): every page starts with a 16-byte
header (id u64, flags u16, count u16, overflow u32); pages 0 and 1 are meta pages (magic
0xED0CDAED, version 2, page size, root bucket, txid, FNV-1a checksum); branch elements are
(pos u32, ksize u32, pgid u64), leaf elements (flags u32, pos u32, ksize u32, vsize u32),
pos counted from the element itself; a leaf value with flag 1 is a nested bucket (root pgid
u64, sequence u64), inline when root is 0 (a page image follows in the value).
"""

from __future__ import annotations

import os
import struct

MAGIC = 0xED0CDAED
BRANCH, LEAF, META = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01
MAX_PAGE_BYTES = 64 << 20
MAX_DEPTH = 32


class Corrupt(ValueError):
    """The file is not a bbolt database, or changed under the reader (try again)."""


def _fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _meta(raw: bytes) -> tuple[int, int, int] | None:
    """(page size, root pgid, txid) of a valid meta page, else None."""
    if len(raw) < 16 + 64 or not struct.unpack_from("<H", raw, 8)[0] & META:
        return None
    magic, version, page_size, _, root, _, _, _, txid, checksum = struct.unpack_from(
        "<IIIIQQQQQQ", raw, 16
    )
    if magic != MAGIC or version != 2 or _fnv64a(raw[16 : 16 + 56]) != checksum:
        return None
    return page_size, root, txid


class Reader:
    """One open bbolt file; each :meth:`get` walks the newest committed tree."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.page_size = 4096
        self.root, self.txid = self._newest()

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _newest(self) -> tuple[int, int]:
        first = _meta(os.pread(self.fd, 4096, 0))
        if first is None and (second := _meta(os.pread(self.fd, 4096, 4096))):
            self.page_size = second[0]
        elif first is not None:
            self.page_size = first[0]
        if not 512 <= self.page_size <= 1 << 16:
            raise Corrupt(f"{self.path}: page size {self.page_size}")
        metas = [_meta(os.pread(self.fd, 4096, i * self.page_size)) for i in (0, 1)]
        valid = [m for m in metas if m]
        if not valid:
            raise Corrupt(f"{self.path}: no valid bbolt meta page")
        _, root, txid = max(valid, key=lambda m: m[2])
        return root, txid

    def stale(self) -> bool:
        """Whether pages of the tree read so far may have been reused since (see above)."""
        return self._newest()[1] > self.txid + 1

    def _page(self, pgid: int) -> bytes:
        head = os.pread(self.fd, 16, pgid * self.page_size)
        if len(head) < 16:
            raise Corrupt(f"{self.path}: page {pgid} beyond the end of the file")
        ident, _, _, overflow = struct.unpack("<QHHI", head)
        size = (overflow + 1) * self.page_size
        if ident != pgid or size > MAX_PAGE_BYTES:
            raise Corrupt(f"{self.path}: page {pgid} is not what the tree says")
        return os.pread(self.fd, size, pgid * self.page_size)

    def _node(self, ref: int | bytes) -> bytes:
        """A bucket's root page: read from the file, or the inline page image itself."""
        return ref if isinstance(ref, bytes) else self._page(ref)

    def items(self, ref: int | bytes, depth: int = 0) -> list[tuple[bytes, bytes, bool]]:
        """Every (key, value, is_bucket) of the bucket rooted at ``ref``, in key order."""
        if depth > MAX_DEPTH:
            raise Corrupt(f"{self.path}: tree deeper than {MAX_DEPTH}")
        page = self._node(ref)
        flags, count = struct.unpack_from("<HH", page, 8)
        out: list[tuple[bytes, bytes, bool]] = []
        for i in range(count):
            at = 16 + 16 * i
            if flags & BRANCH:
                pos, ksize, child = struct.unpack_from("<IIQ", page, at)
                out += self.items(child, depth + 1)
            elif flags & LEAF:
                eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, at)
                key = page[at + pos : at + pos + ksize]
                value = page[at + pos + ksize : at + pos + ksize + vsize]
                if len(key) != ksize or len(value) != vsize:
                    raise Corrupt(f"{self.path}: leaf element past its page")
                out.append((key, value, bool(eflags & BUCKET_LEAF)))
            else:
                raise Corrupt(f"{self.path}: page flags {flags:#x} in a bucket")
        return out

    def bucket(self, ref: int | bytes, key: bytes) -> int | bytes | None:
        """The nested bucket ``key`` of the bucket at ``ref`` (a pgid or an inline page)."""
        for k, value, is_bucket in self.items(ref):
            if k == key and is_bucket:
                if len(value) < 16:
                    raise Corrupt(f"{self.path}: short bucket header")
                root = struct.unpack_from("<Q", value)[0]
                return root if root else value[16:]
        return None

    def get(self, path: list[bytes]) -> dict[bytes, bytes] | None:
        """The plain (non-bucket) keys of the bucket at ``path`` from the root, or None."""
        ref: int | bytes | None = self.root
        for key in path:
            assert ref is not None
            ref = self.bucket(ref, key)
            if ref is None:
                return None
        assert ref is not None
        return {k: v for k, v, is_bucket in self.items(ref) if not is_bucket}


def lookup(path: str, buckets: list[bytes]) -> dict[bytes, bytes] | None:
    """The plain keys of one bucket of the bbolt file at ``path`` (None if absent); retried
    when a commit may have reused pages during the walk. Raises OSError, Corrupt."""
    for _ in range(3):
        with Reader(path) as db:
            try:
                found = db.get(buckets)
            except (Corrupt, struct.error) as e:
                if db.stale():
                    continue
                raise Corrupt(f"{path}: {e}") from None
            if not db.stale():
                return found
    raise Corrupt(f"{path}: changing too fast to read")

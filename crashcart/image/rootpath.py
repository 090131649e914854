"""Paths inside a root filesystem directory that is not our `/`.

os.path.realpath on `<rootfs>/usr/bin/vi` would follow an absolute symlink such as
`/etc/alternatives/vi` into the *host's* /etc. These helpers resolve symlinks the way the
kernel would after a chroot into the rootfs.
"""

from __future__ import annotations

import os
import posixpath

MAX_SYMLINKS = 40  # the kernel's limit (ELOOP)


def host_path(rootfs: str, path: str) -> str:
    """The host path of the rootfs-absolute `path`."""
    return os.path.join(rootfs, path.lstrip("/"))


def resolve(rootfs: str, path: str) -> str | None:
    """Resolve rootfs-absolute `path` inside `rootfs`; None if it does not exist.

    Returns the rootfs-absolute physical path (no symlinks left).
    """
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = "/" + "/".join([*done, part])
        real = host_path(rootfs, candidate)
        if os.path.islink(real):
            hops += 1
            if hops > MAX_SYMLINKS:
                return None
            target = os.readlink(real)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not os.path.lexists(real):
            return None
        done.append(part)
    return "/" + "/".join(done)


def exists(rootfs: str, path: str) -> bool:
    return resolve(rootfs, path) is not None


def relative_target(link: str, target: str) -> str:
    """The relative symlink text that makes rootfs-absolute `link` point at `target`.

    `link` must be a physical path (no symlinked directories), as os.walk yields them:
    the kernel resolves `..` from the directory the link physically sits in.
    """
    rel = posixpath.relpath(posixpath.normpath(target), posixpath.dirname(link))
    if target.endswith("/") and not rel.endswith("/"):
        rel += "/"
    return rel

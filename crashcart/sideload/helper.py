"""The sideload helper: a short-lived child that joins the container's mount namespace and
root, runs one function there, and hands back its result.

setns(mnt) is refused to multi-threaded processes and would change the caller's view for
good: a forked child does it instead. It stays in the host's pid namespace (the container
cannot see it). Results cross as a list of integers; a SideloadError crosses with its hint.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from crashcart.errors import SideloadError
from crashcart.linux import libc, procfs

ChildFn = Callable[[], list[int]]


class HelperDied(SideloadError):
    """The helper in the container's mount namespace died without a word (killed)."""


def run_in_child(fn: ChildFn) -> list[int]:
    """Fork, run fn in the child, return its result; its SideloadError re-raised (hint
    included), any other failure as a SideloadError naming it."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 1
        try:
            _open_self()
            os.write(w, b"K" + " ".join(str(int(x)) for x in fn()).encode())
            code = 0
        except SideloadError as e:
            os.write(w, b"E" + str(e).encode() + b"\0" + (e.hint or "").encode())
        except OSError as e:
            os.write(w, b"E" + f"{e.strerror or e}".encode() + _name(e))
        except BaseException as e:  # noqa: BLE001 - never unwind into the parent's code
            os.write(w, b"E" + repr(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    data = b"".join(chunks).decode(errors="replace")
    if data.startswith("K"):
        return [int(x) for x in data[1:].split()]
    if not data:
        raise HelperDied("the helper process died")
    message, _, hint = data[1:].partition("\0")
    raise SideloadError(message, hint=hint or None)


# The helper's own /proc/self/fd and fdinfo, opened before it joins the container: after its
# chroot, /proc is the container's procfs, where the helper (in the host's pid namespace)
# has no entry.
_SELF: dict[str, int] = {}


def _open_self() -> None:
    for name in ("fd", "fdinfo"):
        _SELF[name] = os.open(f"/proc/self/{name}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def mount_id(fd: int) -> int:
    """The mount an fd is on (mnt_id in /proc/self/fdinfo)."""
    info = procfs.read_text(str(fd), _SELF["fdinfo"])
    for line in info.split("\n"):
        key, _, value = line.partition(":")
        if key == "mnt_id":
            return int(value)
    raise OSError(errno.EINVAL, "no mnt_id in fdinfo")


def detach_fd_mount(fd: int) -> None:
    """Lazily unmount the mount whose root `fd` is, wherever it now sits (through the fd's
    magic link: no path the container controls)."""
    here = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchdir(_SELF["fd"])
        libc.umount2(str(fd), libc.MNT_DETACH)
    finally:
        os.fchdir(here)
        os.close(here)


def _name(e: OSError) -> bytes:
    return f" ({e.filename})".encode() if e.filename else b""

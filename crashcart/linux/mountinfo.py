"""/proc/PID/mountinfo, parsed exactly as the kernel writes it.

show_mountinfo() separates fields with single spaces and lines with "\\n", and escapes only
space, tab, newline and backslash (as \\040, \\011, \\012, \\134) in paths and sources. Any
other byte is written as is: a container that mounts a tmpfs whose source is "\\x0c" puts a
form feed in the line, which str.splitlines() and str.split() would take for a line or
field break. So: lines on "\\n" only, fields on " " only, then the octal escapes.
"""

from __future__ import annotations

import os

from crashcart.linux import procfs

SEP = " - "  # between the optional fields and the filesystem type


class Mount:
    """One line: mount ID, parent ID, device, root, mount point, options, optional fields,
    filesystem type, source and superblock options."""

    __slots__ = ("mount_id", "parent_id", "device", "root", "point", "options", "optional",
                 "fstype", "source", "super_options")  # fmt: skip

    def __init__(self, line: str) -> None:
        pre, sep, post = line.partition(SEP)
        fields, tail = pre.split(" "), post.split(" ", 2)
        if not sep or len(fields) < 6 or len(tail) < 3:
            raise ValueError(f"malformed mountinfo line: {line!r:.200}")
        self.mount_id = int(fields[0])
        self.parent_id = int(fields[1])
        major, _, minor = fields[2].partition(":")
        self.device = os.makedev(int(major), int(minor))
        self.root = unescape(fields[3])
        self.point = unescape(fields[4])
        self.options = fields[5].split(",")
        self.optional = fields[6:]
        self.fstype = unescape(tail[0])
        self.source = unescape(tail[1])
        self.super_options = tail[2]

    def __repr__(self) -> str:
        return f"Mount({self.mount_id}, {self.point!r}, {self.fstype}, {self.source!r})"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options

    @property
    def shared(self) -> bool:
        return any(f.startswith("shared:") for f in self.optional)


def unescape(field: str) -> str:
    """The kernel's octal escapes (\\ooo) back to characters."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[Mount]:
    return [Mount(line) for line in text.split("\n") if line]


def read(pid: int | str = "self", dir_fd: int | None = None) -> list[Mount]:
    """The mount table as the process sees it (mount points relative to its root); with
    dir_fd, "mountinfo" is read relative to that /proc/PID dirfd."""
    path = "mountinfo" if dir_fd is not None else f"{procfs.PROC}/{pid}/mountinfo"
    return parse(procfs.read_text(path, dir_fd, limit=16 << 20))


def mount_of(mounts: list[Mount], path: str) -> Mount | None:
    """The mount a path lives on: the last-mounted entry whose mount point is a prefix."""
    best: Mount | None = None
    for m in mounts:
        point = m.point.rstrip("/") or "/"
        if path == point or path.startswith(point.rstrip("/") + "/") or point == "/":
            if best is None or len(point) >= len(best.point.rstrip("/") or "/"):
                best = m
    return best

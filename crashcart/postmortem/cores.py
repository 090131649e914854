"""Core dumps of a container's processes, where the host keeps them.

The kernel writes a core whose core_pattern is a path (absolute, or relative: the crashing
process's cwd) in the *crashing process's* mount namespace: a container's cores land in its
own filesystem, that is in its writable layer, which the post-mortem session shows at
/target. The layer is scanned for ELF core files, so a pattern changed since the crash
does not hide them. A pattern starting with `|` pipes the core to a program: systemd-coredump
keeps them as compressed files (crashcart.postmortem.coredump), copied into the session's
tmpfs; anything else is not crashcart's to find.
"""

from __future__ import annotations

import os
import stat

from crashcart.postmortem import coredump
from crashcart.postmortem.record import Record
from crashcart.text import shell_line

PATTERN = "/proc/sys/kernel/core_pattern"
MAX_CORES = 20
SESSION_DIR = "/run/crashcart"  # the session's tmpfs (session.SESSION_DIR)


class Cores:
    def __init__(self, pattern: str, files: list[str], how: str, binary: str) -> None:
        self.pattern = pattern
        self.files = files  # paths in the session (/target/...)
        self.how = how  # why none are listed, or where they come from
        self.binary = binary
        self.copies: dict[str, bytes] = {}  # session path -> bytes (systemd-coredump's)
        self.host_files: list[str] = []

    def summary(self) -> list[str]:
        if not self.files:
            return [f"cores: {self.how}"]
        if self.copies or self.host_files:
            return self._coredump_summary()
        lines = [f"cores ({self.how}): {', '.join(self.files)}"]
        cmd = ["gdb", "-ex", "set sysroot /target", self.binary or "/target/BINARY",
               self.files[-1]]  # fmt: skip
        lines.append(f"open one with: {shell_line(cmd)}")
        return lines

    def _coredump_summary(self) -> list[str]:
        lines = [f"cores (systemd-coredump, {self.how}): {', '.join(self.files)}"]
        newest = self.files[-1]
        ext = next((e for e in coredump.DECOMPRESS if e and newest.endswith(e)), "")
        tool, cmd = coredump.DECOMPRESS[ext]
        gdb = ["gdb", "-ex", "set sysroot /target", self.binary or "/target/BINARY", "/tmp/core"]
        # The file name carries the crashed process's comm, which the container chose:
        # every word of a command the operator may paste is quoted.
        unpack = shell_line([*cmd.split(), newest])
        on_host = shell_line([*cmd.split(), f"{coredump.directory()}/{os.path.basename(newest)}"])
        lines.append(f"open one with: {unpack} > /tmp/core && {shell_line(gdb)}"
                     f" (with the toolbox's {tool}; if it has none, decompress on the host: "
                     f"{on_host})")  # fmt: skip
        return lines

    def as_json(self) -> dict[str, object]:
        return {"core_pattern": self.pattern, "files": self.files, "note": self.how,
                "host_files": self.host_files}  # fmt: skip


def find(r: Record, pattern_file: str = PATTERN) -> Cores:
    try:
        with open(pattern_file) as f:
            pattern = f.read(4096).strip()
    except OSError:
        return Cores("", [], "not kept (core_pattern unreadable)", "")
    binary = _binary(r)
    # systemd-coredump's store is read whatever the pattern is now: it may have changed
    # since the crash (as a path pattern's cores stay in the writable layer).
    kept = _systemd(r, pattern, binary)
    if kept.files or kept.host_files or "systemd-coredump" in pattern:
        return kept
    if pattern.startswith("|"):
        how = f"not kept as files: core_pattern pipes them to {pattern[1:].split()[0]}"
        return Cores(pattern, [], how, binary)
    if not r.upper:
        return Cores(pattern, [], "not kept (no writable layer)", binary)
    files = scan(r.upper)
    if files:
        return Cores(pattern, files, "in the container's writable layer", binary)
    how = f"none in the container's writable layer (core_pattern now {pattern!r}"
    return Cores(pattern, [], how + "; a container's RLIMIT_CORE is often 0)", binary)


def _systemd(r: Record, pattern: str, binary: str) -> Cores:
    found, how = coredump.find(r)
    if not found:
        how = f"none kept by systemd-coredump for it ({how}; `coredumpctl list` on the host)"
        return Cores(pattern, [], how, binary)
    exe = found[-1].exe
    out = Cores(pattern, [], how, f"/target{exe}" if exe.startswith("/") else binary)
    out.host_files = [c.host_path for c in found]
    out.copies = coredump.session_copies(found, SESSION_DIR)
    out.files = sorted(out.copies, key=lambda p: [c.name for c in found].index(
        os.path.basename(p)))  # fmt: skip
    if not out.files:
        out.how += f"; too large to copy: on the host, {', '.join(out.host_files)}"
    return out


def scan(upper: str, limit: int = 20000) -> list[str]:
    """ELF core files (e_type ET_CORE) anywhere in the writable layer, whatever pattern
    named them when they were written: the layer holds only what the container wrote."""
    found: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        dirnames.sort()
        for name in sorted(filenames):
            seen += 1
            if seen > limit:
                return found
            path = os.path.join(dirpath, name)
            if _is_core(path):
                found.append("/target" + path[len(upper.rstrip("/")) :])
    return found[-MAX_CORES:]


def _is_core(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.pread(fd, 18, 0)
    finally:
        os.close(fd)
    return len(head) == 18 and head[:4] == b"\x7fELF" and int.from_bytes(head[16:18], "little") == 4


def _binary(r: Record) -> str:
    argv = r.argv()
    return f"/target{argv[0]}" if argv and argv[0].startswith("/") else ""

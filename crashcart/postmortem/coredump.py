"""Cores that systemd-coredump keeps (core_pattern `|/lib/systemd/systemd-coredump %P ...`).

systemd-coredump (src/coredump/coredump.c) stores each core, compressed, as
``/var/lib/systemd/coredump/core.COMM.UID.BOOTID.PID.TIMESTAMP[.zst|.lz4|.xz]`` (COMM
escaped, BOOTID 32 hex digits, PID the host PID, TIMESTAMP microseconds since the epoch),
sets ``user.coredump.{pid,uid,gid,signal,timestamp,rlimit,hostname,comm,exe}`` xattrs on
it, and logs a journal entry with COREDUMP_PID, COREDUMP_CGROUP, COREDUMP_HOSTNAME and
COREDUMP_FILENAME. A container's cores are found by the journal's COREDUMP_CGROUP (it names
the container's ID) when journalctl answers, else by the file's time lying between the
container's start and finish and, where the xattr is set, its hostname.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import subprocess
import time

from crashcart.postmortem.record import Record

DIR = "/var/lib/systemd/coredump"
NAME = re.compile(
    r"core\.(?P<comm>.+)\.(?P<uid>\d+)\.(?P<boot>[0-9a-f]{32})\.(?P<pid>\d+)\."
    r"(?P<usec>\d+)(?P<ext>\.zst|\.lz4|\.xz)?"
)
# How the toolbox decompresses each (systemd-coredump writes one of these).
DECOMPRESS = {".zst": ("zstd", "zstd -dc"), ".lz4": ("lz4", "lz4 -dc"), ".xz": ("xz", "xz -dc"),
              "": ("cat", "cat")}  # fmt: skip
SLACK_BEFORE, SLACK_AFTER = 2, 30  # seconds: record times have second precision
MAX_COPY = 64 << 20  # compressed bytes copied into the session


def directory() -> str:
    return os.environ.get("CRASHCART_COREDUMP_DIR", DIR)


class Core:
    def __init__(self, name: str, fields: dict[str, str]) -> None:
        self.name = name
        self.comm = fields["comm"]
        self.pid = int(fields["pid"])
        self.usec = int(fields["usec"])
        self.ext = fields.get("ext") or ""
        self.exe = ""  # the crashed program, as its container saw it (xattr user.coredump.exe)

    @property
    def host_path(self) -> str:
        return os.path.join(directory(), self.name)


def parse_name(name: str) -> Core | None:
    m = NAME.fullmatch(name)
    return Core(name, m.groupdict()) if m else None


STAMP = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.\d+)?\s*(Z|[+-]\d\d:?\d\d)?")


def _seconds(stamp: str) -> int | None:
    """Seconds since the epoch of a runtime's time stamp: RFC 3339 with nanoseconds
    (Docker, containerd), or Go's `2006-01-02 15:04:05.999 -0700 MST` (Podman)."""
    m = STAMP.match(stamp)
    if not m:
        return None
    try:
        seconds = calendar.timegm(time.strptime(f"{m[1]}T{m[2]}", "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    zone = (m[3] or "Z").replace(":", "")
    if zone != "Z":
        sign = -1 if zone[0] == "+" else 1
        seconds += sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
    return seconds


def _xattr(path: str, key: str) -> str | None:
    try:
        return os.getxattr(path, f"user.coredump.{key}", follow_symlinks=False).decode(
            errors="replace"
        )
    except OSError:
        return None


def in_window(r: Record, names: list[str]) -> list[Core]:
    """Cores written while the container lived (a few seconds' slack either side)."""
    start, end = _seconds(r.started_at), _seconds(r.finished_at)
    if start is None or end is None:
        return []
    lo, hi = (start - SLACK_BEFORE) * 10**6, (end + SLACK_AFTER) * 10**6
    return sorted((c for c in map(parse_name, names) if c and lo <= c.usec <= hi),
                  key=lambda c: c.usec)  # fmt: skip


def by_time(r: Record, names: list[str]) -> list[Core]:
    """Cores of the container's life whose hostname xattr, where set, is the container's."""
    out = []
    for core in in_window(r, names):
        host = _xattr(core.host_path, "hostname")
        if host is None or not r.hostname or host == r.hostname:
            out.append(core)
    return out


def from_journal(r: Record, lines: list[str]) -> list[Core]:
    """Cores whose journal entry (journalctl -o json) names the container in its cgroup."""
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or r.id not in str(entry.get("COREDUMP_CGROUP", "")):
            continue
        core = parse_name(os.path.basename(str(entry.get("COREDUMP_FILENAME") or "")))
        if core is not None:
            out.append(core)
    return sorted(out, key=lambda c: c.usec)


def journal(r: Record) -> list[str]:
    if shutil.which("journalctl") is None or not r.id:
        return []
    start = _seconds(r.started_at)
    since = ["--since", f"@{start - SLACK_BEFORE}"] if start else []
    try:
        proc = subprocess.run(
            ["journalctl", "-q", "--no-pager", "-o", "json", *since,
             "MESSAGE_ID=fc2e22bc6ee647b6b90729ab34a250b1"],  # systemd's "process dumped core"
            capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def find(r: Record) -> tuple[list[Core], str]:
    """The container's cores and how they were matched."""
    try:
        names = sorted(os.listdir(directory()))
    except OSError:
        return [], f"{directory()} is missing"
    candidates = {c.name for c in in_window(r, names)}
    if not candidates:  # the journal is asked only when a core is from the right time
        return [], "none from the container's life"
    found = [c for c in from_journal(r, journal(r)) if c.name in candidates]
    how = "matched by the journal's COREDUMP_CGROUP"
    if not found:
        found = by_time(r, names)
        how = "matched by time (and hostname) against the container's life"
    for core in found:
        core.exe = _xattr(core.host_path, "exe") or ""
    return found, how


def session_copies(found: list[Core], session_dir: str) -> dict[str, bytes]:
    """The compressed cores, copied into the session's tmpfs (newest first, up to MAX_COPY)."""
    out: dict[str, bytes] = {}
    total = 0
    for core in reversed(found):
        try:
            with open(core.host_path, "rb") as f:
                data = f.read(MAX_COPY + 1)
        except OSError:
            continue
        if total + len(data) > MAX_COPY:
            break
        total += len(data)
        out[f"{session_dir}/{core.name}"] = data
    return out

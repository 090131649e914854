"""The last lines of a container's log, from the file its runtime keeps: Docker's json-file
(one JSON object a line: log, stream, time), the CRI/Podman k8s-file format
(`TIME STREAM F|P text`), or raw text (ctr --log-uri file://)."""

from __future__ import annotations

import os

from crashcart import fastjson

TAIL_BYTES = 256 << 10
LINES = 100


def tail(path: str, fmt: str, lines: int = LINES) -> str | None:
    """The last `lines` lines as `TIME STREAM text` (raw text as is); None: no such log."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, TAIL_BYTES, max(0, size - TAIL_BYTES))
    finally:
        os.close(fd)
    raw = data.split(b"\n")
    if size > TAIL_BYTES:
        raw = raw[1:]  # the first one is cut
    out = _cri_lines(raw) if fmt == "k8s-file" else [_line(r, fmt) for r in raw if r]
    return "".join(out[-lines:])


def _cri_lines(raw: list[bytes]) -> list[str]:
    """CRI log entries `TIME STREAM P|F text`: the kubelet splits a long line into P
    (partial) entries ended by an F one of the same stream; joined back into one line that
    keeps the time of its first part."""
    out: list[str] = []
    pending: dict[str, tuple[str, list[str]]] = {}
    for entry in filter(None, raw):
        fields = entry.split(b" ", 3)
        if len(fields) != 4 or fields[2] not in (b"P", b"F"):
            out.append(entry.decode(errors="replace") + "\n")
            continue
        time, stream, tag, text = (f.decode(errors="replace") for f in fields)
        first, parts = pending.pop(stream, (time, []))
        parts.append(text)
        if tag == "P":
            pending[stream] = (first, parts)
        else:
            out.append(f"{first} {stream} {''.join(parts)}\n")
    # A container killed mid-line leaves a partial entry with no F: keep what it wrote.
    out += [f"{first} {stream} {''.join(parts)}\n" for stream, (first, parts) in pending.items()]
    return out


def _line(raw: bytes, fmt: str) -> str:
    if fmt == "json-file":
        try:
            obj = fastjson.loads(raw)
            text = str(obj.get("log", ""))
            return f"{obj.get('time', '')} {obj.get('stream', '')} {text}" + (
                "" if text.endswith("\n") else "\n"
            )
        except (ValueError, AttributeError):
            pass
    return raw.decode(errors="replace") + "\n"

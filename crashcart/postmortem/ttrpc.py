"""Just enough ttrpc (containerd's RPC over a unix socket) and protobuf to ask a task's
shim for its state, with the standard library: containerd keeps a stopped task's exit
status only there (in the shim's memory).

Framing (github.com/containerd/ttrpc, channel.go): a 10-byte header (length u32 BE, stream
id u32 BE, type u8: 1 request, 2 response; flags u8), then a protobuf Request {service 1,
method 2, payload 3, timeout_nano 4} or Response {status 1, payload 2}. The shim's service
is containerd.task.v2.Task; State takes StateRequest {id 1, exec_id 2} and answers
StateResponse {id 1, bundle 2, pid 3, status 4, stdin 5, stdout 6, stderr 7, terminal 8,
exit_status 9, exited_at 10 (Timestamp {seconds 1, nanos 2}), exec_id 11}.
"""

from __future__ import annotations

import _socket
import struct

SERVICE = "containerd.task.v2.Task"
STATUS = {0: "unknown", 1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "pausing"}
MAX_MESSAGE = 4 << 20

Fields = dict[int, list[int | bytes]]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field_bytes(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def field_int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def parse(data: bytes) -> Fields:
    """Field number -> values (ints for varints, bytes for length-delimited)."""
    out: Fields = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 1:
            value, i = struct.unpack_from("<Q", data, i)[0], i + 8
        elif wire == 5:
            value, i = struct.unpack_from("<I", data, i)[0], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def first_bytes(fields: Fields, number: int) -> bytes:
    value = fields.get(number, [b""])[0]
    return value if isinstance(value, bytes) else b""


def first_int(fields: Fields, number: int) -> int:
    value = fields.get(number, [0])[0]
    return value if isinstance(value, int) else 0


def call(address: str, method: str, payload: bytes, timeout: float = 3.0) -> bytes:
    """One unary call; the response's payload. OSError or ValueError when it fails."""
    request = field_bytes(1, SERVICE.encode()) + field_bytes(2, method.encode())
    request += field_bytes(3, payload) + field_int(4, int(timeout * 1e9))
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(address)
        s.sendall(struct.pack(">IIBB", len(request), 1, 1, 0) + request)
        length, stream, kind, _ = struct.unpack(">IIBB", _recv(s, 10))
        if length > MAX_MESSAGE or kind != 2 or stream != 1:
            raise ValueError("unexpected ttrpc answer")
        body = parse(_recv(s, length))
    finally:
        s.close()
    status = parse(first_bytes(body, 1))
    if first_int(status, 1):
        message = first_bytes(status, 2).decode(errors="replace")
        raise OSError(f"shim answered {method}: {message}")
    return first_bytes(body, 2)


def _recv(s: _socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ValueError("ttrpc connection closed")
        data += chunk
    return data


def task_state(address: str, task_id: str) -> dict[str, object]:
    """The shim's State of a task's init process: status, pid, exit_status, exited_at
    (seconds since the epoch), stdout (the log URI, for `ctr run --log-uri`)."""
    fields = parse(call(address, "State", field_bytes(1, task_id.encode())))
    return {
        "status": STATUS.get(first_int(fields, 4), "unknown"), "pid": first_int(fields, 3),
        "exit_status": first_int(fields, 9),
        "exited_at": first_int(parse(first_bytes(fields, 10)), 1),
        "stdout": first_bytes(fields, 6).decode(errors="replace"),
    }  # fmt: skip

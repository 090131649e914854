"""The audit trail: who ran what, in which container, with which toolbox, and how it ended.

crashcart runs as root inside other people's containers, so every session, mount, unmount,
exec and cleanup leaves two JSON lines in /var/log/crashcart/audit.log: `start`, written
before the container is touched, and `end` (same `id`), written when crashcart is done. A
start without an end is a crashcart that was killed. When /dev/log exists, the same lines
go to syslog (facility authpriv). The log is rotated by size (audit.log.1 ... .N).

Configuration, /etc/crashcart/crashcart.conf (`key = value`, `#` comments):

    audit_dir = /var/log/crashcart   where the log and the toolbox digest cache live
    audit_required = no              yes: refuse to run when the start record cannot be written
    audit_max_bytes = 10485760       rotate once the log would grow past this
    audit_keep = 5                   rotated files kept
    audit_syslog = /dev/log          the syslog socket, or `off`

CRASHCART_CONFIG names another file; CRASHCART_AUDIT_DIR and CRASHCART_AUDIT_REQUIRED
(yes/no) override the file (sudo's env_reset drops them). Imports only os and time (and
the C JSON escaper); the toolbox digest is cached by inode, size and mtime, and computed,
once per image file, after the session rather than before it.
"""

from __future__ import annotations

import os
import sys
import time

from crashcart.errors import EXIT_CRASHCART, CrashcartError, TargetError, UsageError
from crashcart.jsonout import dumps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from crashcart.cli import Args
    from crashcart.targets.model import Target

CONFIG = "/etc/crashcart/crashcart.conf"
DEFAULT_DIR = "/var/log/crashcart"
from crashcart.defaults import default_image  # noqa: E402

LOG_NAME = "audit.log"
DIGESTS = "toolbox-digests"
AUDITED = ("session", "mount", "unmount", "exec", "cleanup")
WITH_TOOLBOX = ("session", "mount", "exec")
NO_LOGINUID = "4294967295"  # (uid_t)-1: no login session (a daemon, a container)
LOG_AUTHPRIV_NOTICE = (10 << 3) | 5


class Config:
    def __init__(self) -> None:
        self.path = CONFIG
        self.dir = DEFAULT_DIR
        self.required = False
        self.max_bytes = 10 << 20
        self.keep = 5
        self.syslog = "/dev/log"

    @property
    def log(self) -> str:
        return os.path.join(self.dir, LOG_NAME)


def _yes_no(value: str, where: str) -> bool:
    if value.lower() in ("yes", "true", "on", "1"):
        return True
    if value.lower() in ("no", "false", "off", "0"):
        return False
    raise UsageError(f"{where}: expected yes or no, got {value!r}")


def _number(value: str, where: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{where}: expected a positive number, got {value!r}")
    return int(value)


def load_config() -> Config:
    """The configuration file (if any), then the environment's overrides."""
    cfg = Config()
    cfg.path = os.environ.get("CRASHCART_CONFIG") or CONFIG
    try:
        with open(cfg.path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    except OSError as e:
        raise CrashcartError(f"cannot read {cfg.path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        _setting(cfg, line, f"{cfg.path}:{n}")
    if os.environ.get("CRASHCART_AUDIT_DIR"):
        cfg.dir = os.environ["CRASHCART_AUDIT_DIR"]
    if os.environ.get("CRASHCART_AUDIT_REQUIRED"):
        cfg.required = _yes_no(os.environ["CRASHCART_AUDIT_REQUIRED"], "CRASHCART_AUDIT_REQUIRED")
    return cfg


def _setting(cfg: Config, line: str, where: str) -> None:
    line = line.split("#", 1)[0].strip()
    if not line:
        return
    key, eq, value = (part.strip() for part in line.partition("="))
    if not eq or not value:
        raise UsageError(f"{where}: expected `key = value`, got {line!r}")
    if key == "audit_dir":
        cfg.dir = value
    elif key == "audit_required":
        cfg.required = _yes_no(value, where)
    elif key == "audit_max_bytes":
        cfg.max_bytes = _number(value, where)
    elif key == "audit_keep":
        cfg.keep = _number(value, where)
    elif key == "audit_syslog":
        cfg.syslog = "" if value == "off" else value
    # Other keys belong to other parts of crashcart (or to a newer version): ignored here.


# ---------------------------------------------------------------------------------------------
# Writing


def append(cfg: Config, record: dict[str, Any]) -> None:
    """One JSON line, appended in a single write(2) (O_APPEND: concurrent crashcarts'
    lines never interleave); rotates first when the log would outgrow audit_max_bytes."""
    line = (dumps(record) + "\n").encode()
    fd = _open_log(cfg)
    try:
        if os.fstat(fd).st_size + len(line) > cfg.max_bytes:
            fd = _rotate(cfg, fd)
        if os.write(fd, line) != len(line):
            raise OSError(28, "short write to the audit log (disk full?)")
    finally:
        os.close(fd)


def _open_log(cfg: Config) -> int:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
    try:
        return os.open(cfg.log, flags, 0o600)
    except FileNotFoundError:
        os.makedirs(cfg.dir, 0o700, exist_ok=True)
        return os.open(cfg.log, flags, 0o600)


def _rotate(cfg: Config, fd: int) -> int:
    """audit.log -> audit.log.1 -> ... -> audit.log.KEEP, under a lock; a crashcart that
    waited for the lock while another rotated finds a fresh log and does not rotate again."""
    import fcntl

    lock = os.open(os.path.join(cfg.dir, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mine = os.fstat(fd)
        try:
            current = os.stat(cfg.log)
        except FileNotFoundError:
            current = mine
        if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            for i in range(cfg.keep - 1, 0, -1):
                try:
                    os.rename(f"{cfg.log}.{i}", f"{cfg.log}.{i + 1}")
                except FileNotFoundError:
                    pass
            os.rename(cfg.log, f"{cfg.log}.1")
        os.close(fd)
        return _open_log(cfg)
    finally:
        os.close(lock)


def send_syslog(cfg: Config, record: dict[str, Any]) -> None:
    """The record as one datagram to the syslog socket, the way libc's syslog(3) frames it.
    Best effort: the file is the audit trail, syslog a copy (a full or absent daemon must
    not block or fail a session)."""
    if not cfg.syslog or not os.path.exists(cfg.syslog):
        return
    import _socket

    stamp = time.strftime("%b %e %H:%M:%S", time.localtime())
    msg = f"<{LOG_AUTHPRIV_NOTICE}>{stamp} crashcart[{os.getpid()}]: {dumps(record)}"
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        s.setblocking(False)
        s.connect(cfg.syslog)
        s.send(msg.encode()[:8192])
    except OSError:
        pass
    finally:
        s.close()


def unfinished(cfg: Config, tail: int = 1 << 20) -> list[dict[str, Any]]:
    """Start records (in the last `tail` bytes of the current log) without an end record
    whose crashcart is gone: runs that were killed, which may have left a toolbox mounted."""
    from crashcart import fastjson

    try:
        with open(cfg.log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - tail))
            lines = f.read().splitlines()[1 if tail and f.tell() > tail else 0 :]
    except OSError:
        return []
    starts: dict[str, dict[str, Any]] = {}
    for line in lines:
        try:
            rec = fastjson.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("event") == "start":
            starts[str(rec.get("id"))] = rec
        elif isinstance(rec, dict) and rec.get("event") == "end":
            starts.pop(str(rec.get("id")), None)
    return [r for r in starts.values() if not _alive(r.get("pid"))]


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"crashcart" in f.read()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The toolbox's digest, cached


def toolbox_digest(cfg: Config, path: str, compute: bool) -> str | None:
    """sha256 of the image file, from the cache when its device, inode, size and mtime are
    those hashed before; hashed (140 MiB: ~0.45 s here) only when `compute`."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not (st.st_mode & 0o170000 == 0o100000):  # not a regular file: a block device
        return None
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cache = os.path.join(cfg.dir, DIGESTS)
    entries = _read_cache(cache)
    if key in entries:
        return entries[key][0]
    if not compute:
        return None
    digest = _sha256(path, key)
    if digest is not None:
        entries[key] = (digest, os.path.abspath(path))
        _write_cache(cache, entries)
    return digest


def _read_cache(cache: str) -> dict[str, tuple[str, str]]:
    entries: dict[str, tuple[str, str]] = {}
    try:
        with open(cache, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.rstrip("\n").split(" ", 2)
                if len(parts) == 3:
                    entries[parts[0]] = (parts[1], parts[2])
    except OSError:
        pass
    return entries


def _write_cache(cache: str, entries: dict[str, tuple[str, str]]) -> None:
    keep = list(entries.items())[-16:]
    tmp = f"{cache}.{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(cache), 0o700, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{k} {d} {p}\n" for k, (d, p) in keep)
        os.replace(tmp, cache)
    except OSError:
        pass  # a cache: the next run hashes again


def _sha256(path: str, key: str) -> str | None:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" != key:
                return None  # replaced meanwhile
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return f"sha256:{h.hexdigest()}"


# ---------------------------------------------------------------------------------------------
# One audited run


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def operator() -> dict[str, Any]:
    """Who is behind this root: the kernel's login uid (set at login, kept across sudo and
    su) and what sudo says."""
    try:
        with open("/proc/self/loginuid") as f:
            loginuid: str | None = f.read().strip()
    except OSError:
        loginuid = None
    sudo_uid = os.environ.get("SUDO_UID", "")
    return {
        "uid": os.getuid(),
        "loginuid": int(loginuid) if loginuid and loginuid != NO_LOGINUID else None,
        "sudo_user": os.environ.get("SUDO_USER") or None,
        "sudo_uid": int(sudo_uid) if sudo_uid.isdigit() else None,
        "tty": os.ttyname(0) if os.isatty(0) else None,
    }


def describe_target(spec: str | None, t: Target | None) -> dict[str, Any] | None:
    if spec is None:
        return None
    out: dict[str, Any] = {"spec": spec}
    if t is not None:
        out |= {
            "runtime": t.runtime,
            "id": t.id,
            "name": t.name,
            "image": t.image,
            "pid": t.pid,
            "namespace": t.namespace,
            "ref": t.ref,
        }
    return out


class Run:
    """The start and end records of one crashcart run."""

    def __init__(self, cfg: Config, args: Args) -> None:
        self.cfg = cfg
        self.args = args
        self.id = os.urandom(8).hex()
        self.pid = os.getpid()
        self.started = time.monotonic()
        self.image: str | None = None
        self.refused = False
        if args.action in WITH_TOOLBOX:
            # crashcart.attach.options.default_image(), not imported: attach is not ours
            image = args.image or default_image()
            self.image = os.path.abspath(image)

    def start(self, target: Target | None) -> None:
        a = self.args
        record: dict[str, Any] = {
            "time": _now(),
            "event": "start",
            "id": self.id,
            "pid": self.pid,
            "host": os.uname().nodename,
            "operator": operator(),
            "action": a.action,
            "mode": "session" if a.action == "session" else "sideload",
            "target": describe_target(a.target, target),
            "toolbox": self._toolbox(compute=False),
            "options": {
                "tty": a.tty,
                "caps": a.caps,
                "user": a.user,
                "workdir": a.workdir,
                "cgroup": a.join_cgroup,
                "force": a.force,
                "record": a.record,
                "record_input": a.record_input,
            },
            "command": a.command,
            "argv": sys.argv,
        }
        self._write(record, before=True)

    def end(self, status: int, error: str | None) -> None:
        if os.getpid() != self.pid or self.refused:
            return  # a forked child unwinding (only crashcart ends the record), or no start
        record: dict[str, Any] = {
            "time": _now(),
            "event": "end",
            "id": self.id,
            "pid": self.pid,
            "status": status,
            "duration_s": round(time.monotonic() - self.started, 3),
            "error": error,
        }
        if self.image is not None:
            record["toolbox"] = self._toolbox(compute=True)
        self._write(record, before=False)

    def _toolbox(self, compute: bool) -> dict[str, Any] | None:
        if self.image is None:
            return None
        return {"path": self.image, "digest": toolbox_digest(self.cfg, self.image, compute)}

    def _write(self, record: dict[str, Any], before: bool) -> None:
        send_syslog(self.cfg, record)
        try:
            append(self.cfg, record)
        except OSError as e:
            what = f"cannot write the audit record to {self.cfg.log}: {e.strerror or e}"
            if before and self.cfg.required:
                self.refused = True
                raise CrashcartError(
                    f"{what}; refusing to run (audit_required)",
                    hint=f"fix the audit log, or set audit_required = no in {self.cfg.path}",
                ) from None
            print(f"crashcart: warning: {what}", file=sys.stderr)


def around(args: Args, run: Callable[[Args, Target | None], int]) -> int:
    """Run `run(args, target)` between a start and an end record. The target is resolved
    here, so the start record names it before anything touches the container."""
    rec = Run(load_config(), args)
    target = None
    code, error = EXIT_CRASHCART, None
    try:
        try:
            if args.target is not None and not getattr(args, "replay", False):
                target = _resolve(args)
        except TargetError:
            if args.action != "session":
                raise
            # no running container: the session looks for a dead one (post-mortem)
        finally:
            rec.start(target)
        code = run(args, target)
        return code
    except CrashcartError as e:
        code, error = e.exit_code, e.message
        raise
    except KeyboardInterrupt:
        code, error = 130, "interrupted"
        raise
    except BaseException as e:
        error = f"internal error: {type(e).__name__}: {e}"
        raise
    finally:
        rec.end(code, error)


def _resolve(args: Args) -> Target:
    from crashcart import targets

    assert args.target is not None
    return targets.resolve(targets.parse_spec(args.target, args.runtime))

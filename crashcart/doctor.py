"""`crashcart doctor`: what this host offers crashcart, and what each missing piece disables.

Every check probes the real thing (a syscall, a socket, a mount of the toolbox), never a
version number. One line per check: ✓ present, ✗ missing and needed (with the fix), !
missing but only a part of crashcart suffers. Exit status 0 only without any ✗.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from crashcart import __version__
from crashcart.errors import CrashcartError
from crashcart.linux.fd import closing

OK, FAIL, WARN = "ok", "fail", "warn"
SYMBOLS = {OK: "✓", FAIL: "✗", WARN: "!"}
ASCII = {OK: "+", FAIL: "x", WARN: "!"}


class Check:
    def __init__(self, name: str, status: str, detail: str, fix: str | None = None) -> None:
        self.name = name
        self.status = status
        self.detail = detail
        self.fix = fix

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def _errno_text(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno)) + f" ({e.strerror})"


# ---------------------------------------------------------------------------------------------
# The kernel


def check_root() -> Check:
    if os.geteuid() == 0:
        return Check("root", OK, "running as root")
    return Check(
        "root",
        FAIL,
        "not root: crashcart joins namespaces and mounts, every check below that needs root fails",
        "run it with sudo",
    )


def check_mount_api() -> Check:
    from crashcart.linux import libc

    try:
        os.close(libc.fsopen("tmpfs"))
    except OSError as e:
        fix = "run as root" if e.errno == errno.EPERM else "crashcart needs Linux >= 5.2"
        return Check("mount API", FAIL, f"fsopen: {_errno_text(e)}; nothing can be mounted", fix)
    return Check("mount API", OK, "fsopen/fsmount/move_mount/mount_setattr")


def check_erofs_file() -> Check:
    """A zero-filled regular file as erofs source: EINVAL (no superblock) means the kernel
    took the file (file-backed erofs, Linux >= 6.12); ENOTBLK means it wants a block
    device. The file is unlinked at once and mounted through /proc/self/fd."""
    from crashcart.linux import libc

    name = "file-backed erofs"
    try:
        fs = libc.fsopen("erofs")
    except OSError as e:
        if e.errno == errno.ENODEV:
            return Check(
                name,
                WARN,
                "this kernel has no erofs: use a squashfs or ext4 toolbox "
                "(crashcart image build --format squashfs)",
            )
        return Check(name, WARN, f"fsopen(erofs): {_errno_text(e)}")
    path = f"/var/tmp/.crashcart-doctor-{os.getpid()}"
    with closing(fs):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with closing(fd):  # a failed unlink or ftruncate used to leak it
                os.unlink(path)
                os.ftruncate(fd, 8192)
                result = _erofs_source_errno(fs, fd)
        except OSError as e:
            return Check(name, WARN, f"cannot probe ({path}: {e.strerror})")
    if result == errno.ENOTBLK:
        return Check(
            name,
            WARN,
            "erofs needs a block device on this kernel (< 6.12): erofs "
            "toolboxes mount through a loop device",
        )
    return Check(name, OK, "erofs mounts straight from the image file: no loop device")


def _erofs_source_errno(fs: int, fd: int) -> int:
    from crashcart.linux import libc

    try:
        libc.fsconfig_string(fs, "source", f"/proc/self/fd/{fd}")
        libc.fsconfig_create(fs)
    except OSError as e:
        return e.errno or 0
    return 0


def check_loop() -> Check:
    try:
        os.close(os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        fix = "run as root" if e.errno in (errno.EACCES, errno.EPERM) else "modprobe loop"
        return Check(
            "loop devices",
            WARN,
            f"/dev/loop-control: {e.strerror}; squashfs and ext4 "
            "toolboxes (and erofs without file-backed mounts) cannot be mounted",
            fix,
        )
    return Check("loop devices", OK, "/dev/loop-control (squashfs, ext4 toolboxes)")


def check_pidfd() -> Check:
    from crashcart.linux import libc

    try:
        with closing(os.pidfd_open(os.getpid())) as fd:
            libc.pidfd_send_signal(fd, 0)
    except OSError as e:
        return Check(
            "pidfd",
            FAIL,
            f"{_errno_text(e)}: the target cannot be pinned, so crashcart does not attach",
            "crashcart needs Linux >= 5.3",
        )
    return Check("pidfd", OK, "pidfd_open, pidfd_send_signal (the target is pinned)")


def check_openat2() -> Check:
    from crashcart.linux import libc

    try:
        fd = libc.openat2(
            libc.AT_FDCWD,
            "/",
            os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC,
            libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS,
        )
        os.close(fd)
    except OSError as e:
        return Check(
            "openat2",
            FAIL,
            f"{_errno_text(e)}: paths inside containers cannot be "
            "resolved safely (sessions, -m, -e)",
            "crashcart needs Linux >= 5.6",
        )
    return Check("openat2", OK, "RESOLVE_IN_ROOT, RESOLVE_NO_SYMLINKS")


def check_cgroups() -> Check:
    from crashcart.linux import cgroups

    found = cgroups.mounts()
    v2 = [point for options, point in found if options == {"cgroup2"}]
    v1 = [point for options, point in found if options != {"cgroup2"}]
    if not found:
        return Check(
            "cgroups",
            WARN,
            "no cgroup hierarchy mounted: sessions cannot join the target's cgroups",
            "mount cgroup2 at /sys/fs/cgroup, or use --no-cgroup",
        )
    if v1 and v2:
        layout = f"hybrid: {len(v1)} v1 hierarchies, cgroup2 at {v2[0]}"
    elif v1:
        layout = f"v1: {len(v1)} hierarchies"
    else:
        layout = f"unified (v2) at {v2[0]}"
    return Check("cgroups", OK, f"{layout} (sessions join the target's cgroups)")


def check_userns() -> Check:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            limit = int(f.read())
    except (OSError, ValueError):
        limit = 0 if not os.path.exists("/proc/self/ns/user") else -1
    if limit == 0:
        return Check(
            "user namespaces",
            WARN,
            "disabled (max_user_namespaces 0): no container "
            "here can have its own, so nothing is lost",
        )
    return Check("user namespaces", OK, "containers with their own user namespace are entered")


# ---------------------------------------------------------------------------------------------
# Runtimes


def _version(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    line = (proc.stdout or proc.stderr).strip().splitlines()
    return line[0] if proc.returncode == 0 and line else None


def _connects(path: str) -> str | None:
    """None when a unix stream socket at `path` accepts, else why not."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(2)
        s.connect(path)
        return None
    except OSError as e:
        return e.strerror or str(e)
    finally:
        s.close()


def check_docker() -> Check:
    from crashcart.targets import docker, unixhttp

    sock = docker.socket_path()
    if not os.path.exists(sock):
        return Check("docker", WARN, f"not found (no {sock})")
    try:
        status, body = unixhttp.get(sock, "/version", timeout=3)
    except (OSError, CrashcartError) as e:
        fix = "run as root" if isinstance(e, PermissionError) else "start dockerd"
        return Check(
            "docker", WARN, f"{sock} does not answer ({e}): docker containers cannot be found", fix
        )
    if status != 200 or not isinstance(body, dict):
        return Check("docker", WARN, f"{sock} answered HTTP {status}")
    return Check(
        "docker", OK, f"Docker {body.get('Version')} (API {body.get('ApiVersion')}) at {sock}"
    )


def check_podman() -> Check:
    from crashcart.targets import podman

    version = _version(["podman", "--version"])
    if not podman.available():
        detail = "installed, no containers storage yet" if version else "not found"
        return Check("podman", WARN, f"{detail} ({podman.graph_root()})")
    return Check("podman", OK, f"{version or 'podman (no CLI)'}, storage {podman.graph_root()}")


def check_containerd() -> Check:
    from crashcart.targets import containerd

    sock = "/run/containerd/containerd.sock"
    version = _version(["containerd", "--version"])
    if version is not None:  # containerd github.com/containerd/containerd 1.6.20 <commit>
        version = " ".join(version.split()[::2][:2])
    if version is None and not os.path.exists(sock):
        return Check("containerd", WARN, "not found")
    why = _connects(sock)
    if why is not None:
        return Check(
            "containerd",
            WARN,
            f"{version or 'containerd'}: {sock}: {why}; its running tasks are still found",
            "start containerd",
        )
    tasks = "tasks " + containerd.task_root()
    return Check("containerd", OK, f"{version or 'containerd'}, {sock} answers, {tasks}")


def check_runc() -> Check:
    from crashcart.targets import runc

    version = _version(["runc", "--version"])
    if version is None:
        return Check("runc", WARN, "not found")
    where = f"state in {runc.root()}" if runc.available() else f"no {runc.root()} yet"
    return Check("runc", OK, f"{version}, {where}")


# ---------------------------------------------------------------------------------------------
# The toolbox image and the audit log


def check_image(path: str) -> list[Check]:
    import stat

    if not os.path.exists(path):
        return [
            Check(
                "toolbox image",
                FAIL,
                f"{path} does not exist",
                f"crashcart image build --output {path}",
            )
        ]
    st = os.stat(path)
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return [
            Check(
                "toolbox image",
                FAIL,
                f"{path} is writable by others than root, and its "
                "programs run as root in containers",
                f"chown root {path} && chmod go-w {path}",
            )
        ]
    mode = f"owner root, mode {stat.S_IMODE(st.st_mode):04o}"
    out = [
        Check(
            "toolbox image",
            OK,
            f"{path}, {st.st_size / 2**20:.1f} MiB, {mode}: only root may change it",
        )
    ]
    out.append(_mountable(path))
    out += _manifest(path)
    return out


def _mountable(path: str) -> Check:
    from crashcart import toolbox

    if os.geteuid() != 0:
        return Check("toolbox mount", FAIL, "not tried: mounting needs root", "run it with sudo")
    try:
        image = toolbox.open_toolbox(path)
    except CrashcartError as e:
        return Check("toolbox mount", FAIL, str(e), e.hint or "rebuild it: crashcart image build")
    how = f"through {image.loop_device}" if image.loop_device else "file-backed"
    image.close()  # a detached mount: closing its fd unmounts it
    return Check("toolbox mount", OK, f"{image.fmt} mounts here ({how})")


def _manifest(path: str) -> list[Check]:
    from crashcart.image import manifest

    try:
        data = manifest.read_manifest(path)
    except CrashcartError as e:
        return [
            Check(
                "toolbox manifest",
                WARN,
                f"{e}: `crashcart image info` and check-tools know nothing of it",
            )
        ]
    tools = len(data.get("tools", []))
    out = [
        Check(
            "toolbox manifest",
            OK,
            f"recipe {data.get('recipe')}, built "
            f"{data.get('built')}, {len(data.get('packages', []))} packages, {tools} tools",
        )
    ]
    reloc = data.get("relocation", {})
    if data.get("prefix") != "/dev/crashcart" or not reloc:
        out.append(
            Check(
                "toolbox relocated",
                WARN,
                "not relocated for /dev/crashcart: sideload "
                "(-m, -e) works only in glibc containers",
                "crashcart image build (relocates by default)",
            )
        )
    else:
        problems = len(reloc.get("not_relocated", []))
        out.append(
            Check(
                "toolbox relocated",
                OK,
                f"for /dev/crashcart: {reloc.get('elf_patched')}"
                f" ELF files, {problems} left as they are",
            )
        )
    return out


def check_audit(image: str) -> list[Check]:
    from crashcart import audit

    try:
        cfg = audit.load_config()
    except CrashcartError as e:
        return [Check("audit log", FAIL, str(e), "fix the configuration file")]
    try:
        os.close(audit._open_log(cfg))
    except OSError as e:
        status = FAIL if cfg.required else WARN
        effect = "every run is refused (audit_required)" if cfg.required else "runs unrecorded"
        return [
            Check(
                "audit log",
                status,
                f"{cfg.log}: {e.strerror}: {effect}",
                f"mkdir -p -m 0700 {cfg.dir}, or set audit_dir in {cfg.path}",
            )
        ]
    policy = "refuse when unwritable" if cfg.required else "warn when unwritable"
    out = [
        Check(
            "audit log",
            OK,
            f"{cfg.log} writable (rotated at {cfg.max_bytes >> 20} MiB, {cfg.keep} kept; {policy})",
        )
    ]
    killed = audit.unfinished(cfg)
    if killed:
        last = killed[-1]
        target = (last.get("target") or {}).get("spec", "-")
        out.append(Check("unfinished runs", WARN, f"{len(killed)} crashcart run(s) were killed "
                         f"before their end record (last: {last.get('time')} {last.get('action')} "
                         f"{target}): they may have left a toolbox mounted",
                         "crashcart status (and crashcart cleanup)"))  # fmt: skip
    if cfg.syslog and os.path.exists(cfg.syslog):
        out.append(Check("syslog", OK, f"records are copied to {cfg.syslog} (authpriv)"))
    else:
        why = "off" if not cfg.syslog else f"no {cfg.syslog}"
        out.append(Check("syslog", WARN, f"{why}: records go to the audit log only"))
    if os.path.exists(image):
        digest = audit.toolbox_digest(cfg, image, compute=True)
        out.append(
            Check(
                "toolbox digest",
                OK if digest else WARN,
                f"{digest or 'not computed'} (cached for the audit log)",
            )
        )
    return out


def run_checks(image: str) -> list[Check]:
    checks = [
        Check(
            "crashcart",
            OK,
            f"{__version__}, Python {sys.version.split()[0]} ({sys.executable or 'python'})",
        ),
        check_root(),
        check_mount_api(),
        check_erofs_file(),
        check_loop(),
        check_pidfd(),
        check_openat2(),
        check_cgroups(),
        check_userns(),
        check_docker(),
        check_podman(),
        check_containerd(),
        check_runc(),
    ]
    checks += check_image(image)
    checks += check_audit(image)
    return checks


def needs(checks: list[Check]) -> bool:
    """Everything crashcart needs is there: no ✗, and a way to mount the toolbox."""
    return all(c.status != FAIL for c in checks)


def main(as_json: bool, image: str) -> int:
    checks = run_checks(image)
    ok = needs(checks)
    if as_json:
        from crashcart.jsonout import dumps

        print(dumps({"ok": ok, "checks": [c.as_dict() for c in checks]}))
        return 0 if ok else 1
    symbols = SYMBOLS if _can_print("✓✗") else ASCII
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{symbols[c.status]} {c.name.ljust(width)}  {c.detail}")
        if c.fix and c.status != OK:
            print(f"  {' ' * width}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    print("everything crashcart needs is here" if ok else f"{failed} check(s) failed")
    return 0 if ok else 1


def _can_print(text: str) -> bool:
    try:
        text.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True

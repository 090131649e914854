"""-m, -u, -e, `status` and `cleanup`."""

from __future__ import annotations

import os
import subprocess
import sys

from crashcart import targets
from crashcart.attach.options import default_image
from crashcart.errors import CrashcartError, SideloadError
from crashcart.linux import procfs
from crashcart.sideload import ops, state
from crashcart.targets.model import Target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from crashcart.cli import Args

SHELL = "/dev/crashcart/shell"
RUN_WITH_RC = '. /dev/crashcart/.crashcartrc >/dev/null 2>&1; exec "$@"'
SUPERVISOR_TITLE = "crashcart: session supervisor for "


def exec_argv(t: Target, command: list[str], tty: bool) -> list[str]:
    """The runtime's own exec of `command` (or the toolbox shell) inside the target."""
    inner = ["/dev/crashcart/bin/bash", "-c", RUN_WITH_RC, "crashcart", *command]
    argv = inner if command else [SHELL]
    env = {"CRASHCART_MODE": "sideload", "CRASHCART_TARGET": t.name or t.id}
    if t.runtime == "pid":
        envs = [f"{k}={v}" for k, v in env.items()]
        return ["nsenter", "-a", "-t", str(t.pid), "/dev/crashcart/usr/bin/env", *envs, *argv]
    module = targets.MODULES[t.runtime]
    return list(module.exec_argv(t, argv, tty, env))


def usage_hint(t: Target) -> str:
    cmd = " ".join(exec_argv(t, [], True))
    return (
        f"the toolbox is at /dev/crashcart in {t.describe()}; use it with:\n"
        f"  {cmd}\n"
        f"  (or /dev/crashcart/profile/bin/bash --rcfile /dev/crashcart/.crashcartrc -i)\n"
        f"remove it with: crashcart -u {t.ref}"
    )


def _target(args: Args) -> Target:
    assert args.target is not None
    return targets.resolve(targets.parse_spec(args.target, args.runtime))


def run_sideload(args: Args) -> int:
    if args.action == "status":
        return status(args.target, args.json)
    if args.action == "cleanup":
        return cleanup(args.quiet)
    t = _target(args)
    image = args.image or default_image()
    if args.action == "mount":
        if ops.mount(t, image, args.allow_host):
            print(usage_hint(t))
        else:
            print(f"a toolbox is already mounted at /dev/crashcart in {t.describe()}: nothing done")
        return 0
    if args.action == "unmount":
        message = ops.unmount(t, args.force, args.allow_host)
        if not args.quiet:
            print(f"{t.describe()}: {message}", file=sys.stderr)
        return 0
    tty = args.tty if args.tty is not None else (os.isatty(0) and os.isatty(1))
    argv = exec_argv(t, args.command, tty)
    code, note = ops.exec_with_toolbox(t, image, lambda: _run(argv), args.allow_host)
    if note and not args.quiet:
        print(f"crashcart: {note}", file=sys.stderr)
    return code


def _run(argv: list[str]) -> int:
    """The runtime's exec in the foreground. Ctrl-C belongs to it, not to crashcart;
    SIGTERM and SIGHUP are passed to it and crashcart waits for it, so the toolbox is
    removed after; if crashcart dies, the runtime's client gets SIGTERM (no orphan)."""
    import signal

    from crashcart.linux import libc

    def child_setup() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # an ignored signal stays so on exec
        libc.prctl(libc.PR_SET_PDEATHSIG, signal.SIGTERM)

    old = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        try:
            proc = subprocess.Popen(argv, preexec_fn=child_setup)
        except FileNotFoundError:
            raise CrashcartError(
                f"{argv[0]} is not installed: cannot run the runtime's exec"
            ) from None
        for signum in (signal.SIGTERM, signal.SIGHUP):
            old[signum] = signal.signal(signum, lambda signum, _: proc.send_signal(signum))
        code = proc.wait()
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)
    return 128 - code if code < 0 else code


def _mnt_namespaces() -> dict[int, int]:
    """One PID per mount namespace on the host (ours excluded)."""
    mine = os.stat("/proc/self/ns/mnt").st_ino
    out: dict[int, int] = {}
    for pid in procfs.pids():
        try:
            ino = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        except OSError:
            continue
        if ino != mine:
            out.setdefault(ino, pid)
    return out


def status(spec: str | None, as_json: bool) -> int:
    known = {t.pid: t for t in targets.list_all(quiet=True)}
    by_ns: dict[int, Target] = {}
    for t in known.values():
        try:
            by_ns[os.stat(f"/proc/{t.pid}/ns/mnt").st_ino] = t
        except OSError:
            continue
    only = _target_from(spec) if spec else None
    rows = []
    for ino, pid in _mnt_namespaces().items():
        t = by_ns.get(ino) or Target(
            "pid", str(pid), procfs.read_text(f"/proc/{pid}/comm").strip(), pid
        )
        if only and ino != os.stat(f"/proc/{only.pid}/ns/mnt").st_ino:
            continue
        try:
            entries = state.mountinfo(pid)
        except (OSError, ValueError):
            continue
        if state.is_session(entries):
            continue  # sessions are listed below, from their supervisors
        mounts = state.toolbox_mounts(entries)
        record = state.read_record(f"mnt-{ino}")
        if record and not mounts and not state.record_is_current(record, f"mnt-{ino}"):
            record = {}  # a dead namespace's record whose inode number was reused
        if mounts or record:
            rows.append(
                {
                    "target": t.ref, "runtime": t.runtime, "name": t.name,
                    "mounted": bool(mounts), "image": record.get("image", "?"),
                    "since": record.get("since", "?"),
                    "exec_users": state.live_leases(record) if record else [],
                }
            )  # fmt: skip
    sessions = _sessions(only)
    if as_json:
        import json

        json.dump({"mounts": rows, "sessions": sessions}, sys.stdout, indent=2)
        print()
        return 0
    if not rows:
        print("no toolbox mounted in any container")
    for r in rows:
        state_word = "mounted" if r["mounted"] else "record only (not mounted)"
        users = f", used by crashcart -e {r['exec_users']}" if r["exec_users"] else ""
        print(f"{r['runtime']} {r['name']}: /dev/crashcart {state_word}, image {r['image']}, "
              f"since {r['since']}{users}")  # fmt: skip
    if sessions:
        print(f"{len(sessions)} live session(s):")
        for s in sessions:
            print(f"  {s['target']} (supervisor pid {s['pid']})")
    return 0


def _target_from(spec: str) -> Target:
    return targets.resolve(targets.parse_spec(spec))


def _sessions(only: Target | None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for pid in procfs.pids():
        args = procfs.cmdline(pid)
        if args and args[0].startswith(SUPERVISOR_TITLE):
            ref = args[0][len(SUPERVISOR_TITLE) :].strip("\0 ")
            if only is None or ref == only.ref:
                out.append({"target": ref, "pid": pid})
    return out


def cleanup(quiet: bool) -> int:
    """Remove every crashcart toolbox mount from every mount namespace on the host, and
    the mount points crashcart made; forget records of namespaces that are gone."""
    failures = 0
    live = _mnt_namespaces()
    for ino, pid in live.items():
        key = f"mnt-{ino}"
        try:
            entries = state.mountinfo(pid)
        except (OSError, ValueError):
            continue
        if state.is_session(entries):
            continue  # a live session's own namespace, not a container's
        record = state.read_record(key)
        if not state.toolbox_mounts(entries) and not record:
            continue
        leases = state.live_leases(record)
        if leases:
            print(f"mount namespace {ino} (pid {pid}): in use by crashcart -e {leases}, left as is")
            continue
        t = Target("pid", str(pid), f"pid {pid}", pid)
        try:
            message = ops.unmount(t, force=True, allow_host=True)
        except CrashcartError as e:
            failures += 1
            print(
                f"crashcart: cleanup of mount namespace {ino} (pid {pid}) failed: {e}",
                file=sys.stderr,
            )
            continue
        if not quiet:
            print(f"mount namespace {ino} (pid {pid}): {message}")
    for key in state.records():
        if int(key.removeprefix("mnt-")) not in live:
            state.drop_record(key)
    if failures:
        raise SideloadError(f"cleanup failed in {failures} mount namespace(s)")
    return 0

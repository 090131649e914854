"""-m, -u, -e, `status` and `cleanup`."""

from __future__ import annotations

import os
import subprocess
import sys

from crashcart import targets
from crashcart.attach.options import SessionOptions, default_image
from crashcart.defaults import SUPERVISOR_TITLE
from crashcart.errors import CrashcartError, SideloadError
from crashcart.linux import ns, procfs
from crashcart.sideload import ops, state
from crashcart.targets.model import Target
from crashcart.text import printable, shell_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SHELL = "/dev/crashcart/shell"
RUN_WITH_RC = '. /dev/crashcart/.crashcartrc >/dev/null 2>&1; exec "$@"'


def inner_argv(command: list[str], *, tty: bool) -> list[str]:
    """What runs inside the container from the toolbox: the command with the toolbox's
    environment, or its shell (interactive on a terminal, reading stdin without one)."""
    if command:
        return ["/dev/crashcart/bin/bash", "-c", RUN_WITH_RC, "crashcart", *command]
    return [SHELL] if tty else ["/dev/crashcart/bin/bash"]


def sideload_env(t: Target) -> dict[str, str]:
    """What the toolbox's rc file shows. A PID target is named by its reference, never by
    its comm, which the container chose (a toolbox built before the rc quoted its prompt
    would run `$(...)` in it)."""
    name = t.ref if t.runtime == "pid" else printable(t.name or t.id)
    return {"CRASHCART_MODE": "sideload", "CRASHCART_TARGET": name}


def exec_argv(t: Target, command: list[str], *, tty: bool) -> list[str]:
    """The runtime's own exec of `command` (or the toolbox shell) inside the target."""
    argv = inner_argv(command, tty=tty)
    env = sideload_env(t)
    if t.runtime == "pid":
        envs = [f"{k}={v}" for k, v in env.items()]
        return ["nsenter", "-a", "-t", str(t.pid), "/dev/crashcart/usr/bin/env", *envs, *argv]
    module = targets.MODULES[t.runtime]
    return list(module.exec_argv(t, argv, tty=tty, env=env))


def usage_hint(t: Target, paused: bool = False) -> str:
    if t.runtime == "pid":
        cmd = shell_line(["crashcart", "-e", t.ref])
    else:
        cmd = shell_line(exec_argv(t, [], tty=True))
    note = (f"note: {t.describe()} is paused: the runtime's exec fails until it is unpaused\n"
            if paused else "")  # fmt: skip
    return printable(
        f"the toolbox is at /dev/crashcart in {t.describe()}; use it with:\n"
        f"  {cmd}\n"
        f"  (or /dev/crashcart/profile/bin/bash --rcfile /dev/crashcart/.crashcartrc -i)\n"
        f"{note}remove it with: crashcart -u {shell_line([t.ref])}",
        keep="\n",
    )


def run_sideload(action: str, spec: str | None, *, runtime: str | None = None,
                 image: str | None = None, allow_host: bool = False, force: bool = False,
                 quiet: bool = False, as_json: bool = False,
                 exec_opts: SessionOptions | None = None) -> int:  # fmt: skip
    """-m, -u, -e (whose command, terminal, user and profile are `exec_opts`), status and
    cleanup."""
    if action == "status":
        return status(spec, as_json, runtime)
    if action == "cleanup":
        return cleanup(quiet)
    assert spec is not None
    t = targets.resolve(targets.parse_spec(spec, runtime))
    image = image or default_image()
    if action == "mount":
        if ops.mount(t, image, allow_host=allow_host):
            print(usage_hint(t, _paused(t)))
        else:
            print(printable(f"a toolbox is already mounted at /dev/crashcart in {t.describe()}: "
                            "nothing done"))  # fmt: skip
        return 0
    if action == "unmount":
        message = ops.unmount(t, force=force, allow_host=allow_host)
        if not quiet:
            print(printable(f"{t.describe()}: {message}"), file=sys.stderr)
        return 0
    opts = exec_opts or SessionOptions()
    tty = opts.tty if opts.tty is not None else (os.isatty(0) and os.isatty(1))
    if t.runtime == "pid":
        run: Callable[[], int] = lambda: _run_in_place(t, opts, tty)  # noqa: E731
    else:
        argv = exec_argv(t, opts.command, tty=tty)
        run = lambda: _run(argv)  # noqa: E731
    code, note = ops.exec_with_toolbox(t, image, run, allow_host=allow_host)
    if note and not quiet:
        print(f"crashcart: {note}", file=sys.stderr)
    return code


def _paused(t: Target) -> bool:
    from crashcart.linux import cgroups

    try:
        lines = procfs.parse_cgroup(procfs.read_text(f"{procfs.PROC}/{t.pid}/cgroup"))
    except OSError:
        return False
    found = cgroups.mounts()
    for _, ctrls, path in lines:
        base = cgroups.find(found, ctrls)
        if base and cgroups.frozen(ctrls, base, path):
            return True
    return False


def _run_in_place(t: Target, given: SessionOptions, tty: bool) -> int:
    """-e for a PID: no runtime to ask, so crashcart runs the toolbox itself in the
    target's own namespaces and root (what nsenter -a would do), through the session
    machinery: the setup happens where the container cannot see it, and the command gets
    the session's capability profile, never host root's."""
    from crashcart.attach.host import run_session

    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM": os.environ.get("TERM", "xterm"),
        "HOME": "/root",
        **sideload_env(t),
        **given.env,
    }
    opts = SessionOptions(
        command=inner_argv(given.command, tty=tty), tty=tty, env=env, user=given.user,
        caps=given.caps, join_cgroup=given.join_cgroup, allow_host=True, quiet=given.quiet,
        debug=given.debug, in_place=True,
    )  # fmt: skip
    return run_session(t, t.ref, opts)


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
    mine = ns.ns_ino("self", "mnt")
    out: dict[int, int] = {}
    for pid in procfs.pids():
        try:
            ino = ns.ns_ino(pid, "mnt")
        except OSError:
            continue
        if ino != mine:
            out.setdefault(ino, pid)
    return out


def status(spec: str | None, as_json: bool, runtime: str | None = None) -> int:
    known = {t.pid: t for t in targets.list_all(quiet=True)}
    by_ns: dict[int, Target] = {}
    for t in known.values():
        try:
            by_ns[ns.ns_ino(t.pid, "mnt")] = t
        except OSError:
            continue
    only = _target_from(spec, runtime) if spec else None
    rows = []
    only_ino = _mnt_ino(only.pid) if only else None
    for ino, pid in _mnt_namespaces().items():
        if only and ino != only_ino:
            continue
        try:
            t = by_ns.get(ino) or Target(
                "pid", str(pid), procfs.read_text(f"/proc/{pid}/comm").strip(), pid
            )
            entries = state.mountinfo_of(pid)
        except (OSError, ValueError):
            continue  # gone meanwhile (a container churning processes)
        if state.is_session(entries):
            continue  # sessions are listed below, from their supervisors
        mounts = state.toolbox_mounts(entries, anywhere=True)
        record = state.read_record(f"mnt-{ino}")
        if record and not mounts and not state.record_is_current(record, f"mnt-{ino}"):
            record = None  # a dead namespace's record whose inode number was reused
        if mounts or record:
            rows.append(
                {
                    "target": t.ref, "runtime": t.runtime, "name": t.name,
                    "mounted": bool(mounts), "image": record.image if record else "?",
                    "at": [m.point for m in mounts],
                    "since": record.since if record else "?",
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
        where = [str(p) for p in r["at"] if p != state.MOUNT_POINT]  # type: ignore[attr-defined]
        if where:
            state_word += f" (moved by the container to {', '.join(where)})"
        users = f", used by crashcart -e {r['exec_users']}" if r["exec_users"] else ""
        print(printable(f"{r['runtime']} {r['name']}: /dev/crashcart {state_word}, image "
                        f"{r['image']}, since {r['since']}{users}"))  # fmt: skip
    if sessions:
        print(f"{len(sessions)} live session(s):")
        for s in sessions:
            print(printable(f"  {s['target']} (supervisor pid {s['pid']})"))
    return 0


def _mnt_ino(pid: int) -> int | None:
    try:
        return ns.ns_ino(pid, "mnt")
    except OSError:
        return None


def _target_from(spec: str, runtime: str | None = None) -> Target:
    return targets.resolve(targets.parse_spec(spec, runtime))


def _sessions(only: Target | None) -> list[dict[str, object]]:
    """Live sessions, from their supervisors' titles (a container can fake a title: this
    list is for the operator's eyes, nothing acts on it)."""
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
            entries = state.mountinfo_of(pid)
        except (OSError, ValueError):
            continue
        if state.is_session(entries):
            continue  # a live session's own namespace, not a container's
        record = state.read_record(key)
        if not state.toolbox_mounts(entries, anywhere=True) and not record:
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

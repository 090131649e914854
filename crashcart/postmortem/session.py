"""Run a post-mortem session or a replay of a container that crashcart found in its
runtime's records (crashcart.postmortem.record.Record)."""

from __future__ import annotations

import json
import os

from crashcart.attach import host, mounts, ownns, setup
from crashcart.attach import plan as plans
from crashcart.attach.context import Step
from crashcart.attach.options import DEBUG_CAPS, SessionOptions
from crashcart.errors import UsageError
from crashcart.linux import caps, libc, ns, terminal
from crashcart.pinned import PinnedTarget
from crashcart.postmortem import cores, logs
from crashcart.postmortem.record import SIGNALS, Record
from crashcart.targets.model import Target
from crashcart.text import printable, shell_line
from crashcart.toolbox import open_toolbox

SESSION_DIR = "/run/crashcart"
RECORD_FILE = f"{SESSION_DIR}/postmortem.json"
LOG_FILE = f"{SESSION_DIR}/log"
CORES_FILE = f"{SESSION_DIR}/cores"
TOOLBOX = "/dev/crashcart"
TOOL_DIRS = ("usr/local/sbin", "usr/local/bin", "usr/sbin", "usr/bin", "sbin", "bin")
# Docker's default capability set: what the container's own processes had.
CONTAINER_CAPS = ("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid",
                  "setpcap", "net_bind_service", "net_raw", "sys_chroot", "mknod",
                  "audit_write", "setfcap")  # fmt: skip


def _target(r: Record) -> Target:
    return Target(r.runtime, r.id, r.name, 0, image=r.image, namespace=r.namespace)


def _keep(profile: str) -> int | None:
    """The profiles of crashcart.attach.options, measured against what the container's
    processes had (Docker's default set): a dead container has no bounding set to read."""
    if profile == "privileged":
        return None
    if profile == "restricted":
        return caps.mask(CONTAINER_CAPS)
    return caps.mask(CONTAINER_CAPS + DEBUG_CAPS)


def read_layered(r: Record, path: str) -> str | None:
    """A file of the container as its overlay shows it: from the topmost layer holding it
    (resolved inside that layer: its symlinks cannot leave it)."""
    for layer in r.layers:
        try:
            fd = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            text = plans.read_in_root(fd, path)
        finally:
            os.close(fd)
        if text is not None:
            return text
    return None


def _ids(r: Record, spec: str | None) -> tuple[int, int]:
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")
    uid, gid, _ = plans.lookup_user(user, read_layered(r, "/etc/passwd") or "", None)
    if group:
        gid = plans.lookup_group(group, read_layered(r, "/etc/group") or "")
    return uid, gid


# -- post-mortem session ------------------------------------------------------------------


def summary(r: Record, found: cores.Cores) -> list[str]:
    """What the runtime knows about the death, in a few lines."""
    if r.status == "created":
        how = "was created and never started"
    elif r.exit_code is None:
        how = f"has no running process (status: {r.status or 'unknown'})"
    else:
        how = f"{r.status or 'exited'} with code {r.exit_code}"
        if r.signal:
            how += f" (128+{r.signal}: killed by {SIGNALS.get(r.signal, 'signal')})"
    lines = [f"{r.describe()} {how}" + ("; OOM-killed" if r.oom_killed else "")]
    if r.attempt_line:
        lines.append(r.attempt_line)
    if r.started_at or r.finished_at:
        lines.append(f"started {r.started_at or '?'}, finished {r.finished_at or '?'}"
                     + (f", restarts {r.restart_count}" if r.restart_count else ""))  # fmt: skip
    if r.error:
        lines.append(f"runtime error: {r.error}")
    lines.append(f"command {shell_line(r.argv()) or '?'}, workdir {r.workdir}, user "
                 f"{r.user or 'root'}")  # fmt: skip
    lines.append(
        f"its files (read-only): /target; record: {RECORD_FILE}; "
        + (f"last log lines: {LOG_FILE}" if r.log_path else "no log kept")
    )
    lines += found.summary()
    return lines


def session_files(r: Record, found: cores.Cores) -> dict[str, bytes]:
    record = r.death() | {"cores": found.as_json(), "log_file": LOG_FILE if r.log_path else None}
    files = {RECORD_FILE: (json.dumps(record, indent=2) + "\n").encode()}
    text = logs.tail(r.log_path, r.log_format) if r.log_path else None
    if text is not None:
        files[LOG_FILE] = text.encode()
    files[CORES_FILE] = "".join(line + "\n" for line in found.summary()).encode()
    return files | found.copies


def postmortem_steps(layout: ownns.Layout, tty: bool) -> list[Step]:
    out = [ownns.keep_ns_dir(layout), ownns.overlay(layout), ownns.clone_mounts(layout),
           ownns.unshare_namespaces(), ownns.hostname(layout.hostname), mounts.pivot_to_toolbox,
           mounts.attach_target, ownns.attach_mounts(layout, "/target"), ownns.own_dev,
           mounts.bind_dev_into_target, mounts.mount_tmp, ownns.write_files(layout)]  # fmt: skip
    if tty:
        out.append(mounts.allocate_pty)
    return [*out, setup.AFTER_FORK, ownns.fresh_proc(layout, "/proc")]


def run_postmortem(r: Record, spec_text: str, opts: SessionOptions) -> int:
    r.check_layers()
    tty = host.wants_tty(opts)
    found = cores.find(r)
    layout = ownns.Layout(r.layers, r.mounts, r.hostname, session_files(r, found), writable=False)
    uid, gid = _ids(r, opts.user)
    toolbox = open_toolbox(opts.image)
    try:
        argv = opts.command or plans.default_command(toolbox.fd, tty)
        env = plans.environment(_target(r), spec_text, plans.Unpinned(_target(r)).info, opts,
                                toolbox.fd)  # fmt: skip
    except BaseException:
        toolbox.close()
        raise
    env.pop("CRASHCART_TARGET_PID", None)  # no process
    env |= {"CRASHCART_MODE": "session", "CRASHCART_POSTMORTEM": RECORD_FILE, **opts.env}
    wd = opts.workdir or "/target" + (r.workdir.rstrip("/") if r.workdir.startswith("/") else "")
    prep = plans.prepare_unpinned(_target(r), toolbox, tty, (argv, env, wd),
                                  (uid, gid, _keep(opts.caps)),
                                  postmortem_steps(layout, tty))  # fmt: skip
    prep.ctx.workdir_given = bool(opts.workdir)
    prep.ctx.fallback_dir = "/target"
    lines = summary(r, found) if tty or opts.debug else []
    return _run(prep, opts, tty, lines + r.notes)


def _run(prep: plans.Prepared, opts: SessionOptions, tty: bool, lines: list[str]) -> int:
    try:
        if opts.debug:
            _print_plan(prep)
        if not opts.quiet:
            for line in lines:
                host.say(f"crashcart: {printable(line)}")
        if tty:
            prep.ctx.winsize = terminal.get_winsize(0 if os.isatty(0) else 1)
        return host.Session(prep, tty).run()
    finally:
        prep.close()


def _print_plan(prep: plans.Prepared) -> None:
    lines = [f"+ {prep.target.ref}: no process; a session with namespaces of its own",
             "+ fork the setup process (in the host's pid namespace)",
             *(f"+ {s.what}" for s in prep.plan),
             "+ (no cgroup to join)", *(f"+ {s.what}" for s in prep.final),
             f"+ exec {' '.join(prep.ctx.argv)} (cwd {prep.ctx.workdir})"]  # fmt: skip
    host.say("\n".join(printable(line) for line in lines))


# -- replay -------------------------------------------------------------------------------


def replay_steps(layout: ownns.Layout, tty: bool, share_net: bool = False) -> list[Step]:
    out = [ownns.keep_ns_dir(layout), ownns.overlay(layout), ownns.clone_mounts(layout)]
    if share_net:
        out.append(mounts.join(("net",)))
    out += [ownns.unshare_namespaces(not share_net),
            ownns.hostname(layout.hostname, not share_net), ownns.pivot_to_copy,
            ownns.attach_mounts(layout, "/"), ownns.own_dev]  # fmt: skip
    if tty:
        out.append(mounts.allocate_pty)
    return [*out, setup.AFTER_FORK, ownns.fresh_proc(layout, "/proc")]


def tool_path(toolbox_fd: int, name: str) -> str:
    """A tool of the toolbox, where its relocated copy runs: /dev/crashcart/usr/bin/NAME."""
    if "/" in name:
        return name
    for d in TOOL_DIRS:
        try:
            fd = libc.openat2(toolbox_fd, f"{d}/{name}", os.O_PATH,
                              libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS)  # fmt: skip
        except OSError:
            continue
        os.close(fd)
        return f"{TOOLBOX}/{d}/{name}"
    raise UsageError(f"no {printable(name)!r} in the toolbox", hint="`crashcart image info` "
                     "lists the toolbox's programs; a path inside the copy works too")  # fmt: skip


def replay_command(r: Record, tool: list[str], toolbox_fd: int, tty: bool) -> list[str]:
    if not tool:
        return [f"{TOOLBOX}/shell"] if tty else [f"{TOOLBOX}/bin/bash"]
    if not r.argv():
        raise UsageError(f"{r.describe()} has no entrypoint or command to replay")
    return [tool_path(toolbox_fd, tool[0]), *tool[1:], *r.argv()]


def _original_net(r: Record) -> ns.Namespaces:
    """The running original's network namespace, pinned as an attach pins its target."""
    if not r.pid:
        raise UsageError(
            f"--replay-net: {r.describe()} is not running: there is no network namespace to share",
            hint="without --replay-net the copy has lo only",
        )
    target = Target(r.runtime, r.id, r.name, r.pid, image=r.image, namespace=r.namespace)
    pinned = PinnedTarget(target)
    try:
        out = ns.Namespaces()
        if "net" in pinned.nss.foreign:
            out.fds["net"] = os.dup(pinned.nss.fds["net"])
            out.foreign.add("net")
        return out
    finally:
        pinned.close()


def run_replay(r: Record, spec_text: str, opts: SessionOptions, share_net: bool = False) -> int:
    r.check_layers()
    tty = host.wants_tty(opts)
    layout = ownns.Layout(r.layers, r.mounts, r.hostname or r.short_id, {}, writable=True)
    uid, gid = _ids(r, opts.user if opts.user is not None else r.user)
    toolbox = open_toolbox(opts.image)
    try:
        argv = replay_command(r, opts.command, toolbox.fd, tty)
    except BaseException:
        toolbox.close()
        raise
    env = dict(e.partition("=")[::2] for e in r.env if "=" in e)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOSTNAME", layout.hostname)
    if tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    env |= opts.env
    wd = opts.workdir or r.workdir or "/"
    # The replay runs what the container ran, with what it had; a tool also traces.
    keep = _keep(opts.caps if opts.caps != "default" else "restricted")
    if opts.command and opts.caps == "default":
        keep = caps.mask(CONTAINER_CAPS + ("sys_ptrace",))  # the tool traces its own child
    try:
        nss = _original_net(r) if share_net else None
    except BaseException:
        toolbox.close()
        raise
    prep = plans.prepare_unpinned(_target(r), toolbox, tty, (argv, env, wd), (uid, gid, keep),
                                  replay_steps(layout, tty, share_net), nss)  # fmt: skip
    prep.ctx.workdir_given = bool(opts.workdir)
    net = "the original's network" if share_net else "no network but lo"
    lines = [f"replay of {r.describe()} in a throwaway copy (writes vanish; {net})"]
    return _run(prep, opts, tty, (lines if tty or opts.debug else []) + r.notes)

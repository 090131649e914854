"""Command line: parse, dispatch, and turn errors into one line and an exit code.

The parser is hand-written: argparse (with re and gettext) costs ~7 ms to import, a sixth
of the whole attach budget, and the grammar is small. Options come before TARGET, as
with `docker exec`; everything after TARGET (or after `--`) is the command.
"""

from __future__ import annotations

import os
import sys

from crashcart import __version__
from crashcart.errors import EXIT_CRASHCART, CrashcartError, TargetError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from crashcart.attach.options import SessionOptions
    from crashcart.targets.model import Spec, Target

SUBCOMMANDS = ("ps", "image", "status", "cleanup", "doctor", "completion", "man")
MODES = {"-m": "mount", "--mount": "mount", "-u": "unmount", "--unmount": "unmount"}
MODES |= {"-e": "exec", "--exec": "exec"}

USAGE = """\
usage: crashcart [OPTIONS] TARGET [--] [COMMAND [ARG...]]
       crashcart -m|-u TARGET          mount / remove the toolbox at /dev/crashcart
       crashcart -e TARGET [-- CMD]    mount, run the runtime's own exec, unmount
       crashcart --replay TARGET [-- TOOL [ARG...]]
                                       run the container's entrypoint in a throwaway
                                       copy of it, under TOOL (strace -f, gdb --args)
       crashcart ps [--json]           containers crashcart can reach
       crashcart status [TARGET]       where a toolbox is mounted, live sessions
       crashcart cleanup               remove every crashcart mount from every container
       crashcart image build|info ...  build or describe a toolbox image
       crashcart image node -o TAR     the node image: crashcart + toolbox, a container
                                       image for docker/podman/ctr load (node pods)
       crashcart doctor [--json]       what this host offers, what is missing, the fixes
       crashcart completion [SHELL]    bash, zsh or fish completion (default: $SHELL's)
       crashcart man                   the manual page

Debug a running container that has no tools: the toolbox image becomes / of a session
that joins the target's namespaces (pid, net, ipc, uts, cgroup, user), with the target's
root filesystem at /target. With no COMMAND: an interactive shell.

TARGET: a host PID, a container's name or full ID, or a unique prefix of a hex ID, in
Docker, Kubernetes (containerd's CRI), Podman, containerd, LXC, systemd-nspawn, crun or
runc; docker://, k8s://[NS/]POD[/CONTAINER], podman://[POD/]NAME, containerd://[NS/]ID,
lxc://, machine://, crun://, runc:// and pid:// force one runtime.

A TARGET that exists but has no running process (exited, crashed, created) gets a
post-mortem session: its files read-only at /target, namespaces of the session's own,
its death record in /run/crashcart/postmortem.json, its last log lines in
/run/crashcart/log. --replay also takes an image: --replay docker://IMAGE.

options:
  -m, --mount         mount the toolbox at /dev/crashcart;  -u, --unmount: remove it
  -e, --exec          mount it, run the runtime's own exec of COMMAND, unmount it
  --image PATH        toolbox image (default: $CRASHCART_IMAGE, else
                      /var/lib/crashcart/crashcart.img)
  --runtime NAME      only look in docker, k8s, podman, containerd, lxc, machine, crun,
                      runc or pid
  -w, --workdir DIR   working directory in the session (default: /target plus the
                      target's own working directory)
  --env K=V           set an environment variable (repeatable)
  --user UID[:GID]    run as this user (a name from the target's /etc/passwd works);
                      in a user-namespaced container, IDs are the container's
  -t, --tty           allocate a pty;  -T, --no-tty: never
                      (default: a pty exactly when stdin and stdout are terminals)
  --caps PROFILE      capabilities the session keeps:
                        default     the target's bounding set plus sys_ptrace, net_raw,
                                    net_admin, dac_override, kill, setuid, setgid,
                                    chown, fowner, sys_chroot (with --user other than
                                    root: the target's bounding set only)
                        restricted  no more than the target's own bounding set
                        privileged  every capability
  --privileged        same as --caps privileged
  --no-cgroup         do not join the target's cgroups (limits, accounting)
  --allow-host        allow a PID that is not in any container
  --replay            run the target's own entrypoint+cmd, env, workdir and user in a
                      copy (its writes go to a tmpfs), its own namespaces, the toolbox at
                      /dev/crashcart; -- TOOL ARGS runs it under TOOL
  --replay-net        with --replay of a running container: share its network
                      namespace (default: the copy has lo only)
  --force             with -u: unmount even while sessions still use the toolbox
  -q, --quiet         no notes on stderr
  --record FILE       record the session to FILE as asciicast v2 (asciinema play
                      FILE): a pty session's output, with timings and resizes
  --record-input      with --record: the keys typed too (passwords included)
  --debug             print what crashcart does, step by step
  --version           print the version
  -h, --help          this help

In a session with a terminal, ~. at the start of a line ends it from the operator's side
(whatever the container does), ~~ sends a ~, ~? lists the escapes. Setting up a session
may take at most $CRASHCART_SETUP_TIMEOUT seconds (default 30).

Exit status: the command's status (128+N when killed by signal N); 125 when crashcart
itself fails, 126 when the command cannot be executed, 127 when it is not found."""

# Options that take a value, and the attribute each sets.
VALUED = {
    "--image": "image",
    "--runtime": "runtime",
    "-w": "workdir",
    "--workdir": "workdir",
    "--env": "env",
    "--user": "user",
    "--caps": "caps",
    "--record": "record",
}
FLAGS = {
    "-t": ("tty", True),
    "--tty": ("tty", True),
    "-T": ("tty", False),
    "--no-tty": ("tty", False),
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "--debug": ("debug", True),
    "--privileged": ("caps", "privileged"),
    "--no-cgroup": ("join_cgroup", False),
    "--allow-host": ("allow_host", True),
    "--force": ("force", True),
    "--json": ("json", True),
    "--record-input": ("record_input", True),
    "--replay": ("replay", True),
    "--replay-net": ("replay_net", True),
}


class Args:
    """The parsed command line."""

    def __init__(self) -> None:
        # session, mount, unmount, exec, ps, status, cleanup, image, help or version
        self.action = "session"
        self.target: str | None = None
        self.command: list[str] = []
        self.rest: list[str] = []  # arguments of `image`
        self.image: str | None = None
        self.runtime: str | None = None
        self.workdir: str | None = None
        self.env: dict[str, str] = {}
        self.user: str | None = None
        self.caps = "default"
        self.tty: bool | None = None
        self.quiet = False
        self.debug = False
        self.join_cgroup = True
        self.allow_host = False
        self.force = False
        self.json = False
        self.record: str | None = None
        self.record_input = False
        self.replay = False
        self.replay_net = False  # --replay: share the running original's network namespace

    def __repr__(self) -> str:
        return f"Args({vars(self)!r})"


def parse(argv: list[str]) -> Args:
    args = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in ("-h", "--help"):
            args.action = "help"
            return args
        if name == "--version":
            args.action = "version"
            return args
        if name in MODES:
            if args.action not in ("session", MODES[name]):
                raise UsageError(f"{arg} cannot be combined with -{args.action[0]}")
            args.action = MODES[name]
        elif name in FLAGS and not eq:
            attr, flag_value = FLAGS[name]
            setattr(args, attr, flag_value)
        elif name in VALUED:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise UsageError(f"option {name} needs a value")
                value = argv[i]
            _set_valued(args, VALUED[name], name, value)
        else:
            raise UsageError(f"unknown option {arg!r}", hint="see crashcart --help")
        i += 1
    positional = argv[i:]
    dashed = i > 0 and argv[i - 1] == "--"
    if args.action == "session" and positional and positional[0] in SUBCOMMANDS and not dashed:
        return _subcommand(args, positional)
    if not positional or not positional[0]:
        raise UsageError(
            "no TARGET given", hint="see crashcart --help; `crashcart ps` lists targets"
        )
    args.target = positional[0]
    if args.target in SUBCOMMANDS:
        _reserved(args.target)
    command = positional[1:]
    if command and command[0] == "--":
        command = command[1:]
    if command and args.action in ("mount", "unmount"):
        raise UsageError(f"-{args.action[0]} takes no command")
    args.command = command
    _check_combination(args)
    return args


def _reserved(word: str) -> None:
    """One rule for the command words: where a TARGET is expected, they are refused with
    the way to reach a container of that name."""
    raise UsageError(
        f"{word!r} is a crashcart command, not a target",
        hint=f"a container named {word} is docker://{word} (or podman://{word}, ...)",
    )


def _check_combination(args: Args) -> None:
    """Options that mean nothing for the action are refused, not silently ignored."""
    if args.action == "session" and (args.json or args.force):
        raise UsageError(f"{'--json' if args.json else '--force'} is not an option of a session",
                         hint="--json goes with ps and status, --force with -u")  # fmt: skip
    if args.replay_net and not args.replay:
        raise UsageError("--replay-net goes with --replay")
    if args.replay and args.action != "session":
        raise UsageError(f"--replay cannot be combined with -{args.action[0]}")
    if args.action in ("mount", "unmount") and args.user is not None:
        raise UsageError(f"--user does not apply to -{args.action[0]}",
                         hint="the runtime's exec chooses the user of what runs from the "
                         "toolbox; --user goes with a session or -e")  # fmt: skip


def _set_valued(args: Args, attr: str, name: str, value: str) -> None:
    if attr == "env":
        key, eq, val = value.partition("=")
        if not key or not eq:
            raise UsageError(f"{name} needs KEY=VALUE, got {value!r}")
        args.env[key] = val
    elif attr == "caps":
        from crashcart.attach.options import PROFILES

        if value not in PROFILES:
            raise UsageError(
                f"unknown capability profile {value!r}", hint=f"use {', '.join(PROFILES)}"
            )
        args.caps = value
    else:
        if not value:
            raise UsageError(f"option {name} needs a non-empty value")
        setattr(args, attr, value)


def _subcommand(args: Args, positional: list[str]) -> Args:
    args.action = positional[0]
    rest = positional[1:]
    if args.action in ("image", "completion"):
        if rest[:1] == ["--"]:
            _reserved(args.action)
        args.rest = rest
        return args
    rest = list(rest)
    while rest:
        arg = rest.pop(0)
        if arg == "--json":
            args.json = True
        elif arg == "--force":
            args.force = True
        elif arg == "--runtime" and rest and args.action in ("status", "ps"):
            args.runtime = rest.pop(0)
        elif arg == "--":
            _reserved(args.action)
        elif arg.startswith("-"):
            raise UsageError(
                f"unknown option {arg!r} for {args.action}",
                hint=f"a container named {args.action} is docker://{args.action}",
            )
        elif args.action == "status" and args.target is None:
            args.target = arg
        else:
            raise UsageError(f"unexpected argument {arg!r} for {args.action}")
    return args


def require_root() -> None:
    if os.geteuid() != 0:
        raise CrashcartError(
            "crashcart must run as root: it joins another process's namespaces and mounts",
            hint="run it with sudo",
        )


def run(args: Args) -> int:
    if args.action == "help":
        print(USAGE)
        return 0
    if args.action == "version":
        print(f"crashcart {__version__}")
        return 0
    if args.action == "image":
        from crashcart.image.cli import main as image_main

        return image_main(args.rest)
    if args.action in ("doctor", "completion", "man"):
        return _operator_tool(args)
    require_root()
    if "CRASHCART_NODE_IMAGE" in os.environ:  # crashcart.nodeimage.NODE_ENV: in the node image
        from crashcart.nodeimage import prepare_node_container

        prepare_node_container()
    if args.action == "ps":
        from crashcart.ps import print_ps

        return print_ps(args.json)
    if args.action == "session" and args.join_cgroup:
        from crashcart.linux.cgroups import warm_up

        warm_up()  # first: the grace period a cgroup join waits for passes while we work
    if args.action == "status":
        return _dispatch(args, None)
    from crashcart import audit  # a start record before, an end record after (audit.py)

    return audit.around(args, _dispatch)


def _operator_tool(args: Args) -> int:
    if args.action == "doctor":
        from crashcart.attach.options import default_image
        from crashcart.doctor import main as doctor

        return doctor(args.json, args.image or default_image())
    if args.action == "completion":
        from crashcart.completion import main as completion

        return completion(args.rest)
    from crashcart.manpage import main as manpage

    return manpage()


def _dispatch(args: Args, target: Target | None) -> int:
    if args.action in ("status", "cleanup", "mount", "unmount", "exec"):
        from crashcart.attach.options import SessionOptions
        from crashcart.sideload.commands import run_sideload

        opts = SessionOptions(
            command=args.command, tty=args.tty, env=args.env, user=args.user, caps=args.caps,
            join_cgroup=args.join_cgroup, quiet=args.quiet, debug=args.debug,
        )  # fmt: skip
        return run_sideload(
            args.action, args.target, runtime=args.runtime, image=args.image,
            allow_host=args.allow_host, force=args.force, quiet=args.quiet, as_json=args.json,
            exec_opts=opts,
        )  # fmt: skip
    return run_session(args, target)


def run_session(args: Args, target: Target | None = None) -> int:
    from crashcart import targets
    from crashcart.attach.host import run_session as attach
    from crashcart.attach.host import wants_tty
    from crashcart.attach.options import SessionOptions, default_image

    assert args.target is not None
    opts = SessionOptions(
        command=args.command,
        image=args.image or default_image(),
        tty=args.tty,
        workdir=args.workdir,
        env=args.env,
        user=args.user,
        caps=args.caps,
        join_cgroup=args.join_cgroup,
        allow_host=args.allow_host,
        quiet=args.quiet,
        debug=args.debug,
    )
    if args.replay:
        from crashcart.postmortem import lookup, session

        found = lookup.find_replay(args.target, args.runtime)
        return session.run_replay(found, args.target, opts, args.replay_net)
    if target is None:
        spec = targets.parse_spec(args.target, args.runtime)
        try:
            target = targets.resolve(spec)
        except TargetError as e:
            return _postmortem(spec, opts, e)
    if args.record is None:
        return attach(target, args.target, opts)
    if not wants_tty(opts):
        raise UsageError("--record records a pty session", hint="run it in a terminal, or add -t")
    from crashcart.attach import record

    record.start(args.record, args.record_input, f"crashcart {target.describe()}")
    try:
        return attach(target, args.target, opts)
    finally:
        record.stop()


def _postmortem(spec: Spec, opts: SessionOptions, error: TargetError) -> int:
    """A target that exists but has no running process gets a post-mortem session."""
    from crashcart.errors import AmbiguousTarget
    from crashcart.targets.model import NotRunning, Spec

    if isinstance(error, NotRunning) and spec.runtime == "pid" and "://" not in spec.text:
        spec = Spec(spec.text, None, spec.query)  # a number that named a container's ID
    if isinstance(error, AmbiguousTarget) or spec.runtime in ("pid", "runc"):
        raise error
    from crashcart.postmortem import lookup, session

    record = lookup.find_dead(spec)
    if record is None:
        if str(error).startswith("no running container matches"):
            # Stopped containers were searched too: say so.
            raise TargetError(f"{error}; no stopped one either", hint=error.hint) from None
        raise error
    return session.run_postmortem(record, spec.text, opts)


def main(argv: list[str] | None = None) -> int:
    debug = False
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        debug = args.debug
        return run(args)
    except CrashcartError as e:
        from crashcart.text import safe_output

        print(f"crashcart: {safe_output(str(e))}", file=sys.stderr)
        if e.hint:
            print(f"crashcart: hint: {safe_output(e.hint)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_CRASHCART
    except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
        if debug:
            import traceback

            traceback.print_exc()
        from crashcart.text import safe_output

        print(f"crashcart: internal error: {type(e).__name__}: {safe_output(str(e))}",
              file=sys.stderr)  # fmt: skip
        print("crashcart: hint: run with --debug for details", file=sys.stderr)
        return EXIT_CRASHCART

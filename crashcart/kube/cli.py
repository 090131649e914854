"""kubectl-crashcart: the kubectl plugin's command line.

    kubectl crashcart [OPTIONS] POD [-- COMMAND [ARG...]]
    kubectl crashcart [OPTIONS] node NODE [-- COMMAND [ARG...]]
    kubectl crashcart [OPTIONS] cleanup

The flow: read the pod, start a node pod on its node, wait until it runs (progress on
stderr, bounded; on a timeout its events), `kubectl exec` crashcart in it, and delete the node
pod on every way out: the command's end, an error, Ctrl-C in any phase, SIGTERM, SIGHUP.
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import signal
import subprocess
import sys
import time
from typing import Any, NoReturn

from crashcart.errors import EXIT_CRASHCART, CrashcartError, UsageError
from crashcart.kube import pod as pods
from crashcart.kube import spec as specs
from crashcart.kube.kubectl import Kubectl
from crashcart.nodeimage import default_node_image
from crashcart.text import printable

PROG = "kubectl crashcart"
PULL_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
     "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)  # fmt: skip
EXEC_GRACE = 5.0  # seconds kubectl exec gets to end after a signal before it is killed
# kthreadd: PID 2 lives in the host's initial namespaces on every Linux, whatever PID 1 is
# (on some hosts PID 1's /proc entries are guarded, measured here: EACCES on ns/).
HOST_ANCHOR = "pid://2"

USAGE = f"""{PROG} [OPTIONS] POD [-- COMMAND [ARG...]]
       {PROG} [OPTIONS] node NODE [-- COMMAND [ARG...]]
       {PROG} [OPTIONS] cleanup

Debug a container of POD with crashcart on its node: a node pod (privileged, host pid,
pinned to the node, expiring) runs crashcart, which opens a shell or runs COMMAND in the
container's namespaces with the toolbox as / and the container at /target. The node pod
is deleted when the session ends, however it ends. `node NODE` opens a session on the node
itself (its namespaces, the toolbox as /, its root at /target); `cleanup` deletes node pods
left behind (label app.kubernetes.io/managed-by=crashcart, every namespace). A pod named
`node` or `cleanup` is pod/node, pod/cleanup."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, hint=f"{PROG} --help")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, usage=USAGE, add_help=True, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("words", nargs="+", metavar="POD | node NODE | cleanup")
    p.add_argument("-n", "--namespace", help="the pod's namespace (kubectl's default)")
    p.add_argument("-c", "--container", help="the container (default: kubectl's rule)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--kubeconfig", help="kubeconfig file")
    p.add_argument("--node-image", default=None,
                   help=f"the node image (default: {default_node_image()})")  # fmt: skip
    p.add_argument("--node-namespace", help="where the node pod runs (default: the pod's)")
    p.add_argument("--timeout", type=_seconds, default=120.0,
                   help="seconds the node pod may take to start (default 120)")  # fmt: skip
    p.add_argument("--deadline", type=int, default=3600,
                   help="activeDeadlineSeconds of the node pod (default 3600)")  # fmt: skip
    p.add_argument("--image", help="toolbox image path in the node image")
    p.add_argument("--caps", help="crashcart's capability profile")
    p.add_argument("--privileged", action="store_true", help="--caps privileged")
    p.add_argument("--user", help="UID[:GID] or a name of the container's /etc/passwd")
    p.add_argument("--env", action="append", default=[], metavar="K=V")
    p.add_argument("-w", "--workdir")
    p.add_argument("--no-cgroup", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    return p


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in (0, 3600]")
    return value


def crashcart_options(args: argparse.Namespace) -> list[str]:
    """The options passed to crashcart in the node pod."""
    out: list[str] = []
    for flag, value in (("--image", args.image), ("--caps", args.caps),
                        ("--user", args.user), ("-w", args.workdir)):  # fmt: skip
        out += [flag, value] if value else []
    for kv in args.env:
        out += ["--env", kv]
    for flag, on in (("--privileged", args.privileged), ("--no-cgroup", args.no_cgroup),
                     ("-q", args.quiet), ("--debug", args.debug)):  # fmt: skip
        out += [flag] if on else []
    return out


def split(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


class Session:
    """One node pod: created, waited for, used, deleted whatever happens."""

    def __init__(self, kc: Kubectl, args: argparse.Namespace, namespace: str) -> None:
        self.kc, self.args, self.namespace = kc, args, namespace
        self.session = secrets.token_hex(4)
        self.name = specs.pod_name(self.session)
        self.created = False
        self.child: subprocess.Popen[bytes] | None = None

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(f"crashcart: {printable(text)}", file=sys.stderr, flush=True)

    def start(self, node: str, runtime: str | None, target: str) -> None:
        image = self.args.node_image or default_node_image()
        obj = specs.node_pod(session=self.session, namespace=self.namespace, node=node,
                             image=image, deadline=self.args.deadline, runtime=runtime,
                             target=target)  # fmt: skip
        self.say(f"starting node pod {self.namespace}/{self.name} on node {node} ({image})")
        self.created = True  # before the call: a create that times out may still land
        self.kc.create(obj)
        self.wait_running(node)

    def wait_running(self, node: str) -> None:
        deadline = time.monotonic() + self.args.timeout
        shown = ""
        while True:
            state = _node_pod_state(self.kc.get_json("pod", self.name, "-n", self.namespace))
            if state == "Running":
                return
            if state.split(" ", 1)[0] in ("Failed", "Succeeded") or any(
                r in state for r in PULL_ERRORS
            ):
                self._fail(f"node pod {self.name} on {node} cannot run: {state}")
            if state != shown:
                self.say(f"node pod {self.name}: {state}")
                shown = state
            if time.monotonic() > deadline:
                self._fail(f"node pod {self.name} did not start within {self.args.timeout:g}s "
                           f"({state})")  # fmt: skip
            time.sleep(0.5)

    def _fail(self, message: str) -> NoReturn:
        events = self.kc.events(self.namespace, self.name)
        for line in events[-10:] or ["(no events)"]:
            print(f"crashcart: event: {line}", file=sys.stderr)
        raise CrashcartError(message, hint="load or push the node image (`crashcart image node`"
                             " builds it; --node-image names it), then retry")  # fmt: skip

    def exec(self, command: list[str]) -> int:
        tty = os.isatty(0) and os.isatty(1)
        argv = self.kc.exec_argv(self.namespace, self.name, command, tty)
        self.child = subprocess.Popen(argv)
        code = self.child.wait()
        self.child = None
        return 128 - code if code < 0 else code

    def close(self) -> None:
        """End kubectl exec (bounded) and delete the node pod; both also on error paths,
        with Ctrl-C and SIGTERM held off until the delete was asked."""
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            self._close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _close(self) -> None:
        child, self.child = self.child, None
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(EXEC_GRACE)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.created:
            self.created = False
            try:
                self.kc.delete_pod(self.namespace, self.name)
            except CrashcartError as e:
                print(f"crashcart: could not delete node pod {self.namespace}/{self.name}: "
                      f"{e.message}; `{PROG} cleanup` will", file=sys.stderr)  # fmt: skip


def _node_pod_state(obj: dict[str, Any]) -> str:
    """`Running`, or the phase and what the container waits for (`Pending
    (ContainerCreating)`)."""
    status = obj.get("status") or {}
    cs = (status.get("containerStatuses") or [{}])[0]
    state = cs.get("state") or {}
    if "running" in state and status.get("phase") == "Running":
        return "Running"
    phase = str(status.get("phase") or "Pending")
    for key in ("waiting", "terminated"):
        if key in state:
            why = state[key].get("reason") or key
            message = state[key].get("message")
            return f"{phase} ({why}{': ' + str(message)[:200] if message else ''})"
    return phase


def run(argv: list[str]) -> int:
    own, command = split(argv)
    args = parser().parse_args(own)
    kc = Kubectl(context=args.context, kubeconfig=args.kubeconfig)
    words = args.words
    if words == ["cleanup"]:
        return cleanup(kc)
    if words[0] == "node":
        if len(words) != 2:
            raise UsageError("node takes one NODE", hint=f"{PROG} node NODE [-- COMMAND]")
        namespace = args.node_namespace or args.namespace or "default"
        target = ["--allow-host", HOST_ANCHOR]
        return _session(kc, args, namespace, words[1], None, target, command, f"node {words[1]}")
    if len(words) != 1:
        raise UsageError(f"one POD, not {len(words)} words", hint="put COMMAND after --")
    name = words[0].removeprefix("pod/").removeprefix("pods/")
    pod = kc.get_pod(args.namespace, name)
    t = pods.analyse(pod, args.container, datetime.datetime.now(datetime.UTC))
    namespace = args.node_namespace or t.namespace
    return _session(kc, args, namespace, t.node, t.runtime, [t.node_target()], command,
                    f"{t.namespace}/{t.pod}/{t.container}", t.note)  # fmt: skip


def _session(
    kc: Kubectl,
    args: argparse.Namespace,
    namespace: str,
    node: str,
    runtime: str | None,
    target: list[str],
    command: list[str],
    label: str,
    note: str = "",
) -> int:
    s = Session(kc, args, namespace)
    if note:
        s.say(note)
    try:
        s.start(node, runtime, label)
        cmd = ["crashcart", *crashcart_options(args), *target, *(["--", *command] if command
                                                                  else [])]  # fmt: skip
        return s.exec(cmd)
    finally:
        s.close()


def cleanup(kc: Kubectl) -> int:
    out = kc.run("delete", "pods", "--all-namespaces", "-l",
                 f"{specs.MANAGED_BY}=crashcart", "--wait=false")  # fmt: skip
    text = out.decode(errors="replace").strip()
    print(printable(text, keep="\n") if text else "no node pods left behind")
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("crashcart: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM, SIGHUP (_terminate), after the node pod's deletion
        return e.code if isinstance(e.code, int) else EXIT_CRASHCART
    except CrashcartError as e:
        print(f"crashcart: {printable(e.message)}", file=sys.stderr)
        if e.hint:
            print(f"crashcart: hint: {printable(e.hint)}", file=sys.stderr)
        return e.exit_code

"""A stand-in for kubectl and the API server behind it, for tests of `kubectl crashcart`.

No Kubernetes API server can run on these machines. This fake answers the kubectl calls the
plugin makes, for pods that are REAL: the target pods are objects a test registers that
describe real CRI pods of this host (tests/testbed/cri.py), and the node pod the plugin
creates really runs, as the real node image in Docker with what its spec asks for
(privileged, host pid, the hostPath volumes, the image, the command). It refuses any field
it does not translate rather than ignoring it, and every object must match the Kubernetes
API schema (schema.py). `exec` is `docker exec` into the node pod's container.

State, in $FAKEKUBE_DIR: pods/NS_NAME.json (registered pods and node pods), events.json,
calls.jsonl (every argv, for the tests). $FAKEKUBE_NODE is this host's node name;
$FAKEKUBE_NEVER_START=1 makes node pods stay Pending (their sandbox never comes up).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.testbed import nodeimage
from tests.testbed.fakekube import schema
from tests.testbed.runtimes import DOCKER

LABEL = "fakekube.state"  # docker label: the state dir whose node pod a container is

POD_KEYS = {"apiVersion", "kind", "metadata", "spec"}
META_KEYS = {"name", "namespace", "labels", "annotations"}
SPEC_KEYS = {"nodeName", "hostPID", "restartPolicy", "activeDeadlineSeconds", "containers",
             "terminationGracePeriodSeconds", "automountServiceAccountToken",
             "enableServiceLinks", "tolerations", "volumes"}  # fmt: skip
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "securityContext",
                  "volumeMounts"}  # fmt: skip


class Refused(Exception):
    pass


def state() -> Path:
    return Path(os.environ["FAKEKUBE_DIR"])


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_path(ns: str, name: str) -> Path:
    return state() / "pods" / f"{ns}_{name}.json"


def load_pod(ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj: dict[str, Any] = json.loads(pod_path(ns, name).read_text())
    except FileNotFoundError:
        return None
    return obj


def save_pod(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    path = pod_path(meta.get("namespace", "default"), meta["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def add_event(name: str, kind: str, reason: str, message: str) -> None:
    path = state() / "events.json"
    events = json.loads(path.read_text()) if path.exists() else []
    events.append({"involvedObject": {"name": name}, "type": kind, "reason": reason,
                   "message": message, "lastTimestamp": now()})  # fmt: skip
    path.write_text(json.dumps(events))


def docker_name(ns: str, name: str) -> str:
    return f"fakekube-{ns}-{name}"


# -- the node pod: spec -> docker run ---------------------------------------------------


def _only(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise Refused(f"{where}: fakekube does not understand {', '.join(extra)}; refusing")


def translate(obj: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(docker run argv, problems that keep it Pending, as a kubelet would report them)."""
    invalid = schema.check(obj)
    if invalid:
        raise Refused("the object does not match the Kubernetes schema: " + "; ".join(invalid))
    _only(obj, POD_KEYS, "Pod")
    meta, spec = obj["metadata"], obj["spec"]
    _only(meta, META_KEYS, "metadata")
    _only(spec, SPEC_KEYS, "spec")
    if obj.get("kind") != "Pod" or obj.get("apiVersion") != "v1":
        raise Refused("only v1 Pods")
    if spec.get("nodeName") != os.environ["FAKEKUBE_NODE"]:
        raise Refused(f"nodeName {spec.get('nodeName')!r}: this stand-in has one node, "
                      f"{os.environ['FAKEKUBE_NODE']}")  # fmt: skip
    if spec.get("restartPolicy") != "Never" or len(spec["containers"]) != 1:
        raise Refused("only restartPolicy Never and one container")
    if spec.get("tolerations") != [{"operator": "Exists"}]:
        raise Refused(f"tolerations {spec.get('tolerations')!r} are not translated")
    for key in ("automountServiceAccountToken", "enableServiceLinks"):
        if spec.get(key) is not False:
            raise Refused(f"{key} must be false here (no service account, no services)")
    c = spec["containers"][0]
    _only(c, CONTAINER_KEYS, "container")
    _only(c.get("securityContext") or {}, {"privileged"}, "securityContext")
    privileged = (c.get("securityContext") or {}).get("privileged") is True
    argv = [DOCKER, "run", "-d", "--pull=never", "--network=none",
            "--name", docker_name(meta.get("namespace", "default"), meta["name"]),
            "--label", f"{LABEL}={state()}"]  # fmt: skip
    argv += nodeimage.privileged_flags() if privileged else []
    argv += ["--pid=host"] if spec.get("hostPID") else []
    mounts, problems = _volumes(spec.get("volumes") or [], c.get("volumeMounts") or [])
    command = c.get("command") or []
    if not command:
        raise Refused("a container without command: this stand-in does not guess entrypoints")
    argv += [*mounts, "--entrypoint", command[0], c["image"], *command[1:]]
    if subprocess.run([DOCKER, "image", "inspect", c["image"]], capture_output=True).returncode:
        problems.append(("ErrImagePull", f"Failed to pull image {c['image']!r}: not on the node"))
    return argv, [f"{r}\0{m}" for r, m in problems]


def _volumes(
    volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> tuple[list[str], list[tuple[str, str]]]:
    by_name: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for v in volumes:
        _only(v, {"name", "hostPath"}, "volume")
        _only(v["hostPath"], {"path", "type"}, "hostPath")
        path, kind = v["hostPath"]["path"], v["hostPath"].get("type", "")
        if kind == "DirectoryOrCreate":
            os.makedirs(path, exist_ok=True)
        elif kind == "Directory":
            if not os.path.isdir(path):
                problems.append(("FailedMount", f"hostPath type check failed: {path} is not a "
                                                "directory"))  # fmt: skip
        else:
            raise Refused(f"hostPath type {kind!r} is not translated")
        by_name[v["name"]] = path
    flags = []
    for m in mounts:
        _only(m, {"name", "mountPath", "readOnly"}, "volumeMount")
        if m["name"] not in by_name:
            raise Refused(f"volumeMount {m['name']!r} names no volume")
        flags += [
            "-v",
            f"{by_name[m['name']]}:{m['mountPath']}:{'ro' if m.get('readOnly') else 'rw'}",
        ]
    return flags, problems


# -- commands ---------------------------------------------------------------------------


def create(args: dict[str, Any]) -> int:
    obj = json.loads(sys.stdin.read())
    meta = obj.get("metadata") or {}
    ns = meta.setdefault("namespace", args["namespace"] or "default")
    if load_pod(ns, meta.get("name", "")):
        return fail(f'Error from server (AlreadyExists): pods "{meta.get("name")}" already exists')
    try:
        argv, problems = translate(obj)
    except Refused as e:
        return fail(f"error: fakekube: {e}")
    obj["_fake"] = {"docker": argv[argv.index("--name") + 1], "problems": problems}
    obj["metadata"]["uid"] = os.urandom(8).hex()
    obj["metadata"]["creationTimestamp"] = now()
    save_pod(obj)
    add_event(meta["name"], "Normal", "Scheduled", f"Successfully assigned {ns}/{meta['name']} "
              f"to {os.environ['FAKEKUBE_NODE']}")  # fmt: skip
    if os.environ.get("FAKEKUBE_NEVER_START") == "1":
        add_event(meta["name"], "Warning", "FailedCreatePodSandBox",
                  "fakekube: told never to start this pod (FAKEKUBE_NEVER_START)")  # fmt: skip
    elif problems:
        for p in problems:
            reason, message = p.split("\0")
            add_event(meta["name"], "Warning", reason, message)
    else:
        proc = subprocess.run(argv, capture_output=True, timeout=60)
        if proc.returncode:
            add_event(meta["name"], "Warning", "Failed", proc.stderr.decode(errors="replace"))
    print(f"pod/{meta['name']}")
    return 0


def status_of(obj: dict[str, Any]) -> dict[str, Any]:
    fake = obj["_fake"]
    if fake["problems"]:
        reason, message = fake["problems"][0].split("\0")
        waiting = {"reason": "ErrImagePull" if reason == "ErrImagePull" else "ContainerCreating",
                   "message": message}  # fmt: skip
        pending = [{"name": "crashcart", "state": {"waiting": waiting}}]
        return {"phase": "Pending", "containerStatuses": pending}
    proc = subprocess.run([DOCKER, "inspect", "-f", "{{json .State}}", fake["docker"]],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        return {"phase": "Pending", "containerStatuses": [{"name": "crashcart", "state": {
            "waiting": {"reason": "ContainerCreating"}}}]}  # fmt: skip
    st = json.loads(proc.stdout)
    if st.get("Running"):
        state: dict[str, Any] = {"running": {"startedAt": st.get("StartedAt")}}
        return {"phase": "Running", "containerStatuses": [{"name": "crashcart", "state": state}]}
    code = st.get("ExitCode", 0)
    term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
    ended = [{"name": "crashcart", "state": {"terminated": term}}]
    return {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": ended}


def get(args: dict[str, Any]) -> int:
    what = args["words"]
    ns = args["namespace"] or "default"
    if what[:1] in (["pod"], ["pods"]) and len(what) == 2:
        obj = load_pod(ns, what[1])
        if obj is None:
            return fail(f'Error from server (NotFound): pods "{what[1]}" not found')
        if "_fake" in obj:
            obj["status"] = status_of(obj)
            obj.pop("_fake")
        print(json.dumps(obj))
        return 0
    if what == ["events"]:
        path = state() / "events.json"
        events = json.loads(path.read_text()) if path.exists() else []
        sel = (args["field_selector"] or "").removeprefix("involvedObject.name=")
        print(json.dumps({"items": [e for e in events if e["involvedObject"]["name"] == sel]}))
        return 0
    return fail(f"error: fakekube: get {' '.join(what)} is not implemented")


def delete(args: dict[str, Any]) -> int:
    what = args["words"]
    if what[:1] not in (["pod"], ["pods"]):
        return fail(f"error: fakekube: delete {' '.join(what)} is not implemented")
    if args["selector"]:
        key, _, value = args["selector"].partition("=")
        if not args["all_namespaces"] and not args["namespace"]:
            args["namespace"] = "default"
        victims = []
        for path in sorted((state() / "pods").glob("*.json")):
            obj = json.loads(path.read_text())
            ns = obj["metadata"].get("namespace", "default")
            if (obj["metadata"].get("labels") or {}).get(key) == value and (
                args["all_namespaces"] or ns == args["namespace"]
            ):
                victims.append((ns, obj["metadata"]["name"]))
        if not victims:
            print("No resources found", file=sys.stderr)
        for ns, name in victims:
            _remove(ns, name)
            print(f'pod "{name}" deleted')
        return 0
    ns = args["namespace"] or "default"
    for name in what[1:]:
        if load_pod(ns, name) is None:
            if args["ignore_not_found"]:
                continue
            return fail(f'Error from server (NotFound): pods "{name}" not found')
        _remove(ns, name)
        print(f'pod "{name}" deleted')
    return 0


def _remove(ns: str, name: str) -> None:
    obj = load_pod(ns, name)
    if obj and "_fake" in obj:
        subprocess.run([DOCKER, "rm", "-f", obj["_fake"]["docker"]], capture_output=True,
                       timeout=60)  # fmt: skip
    pod_path(ns, name).unlink(missing_ok=True)


def exec_(args: dict[str, Any]) -> int:
    ns = args["namespace"] or "default"
    obj = load_pod(ns, args["words"][0]) if args["words"] else None
    if obj is None or "_fake" not in obj:
        return fail(f'Error from server (NotFound): pods "{args["words"][:1]}" not found')
    flags = ["-i"] if args["stdin"] else []
    flags += ["-t"] if args["tty"] else []
    child = subprocess.Popen([DOCKER, "exec", *flags, obj["_fake"]["docker"], *args["command"]])

    def stop(signum: int, frame: object) -> None:
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    code = child.wait()
    if code:
        print(f"command terminated with exit code {code}", file=sys.stderr)
    return code if code >= 0 else 128 - code


def fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def parse(argv: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {"words": [], "namespace": None, "selector": None, "command": [],
                            "all_namespaces": False, "field_selector": None, "stdin": False,
                            "tty": False, "ignore_not_found": False, "output": None,
                            "file": None, "context": None, "kubeconfig": None,
                            "container": None, "wait": None}  # fmt: skip
    valued = {"-n": "namespace", "--namespace": "namespace", "-l": "selector",
              "--selector": "selector", "--field-selector": "field_selector", "-o": "output",
              "-f": "file", "--context": "context", "--kubeconfig": "kubeconfig",
              "-c": "container"}  # fmt: skip
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args["command"] = argv[i + 1 :]
            break
        name, eq, value = a.partition("=")
        if name in valued:
            if not eq:
                i += 1
                value = argv[i]
            args[valued[name]] = value
        elif a in ("-A", "--all-namespaces"):
            args["all_namespaces"] = True
        elif a in ("-i", "--stdin"):
            args["stdin"] = True
        elif a in ("-t", "--tty"):
            args["tty"] = True
        elif a == "-it":
            args["stdin"] = args["tty"] = True
        elif a == "--ignore-not-found":
            args["ignore_not_found"] = True
        elif name == "--wait":
            args["wait"] = value
        elif a.startswith("-"):
            raise Refused(f"flag {a} is not implemented")
        else:
            args["words"].append(a)
        i += 1
    return args


def main(argv: list[str]) -> int:
    with open(state() / "calls.jsonl", "a") as log:
        log.write(json.dumps(argv) + "\n")
    try:
        args = parse(argv)
    except Refused as e:
        return fail(f"error: fakekube: {e}")
    verb, args["words"] = (args["words"][0], args["words"][1:]) if args["words"] else ("", [])
    handlers = {"get": get, "create": create, "delete": delete, "exec": exec_}
    if verb not in handlers:
        return fail(f"error: fakekube: {verb!r} is not implemented")
    return handlers[verb](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

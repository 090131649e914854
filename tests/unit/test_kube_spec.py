"""The kubectl plugin's pure parts: what a pod object says, the node pod spec, the options
passed to crashcart. The spec is checked against the Kubernetes schema (the project's own
generated client models) and parsed by the real kubectl (`create --dry-run=client`)."""

from __future__ import annotations

import datetime
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crashcart.errors import TargetError, UsageError
from crashcart.kube import cli, spec
from crashcart.kube.pod import analyse
from crashcart.nodeimage import HOST_PATHS
from tests.testbed.fakekube import schema
from tests.testbed.require import missing

NOW = datetime.datetime(2026, 12, 3, 12, 0, 0, tzinfo=datetime.UTC)
ID = "ab" * 32


def pod(**status: Any) -> dict[str, Any]:
    running = {"running": {"startedAt": "2026-12-03T11:00:00Z"}}
    return {
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"nodeName": "n1", "containers": [{"name": "app"}, {"name": "side"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "app", "containerID": f"containerd://{ID}", "state": running},
            {"name": "side", "containerID": f"cri-o://{ID}", "state": running},
        ], **status},
    }  # fmt: skip


def node_pod(runtime: str | None = "containerd") -> dict[str, Any]:
    return spec.node_pod(session="0123abcd", namespace="shop", node="n1", image="r/node:1",
                         deadline=600, runtime=runtime, target="shop/web/app")  # fmt: skip


def test_the_container_and_its_node_target() -> None:
    t = analyse(pod(), None, NOW)
    assert (t.node, t.container, t.node_target()) == ("n1", "app", f"containerd://k8s.io/{ID}")
    assert t.note == "defaulted container app out of: app, side"
    side = analyse(pod(), "side", NOW)
    assert (side.runtime, side.node_target(), side.note) == ("cri-o", ID, "")
    annotated = pod()
    annotated["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "side"}
    assert analyse(annotated, None, NOW).container == "side"


def test_errors_say_what_to_do() -> None:
    with pytest.raises(UsageError, match="has no container 'x'; its containers: app, side"):
        analyse(pod(), "x", NOW)
    unscheduled = pod(phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/3 nodes are available"}])  # fmt: skip
    del unscheduled["spec"]["nodeName"]
    with pytest.raises(TargetError, match=r"Pending and not scheduled .*Unschedulable 0/3"):
        analyse(unscheduled, None, NOW)
    dead = pod()
    dead["status"]["containerStatuses"][0]["state"] = {"terminated": {
        "exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-03T11:57:00Z"}}  # fmt: skip
    with pytest.raises(TargetError, match=r"exited with code 137 \(OOMKilled\) 3m ago") as e:
        analyse(dead, "app", NOW)
    assert e.value.hint == "kubectl logs -n shop web -c app shows its output"
    looping = pod()
    looping["status"]["containerStatuses"][0].update(
        state={"waiting": {"reason": "CrashLoopBackOff"}}, restartCount=5,
        lastState={"terminated": {"exitCode": 1, "finishedAt": "2026-12-03T11:59:30Z"}},
    )  # fmt: skip
    with pytest.raises(TargetError, match="CrashLoopBackOff; its last run exited with code 1 "
                                          "30s ago, 5 restarts"):  # fmt: skip
        analyse(looping, "app", NOW)
    windows = pod()
    windows["spec"]["os"] = {"name": "windows"}
    with pytest.raises(TargetError, match="Windows node"):
        analyse(windows, None, NOW)
    odd = pod()
    odd["status"]["containerStatuses"][0]["containerID"] = "rkt://\x1b[2Jx"
    with pytest.raises(TargetError, match="unknown runtime") as e2:
        analyse(odd, "app", NOW)
    assert "\x1b" not in e2.value.message  # a pod's strings are the cluster's, escaped


def test_node_pod_spec() -> None:
    obj = node_pod()
    assert schema.check(obj) == []
    s = obj["spec"]
    assert (s["nodeName"], s["hostPID"], s["restartPolicy"]) == ("n1", True, "Never")
    assert s["activeDeadlineSeconds"] == 600 and s["tolerations"] == [{"operator": "Exists"}]
    assert s["automountServiceAccountToken"] is False
    c = s["containers"][0]
    assert c["securityContext"] == {"privileged": True} and c["command"][0] == "sleep"
    assert obj["metadata"]["labels"][spec.MANAGED_BY] == "crashcart"
    paths = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in s["volumes"]}
    # Every host path but the other runtimes' storage; only crashcart's log dir is created.
    assert set(paths) == {h for h, _, _ in HOST_PATHS} - {"/var/lib/docker", "/var/lib/containers"}
    assert {p for p, t in paths.items() if t == "DirectoryOrCreate"} == {"/var/log/crashcart"}
    mounts = {m["mountPath"]: m["readOnly"] for m in c["volumeMounts"]}
    assert mounts == {inside: ro for h, inside, ro in HOST_PATHS if h in paths}
    node = {v["hostPath"]["path"] for v in node_pod(None)["spec"]["volumes"]}
    assert not node & set(spec.STORAGE)


def test_the_schema_check_fails_on_what_the_api_would_refuse() -> None:
    obj = node_pod()
    obj["spec"]["hostPid"] = True
    obj["spec"]["containers"][0]["securityContext"]["privileged"] = "true"
    assert sorted(schema.check(obj)) == [
        "V1Pod.spec.containers[0].securityContext.privileged: expected bool, got 'true'",
        "V1Pod.spec.hostPid: no such field in V1PodSpec",
    ]


def test_options_reach_crashcart_and_the_command_splits() -> None:
    own, cmd = cli.split(["-n", "x", "web", "--user", "1000", "--env", "A=1", "--", "ls", "--"])
    assert cmd == ["ls", "--"]
    args = cli.parser().parse_args(own)
    assert cli.crashcart_options(args) == ["--user", "1000", "--env", "A=1"]
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        cli.parser().parse_args(["web", "--bogus"])


class _Discovery(http.server.BaseHTTPRequestHandler):
    """Just enough of an API server's discovery for kubectl to map kind Pod to a resource:
    `create --dry-run=client` needs no more, and sends nothing."""

    DOCS = {
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
        "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
             "verbs": ["create", "get", "delete"]}]},
    }  # fmt: skip

    def do_GET(self) -> None:  # noqa: N802
        doc = self.DOCS.get(self.path.split("?")[0])
        body = json.dumps(doc).encode() if doc else b""
        self.send_response(200 if doc else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        raise AssertionError("a client dry run must not send the object")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def discovery(tmp_path: Path) -> Iterator[Path]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Discovery)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        "users": [{"name": "t", "user": {}}],
    }))  # fmt: skip
    try:
        yield config
    finally:
        server.shutdown()


def test_the_real_kubectl_parses_the_spec(discovery: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl is not installed (scripts/runtimes install installs it)")
    obj = node_pod()
    argv = [kubectl, "--kubeconfig", str(discovery), "create", "--dry-run=client",
            "--validate=false", "-o", "json", "-f", "-"]  # fmt: skip
    res = subprocess.run(argv, input=json.dumps(obj).encode(), capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == obj  # kubectl read every field back as sent

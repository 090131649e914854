"""The node pod: crashcart's node image on the target's node, as a node-level tool needs it.

- `nodeName` pinned (no scheduler decision: the target's node or none), every taint
  tolerated (a cordoned or tainted node is where debugging is needed most);
- `hostPID` and `privileged`: crashcart joins the target's namespaces from the host's pid
  namespace with the host's capabilities (crashcart.nodeimage refuses to run otherwise);
- the host paths of crashcart.nodeimage.HOST_PATHS as hostPath volumes, the runtime
  storage only of the target's runtime (a node has one; a missing one would keep the pod
  from starting), `Directory` so nothing is created on the node but crashcart's log dir;
- its command sleeps: the plugin runs crashcart in it with `kubectl exec`, which carries a
  pty, the window size, signals and the command's exit status (a pod's own command would
  need `kubectl attach`, which loses the status and races the container's start);
- `activeDeadlineSeconds`, so a node pod the plugin could not delete (the laptop slept)
  ends by itself, and `restartPolicy: Never`;
- no service account token, no service links: the node pod holds no API credentials.
"""

from __future__ import annotations

from typing import Any

from crashcart.nodeimage import HOST_PATHS

MANAGED_BY = "app.kubernetes.io/managed-by"
SESSION_LABEL = "crashcart.dev/session"
TARGET_ANNOTATION = "crashcart.dev/target"
# Runtime storage, mounted only for a target of that runtime (post-mortem reads it).
STORAGE = {
    "/var/lib/docker": "docker",
    "/var/lib/containerd": "containerd",
    "/var/lib/containers": "cri-o",
}
# Created on the node if missing: crashcart's own audit log (crashcart/audit.py).
CREATED = frozenset({"/var/log/crashcart"})


def pod_name(session: str) -> str:
    return f"crashcart-{session}"


def _volume_name(path: str) -> str:
    return "host" + path.replace("/", "-").rstrip("-") if path != "/" else "host-root"


def volumes(runtime: str | None) -> list[tuple[str, str, bool, str]]:
    """(host path, mount path, read-only, hostPath type) for a target of `runtime`
    (None: a session on the node itself, which needs no runtime storage)."""
    out = []
    for host, inside, ro in HOST_PATHS:
        if host in STORAGE and STORAGE[host] != runtime:
            continue
        out.append((host, inside, ro, "DirectoryOrCreate" if host in CREATED else "Directory"))
    return out


def node_pod(
    *,
    session: str,
    namespace: str,
    node: str,
    image: str,
    deadline: int,
    runtime: str | None,
    target: str,
) -> dict[str, Any]:
    """The node pod object for `kubectl create -f -`."""
    vols = volumes(runtime)
    container = {
        "name": "crashcart",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", str(deadline + 60)],
        "securityContext": {"privileged": True},
        "volumeMounts": [
            {"name": _volume_name(h), "mountPath": m, "readOnly": ro} for h, m, ro, _ in vols
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(session),
            "namespace": namespace,
            "labels": {
                MANAGED_BY: "crashcart",
                "app.kubernetes.io/name": "crashcart-node",
                SESSION_LABEL: session,
            },
            "annotations": {TARGET_ANNOTATION: target},
        },
        "spec": {
            "nodeName": node,
            "hostPID": True,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
            "volumes": [
                {"name": _volume_name(h), "hostPath": {"path": h, "type": t}} for h, _, _, t in vols
            ],
        },
    }

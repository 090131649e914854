"""`crashcart ps`: every running container crashcart can reach, across runtimes."""

from __future__ import annotations

import sys

from crashcart import targets
from crashcart.sideload import state


def rows() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for t in targets.list_all():
        out.append(
            {
                "runtime": t.runtime,
                "namespace": t.namespace,
                "name": t.name,
                "id": t.id,
                "short_id": t.short_id,
                "image": t.image,
                "pid": t.pid,
                "toolbox": state.mounted_in(t.pid),
                "target": t.ref,
                # Kubernetes pods (runtime k8s; namespace is then the pod's namespace).
                "pod": t.pod,
                "pod_uid": t.pod_uid,
                "container": t.container,
                "attempt": t.attempt,
                "cri": t.cri,
            }
        )
    return out


def print_ps(as_json: bool) -> int:
    found = rows()
    if as_json:
        import json

        json.dump(found, sys.stdout, indent=2)
        print()
        return 0
    header = ("RUNTIME", "NAME", "ID", "IMAGE", "PID", "TOOLBOX")
    table = [header]
    for r in found:
        # Which containerd namespace; for a pod's container (named NAMESPACE/POD/CONTAINER),
        # which CRI runtime.
        where = r["cri"] if r["runtime"] == "k8s" else r["namespace"]
        runtime = str(r["runtime"]) + (f" ({where})" if where else "")
        toolbox = "mounted" if r["toolbox"] else "-"
        table.append((runtime, str(r["name"]), str(r["short_id"]), str(r["image"]) or "-",
                      str(r["pid"]), toolbox))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0

"""`crashcart ps`: every container with a process (running or paused) crashcart can reach,
across runtimes, with its state."""

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
                "state": t.state,
                "owner": t.owner,
                "toolbox": state.mounted_in(t.pid),
                "target": t.ref,
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
    header = ("RUNTIME", "NAME", "ID", "IMAGE", "STATE", "PID", "TOOLBOX")
    table = [header]
    for r in found:
        where = r["cri"] if r["runtime"] == "k8s" else r["namespace"]
        runtime = str(r["runtime"]) + (f" ({where})" if where else "")
        runtime += f" (uid {r['owner']})" if r["owner"] else ""  # a rootless runtime's user
        toolbox = "mounted" if r["toolbox"] else "-"
        table.append((runtime, str(r["name"]), str(r["short_id"]), str(r["image"]) or "-",
                      str(r["state"]), str(r["pid"]), toolbox))  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0

"""kubectl, run with the operator's --context/--kubeconfig. Every call but the session's
`exec` has a time bound; the session's exec is a child the plugin waits for and can end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from crashcart.errors import CrashcartError, TargetError
from crashcart.text import printable

CALL_TIMEOUT = 60.0  # seconds for one get/create/delete: kubectl's own request timeout is 32 s
DELETE_TIMEOUT = 15.0


class KubectlError(CrashcartError):
    """kubectl failed: its own first error line."""


class Kubectl:
    def __init__(self, *, context: str | None, kubeconfig: str | None) -> None:
        exe = os.environ.get("CRASHCART_KUBECTL") or shutil.which("kubectl")
        if not exe:
            raise CrashcartError("kubectl is not on PATH", hint="install kubectl, then retry")
        self.argv = [exe]
        self.argv += ["--context", context] if context else []
        self.argv += ["--kubeconfig", kubeconfig] if kubeconfig else []

    def run(self, *args: str, input: bytes | None = None, timeout: float = CALL_TIMEOUT) -> bytes:
        try:
            proc = subprocess.run(
                [*self.argv, *args],
                input=input,
                stdin=None if input is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise KubectlError(f"kubectl {args[0]} did not answer within {timeout:.0f}s") from None
        if proc.returncode != 0:
            raise KubectlError(_first_error(proc.stderr) or f"kubectl {args[0]} failed")
        return proc.stdout

    def get_json(self, *args: str) -> dict[str, Any]:
        out = self.run("get", *args, "-o", "json")
        try:
            obj = json.loads(out)
        except ValueError:
            raise KubectlError(f"kubectl get {' '.join(args)}: not JSON") from None
        if not isinstance(obj, dict):
            raise KubectlError(f"kubectl get {' '.join(args)}: not an object")
        return obj

    def get_pod(self, namespace: str | None, name: str) -> dict[str, Any]:
        ns = ["-n", namespace] if namespace else []
        try:
            return self.get_json("pod", name, *ns)
        except KubectlError as e:
            if "NotFound" in e.message or "not found" in e.message:
                raise TargetError(e.message, hint="kubectl get pods lists the pods") from None
            raise

    def create(self, obj: dict[str, Any]) -> None:
        self.run("create", "-f", "-", "-o", "name", input=json.dumps(obj).encode())

    def delete_pod(self, namespace: str, name: str) -> None:
        """Asked, not waited for (--wait=false): the pod's end is the kubelet's business."""
        self.run("delete", "pod", name, "-n", namespace, "--wait=false", "--ignore-not-found",
                 timeout=DELETE_TIMEOUT)  # fmt: skip

    def events(self, namespace: str, name: str) -> list[str]:
        """The pod's events, oldest first, as `Type Reason: message` lines."""
        try:
            obj = self.get_json(
                "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
            )
        except KubectlError as e:
            return [f"(no events: {e.message})"]
        items = [e for e in obj.get("items") or [] if isinstance(e, dict)]
        items.sort(key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
        return [printable(f"{e.get('type', '')} {e.get('reason', '')}: {e.get('message', '')}")
                for e in items]  # fmt: skip

    def exec_argv(self, namespace: str, pod: str, command: list[str], tty: bool) -> list[str]:
        flags = ["-it"] if tty else ["-i"]
        return [*self.argv, "exec", *flags, "-n", namespace, pod, "-c", "crashcart", "--",
                *command]  # fmt: skip


def _first_error(stderr: bytes) -> str:
    for line in stderr.decode(errors="replace").splitlines():
        if line.strip():
            return printable(line.strip())[:300]
    return ""

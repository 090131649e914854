"""What a runtime keeps about a container that may have no process: its layers, volumes,
configuration and death record, as plain data."""

from __future__ import annotations

import os

from crashcart.errors import TargetError

SIGNALS = {1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT",
           7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV",
           12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU",
           25: "SIGXFSZ", 31: "SIGSYS"}  # fmt: skip


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def sub(obj: Any, key: str) -> dict[str, Any]:
    """obj[key] if obj is a JSON object and that is an object too, else {}."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


class Record:
    """A container (or an image, for a replay) as its runtime keeps it."""

    def __init__(self, runtime: str, id: str, name: str) -> None:
        self.runtime = runtime
        self.id = id
        self.name = name
        self.namespace: str | None = None  # containerd
        self.image = ""
        self.is_image = False  # an image reference: no container, no death
        self.pid = 0  # host PID of its main process when it still runs
        self.layers: list[str] = []  # host directories, topmost (writable layer) first
        self.upper = ""  # the container's writable layer (checked, never written)
        self.mounts: list[tuple[str, str]] = []  # (host source, destination), read-only
        self.hostname = ""
        self.entrypoint: list[str] = []
        self.cmd: list[str] = []
        self.env: list[str] = []
        self.workdir = "/"
        self.user = ""
        self.status = ""  # exited, created, stopped, running ...
        self.exit_code: int | None = None
        self.oom_killed: bool | None = None
        self.started_at = ""
        self.finished_at = ""
        self.restart_count: int | None = None
        self.error = ""
        self.log_path = ""
        self.log_format = ""  # json-file, k8s-file, raw
        self.notes: list[str] = []
        self.pod: dict[str, object] | None = None  # Kubernetes: namespace, pod, uid, attempt ...
        self.attempt_line = ""  # Kubernetes: which restart attempt this is

    @property
    def short_id(self) -> str:
        return self.id[:12] if len(self.id) == 64 else self.id

    def describe(self) -> str:
        kind = "image" if self.is_image else "container"
        label = self.name if self.name and self.name != self.id else self.short_id
        return f"{self.runtime} {kind} {label}" + (
            f" ({self.short_id})" if label != self.short_id else ""
        )

    @property
    def signal(self) -> int | None:
        """Runtimes report a process killed by signal N as exit code 128+N (runc's wait
        status conversion); the signal is that N."""
        code = self.exit_code
        return code - 128 if code is not None and 128 < code < 160 else None

    def check_layers(self) -> None:
        """Every layer directory must still be there: a runtime that pruned an image's
        layers leaves the container's record pointing at nothing."""
        if not self.layers:
            raise TargetError(f"{self.describe()}: its runtime names no filesystem layers")
        missing = [d for d in self.layers if not os.path.isdir(d)]
        if missing:
            raise TargetError(
                f"{self.describe()}: {len(missing)} of its {len(self.layers)} filesystem "
                f"layers are gone ({missing[0]}): its image was pruned or its storage removed",
                hint="the runtime's storage no longer holds this container's files",
            )

    def argv(self) -> list[str]:
        return [*self.entrypoint, *self.cmd]

    def death(self) -> dict[str, object]:
        """The death record, as the session keeps it in JSON."""
        sig = self.signal
        return {
            "runtime": self.runtime, "id": self.id, "name": self.name,
            "namespace": self.namespace, "image": self.image, "status": self.status,
            "exit_code": self.exit_code, "signal": sig,
            "signal_name": SIGNALS.get(sig, f"signal {sig}") if sig else None,
            "oom_killed": self.oom_killed, "started_at": self.started_at,
            "finished_at": self.finished_at, "restart_count": self.restart_count,
            "error": self.error, "entrypoint": self.entrypoint, "cmd": self.cmd,
            "env": self.env, "workdir": self.workdir, "user": self.user,
            "hostname": self.hostname, "upper_dir": self.upper,
            "layers": self.layers, "mounts": [{"source": s, "destination": d}
                                              for s, d in self.mounts],
            "log_path": self.log_path, "pod": self.pod,
        }  # fmt: skip

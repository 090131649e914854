"""P2: from launch to the first shell prompt, through a real pseudo-terminal.

The command runs on the slave side of a fresh pty (python's pty module), as in an operator's
terminal; the clock stops when the output, trailing spaces stripped, ends with the prompt's
"#" or "$" (busybox sh: "/ # ", the toolbox's bash: "[crashcart:session NAME] /target # ").
Then "exit" is typed and the time until the command has exited is recorded too.
"""

from __future__ import annotations

import fcntl
import os
import pty
import random
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.env import log
from bench.stats import paired_ratio, summary
from tests.testbed.runtimes import Container

PROMPT_ENDS = (b"#", b"$")
# Escape sequences a shell prints around its prompt (colours, bracketed paste, titles).
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class Sample:
    prompt_ms: float | None
    exit_ms: float | None
    code: int | None
    tail: str = ""
    cpu_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.prompt_ms is not None


@dataclass
class Case:
    key: str
    label: str
    container: Container
    argv: list[str]
    env: Mapping[str, str]
    samples: list[Sample] = field(default_factory=list)


def _has_prompt(output: bytes) -> bool:
    return ANSI.sub(b"", output).rstrip(b" ").endswith(PROMPT_ENDS)


def once(argv: list[str], env: Mapping[str, str], timeout: float = 20.0) -> Sample:
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty slave is its controlling terminal and stdio
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            os.chdir("/")
            os.execve(argv[0], argv, dict(env))
        finally:
            os._exit(127)
    output = b""
    prompt_ms = exit_ms = None
    code = None
    cpu_ms = 0.0
    deadline = time.monotonic() + timeout
    try:
        while prompt_ms is None and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            output += chunk
            if _has_prompt(output):
                prompt_ms = (time.perf_counter() - start) * 1e3
        if prompt_ms is not None:
            os.write(fd, b"exit\r")
            while time.monotonic() < deadline:
                done, status, ru = os.wait4(pid, os.WNOHANG)
                if done:
                    exit_ms = (time.perf_counter() - start) * 1e3
                    code = os.waitstatus_to_exitcode(status)
                    cpu_ms = (ru.ru_utime + ru.ru_stime) * 1e3
                    break
                ready, _, _ = select.select([fd], [], [], 0.01)
                if ready:
                    try:
                        output += os.read(fd, 65536)
                    except OSError:
                        pass
    finally:
        if code is None:
            try:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status) if prompt_ms is None else code
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(fd)
    tail = output[-400:].decode(errors="replace")
    return Sample(prompt_ms, exit_ms, code, tail, cpu_ms)


def run(cases: list[Case], runs: int, warmup: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(warmup + runs):
        order = cases[:]
        rng.shuffle(order)
        for case in order:
            s = once(case.argv, case.env)
            if i >= warmup:
                case.samples.append(s)
            if not s.ok:
                log(f"P2 {case.key}: no prompt (exit {s.code}); output tail: {s.tail[-200:]!r}")
    log(f"P2: {warmup + runs} iterations ({warmup} warm-up)")


def results(cases: list[Case]) -> dict[str, object]:
    out: dict[str, object] = {}
    for c in cases:
        ok = [s for s in c.samples if s.ok]
        out[c.key] = {
            "label": c.label,
            "argv": c.argv,
            "container": {"runtime": c.container.runtime, "image": c.container.image},
            "prompt_ms": summary([s.prompt_ms for s in ok if s.prompt_ms is not None]),
            "exit_ms": summary([s.exit_ms for s in ok if s.exit_ms is not None]),
            "runs": len(c.samples),
            "failures": len(c.samples) - len(ok),
            "last_output": c.samples[-1].tail if c.samples else "",
            "samples_ms": [
                None if s.prompt_ms is None else round(s.prompt_ms, 3) for s in c.samples
            ],
        }
    keys = [c.key for c in cases]
    ratios = {}
    if "crashcart/docker" in keys:
        cc = next(c for c in cases if c.key == "crashcart/docker")
        for other in cases:
            if other is not cc:
                ratios[f"{cc.key} / {other.key}"] = paired_ratio(
                    [s.prompt_ms for s in cc.samples], [s.prompt_ms for s in other.samples]
                )
    return {"cases": out, "ratios": ratios}

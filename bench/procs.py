"""Run one command and measure it: wall time, exit status, and the rusage of its whole tree.

Commands are started with posix_spawn (no fork of this process), stdin and stdout on
/dev/null, stderr to a file that is read only when the command fails. The wall time runs from
just before the spawn to the moment the command's pidfd becomes readable; wait4 then gives its
rusage: CPU time of the process and every descendant it waited for. (Its ru_maxrss is *not*
the command's: a vforked child starts in this harness's address space and the kernel keeps
that high-water mark across exec. bench/p5.py measures peak RSS under GNU time instead.)
"""

from __future__ import annotations

import os
import select
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_TIMEOUT = 60.0


@dataclass
class Result:
    argv: list[str]
    wall_ms: float
    code: int  # exit status; 128+N when killed by signal N; -1 on timeout
    maxrss_kb: int  # includes the harness's own RSS: see the module docstring
    cpu_ms: float  # user + system of the whole waited-for tree
    user_ms: float
    sys_ms: float
    stderr: str = ""
    end_ns: int = 0  # time.perf_counter_ns() when it ended (for concurrent batches)
    start_ns: int = 0

    @property
    def ok(self) -> bool:
        return self.code == 0


@dataclass
class _Running:
    argv: list[str]
    pid: int
    pidfd: int
    err: int  # fd of the stderr file
    start_ns: int
    deadline: float
    extra: dict[str, object] = field(default_factory=dict)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _spawn(
    argv: Sequence[str], env: Mapping[str, str], cwd: str, timeout: float, err_dir: str | None
) -> _Running:
    err = tempfile.TemporaryFile(dir=err_dir)
    err_fd = os.dup(err.fileno())
    err.close()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, err_fd, 2),
    ]
    # posix_spawn has no cwd action in Python 3.11: chdir around it (single-threaded here).
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(cwd)
        start = time.perf_counter_ns()
        pid = os.posix_spawn(argv[0], list(argv), dict(env), file_actions=actions)
    finally:
        os.fchdir(old)
        os.close(old)
    return _Running(list(argv), pid, os.pidfd_open(pid), err_fd, start, time.monotonic() + timeout)


def _reap(r: _Running, end_ns: int, timed_out: bool = False, keep_stderr: bool = False) -> Result:
    if timed_out:
        os.kill(r.pid, signal.SIGKILL)
    _, status, ru = os.wait4(r.pid, 0)
    os.close(r.pidfd)
    code = -1 if timed_out else _exit_code(status)
    stderr = ""
    if code != 0 or keep_stderr:
        os.lseek(r.err, 0, os.SEEK_SET)
        stderr = os.read(r.err, 1 << 16).decode(errors="replace").strip()
        if timed_out:
            stderr = f"(timed out, killed) {stderr}"
    os.close(r.err)
    return Result(
        argv=r.argv,
        wall_ms=(end_ns - r.start_ns) / 1e6,
        code=code,
        maxrss_kb=ru.ru_maxrss,
        cpu_ms=(ru.ru_utime + ru.ru_stime) * 1e3,
        user_ms=ru.ru_utime * 1e3,
        sys_ms=ru.ru_stime * 1e3,
        stderr=stderr,
        end_ns=end_ns,
        start_ns=r.start_ns,
    )


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str = "/",
    timeout: float = DEFAULT_TIMEOUT,
    err_dir: str | None = None,
) -> Result:
    """Run ``argv`` to completion and measure it."""
    r = _spawn(argv, env, cwd, timeout, err_dir)
    try:
        left = r.deadline - time.monotonic()
        ready, _, _ = select.select([r.pidfd], [], [], max(left, 0))
    except BaseException:
        _reap(r, time.perf_counter_ns(), timed_out=True)
        raise
    end = time.perf_counter_ns()
    return _reap(r, end, timed_out=not ready)


def run_concurrently(
    argvs: Sequence[Sequence[str]],
    env: Mapping[str, str],
    *,
    cwd: str = "/",
    timeout: float = DEFAULT_TIMEOUT,
    err_dir: str | None = None,
    keep_stderr: bool = False,
) -> tuple[list[Result], float]:
    """Start every command at once (as fast as posix_spawn goes), wait for all of them.

    Returns the results in the order of ``argvs`` and the wall time in ms from the first
    spawn to the last exit. ``keep_stderr``: read every command's stderr, not only a failed
    one's."""
    running: list[_Running] = []
    results: dict[int, Result] = {}
    try:
        for argv in argvs:
            running.append(_spawn(argv, env, cwd, timeout, err_dir))
        first = running[0].start_ns if running else time.perf_counter_ns()
        pending = {r.pidfd: (i, r) for i, r in enumerate(running)}
        while pending:
            deadline = min(r.deadline for _, r in pending.values())
            ready, _, _ = select.select(list(pending), [], [], max(deadline - time.monotonic(), 0))
            now = time.perf_counter_ns()
            if not ready:
                for fd, (i, r) in list(pending.items()):
                    if time.monotonic() >= r.deadline:
                        results[i] = _reap(r, now, timed_out=True)
                        del pending[fd]
                continue
            for fd in ready:
                i, r = pending.pop(fd)
                results[i] = _reap(r, now, keep_stderr=keep_stderr)
    except BaseException:
        # Interrupted: leave no child behind.
        for i, r in enumerate(running):
            if i not in results:
                try:
                    os.kill(r.pid, signal.SIGKILL)
                    os.waitpid(r.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        raise
    last = max((res.end_ns for res in results.values()), default=first)
    return [results[i] for i in range(len(running))], (last - first) / 1e6

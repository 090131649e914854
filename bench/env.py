"""What the benchmark runs on and with: the runtimes (started through scripts/runtimes), the
toolbox image, the installed crashcart console script and its bytecode, and the machine."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
CRASHCART = VENV / "bin" / "crashcart"
RUNTIMES_SCRIPT = REPO / "scripts" / "runtimes"
PACKAGE = REPO / "crashcart"
TOOLBOX_CANDIDATES = (
    Path("/var/lib/crashcart/crashcart-minimal.img"),
    Path("/var/tmp/crashcart-dev.img"),
)
LOCK = Path("/run/crashcart-bench.lock")


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# One benchmark at a time


@contextlib.contextmanager
def exclusive():
    """Two benchmark runs at once would measure each other."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another benchmark holds {LOCK}") from None
        yield


# ---------------------------------------------------------------------------------------------
# Runtimes


def _runtimes(*args: str) -> None:
    log(f"scripts/runtimes {' '.join(args)}")
    # Its progress goes to our stderr: stdout carries only the tables.
    proc = subprocess.run(
        [str(RUNTIMES_SCRIPT), *args], stdin=subprocess.DEVNULL, stdout=sys.stderr, cwd=REPO
    )
    if proc.returncode != 0:
        raise BenchError(f"scripts/runtimes {' '.join(args)} failed (exit {proc.returncode})")


def start_runtimes(holder: int) -> None:
    """Install what is missing, start containerd and dockerd (reusing running ones), and load
    the fixture images (cached: seconds when already there)."""
    # Idempotent and quick when nothing changed; reinstalls crashcart into .venv when its
    # sources changed, so that the installed command is the code being measured.
    _runtimes("install")
    _runtimes("start", "--holder", str(holder))
    _runtimes("load-images")


def stop_runtimes(holder: int) -> None:
    """Stop the daemons that our `start` started, unless someone else still holds them."""
    with contextlib.suppress(BenchError):
        _runtimes("stop", "--holder", str(holder))


def ensure_bench_deps() -> None:
    """pip install pyproject's `bench` extra into the venv when it is missing (matplotlib, for
    the chart only: nothing is measured while it loads)."""
    if importlib.util.find_spec("matplotlib") is not None:
        return
    import tomllib

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["bench"]
    log(f"installing the bench extra: {' '.join(extra)}")
    proc = subprocess.run(
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *extra],
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        log("could not install the bench extra: no chart")


# ---------------------------------------------------------------------------------------------
# The toolbox image


def toolbox(explicit: str | None) -> Path:
    """--image, else $CRASHCART_IMAGE, else the minimal image, else the session-only dev one."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get("CRASHCART_IMAGE"):
        path = Path(os.environ["CRASHCART_IMAGE"])
    else:
        path = next((p for p in TOOLBOX_CANDIDATES if p.exists()), TOOLBOX_CANDIDATES[-1])
    if not path.is_file():
        raise BenchError(f"toolbox image {path} does not exist (set CRASHCART_IMAGE or --image)")
    return path


def toolbox_facts(path: Path) -> dict[str, object]:
    st = path.stat()
    with open(path, "rb") as f:
        head = f.read(2048)
    fmt = "unknown"
    if head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        fmt = "erofs"
    elif head[:4] == b"hsqs":
        fmt = "squashfs"
    elif head[1024 + 56 : 1024 + 58] == b"\x53\xef":
        fmt = "ext4"
    return {"path": str(path), "bytes": st.st_size, "format": fmt, "mtime": int(st.st_mtime)}


# ---------------------------------------------------------------------------------------------
# The console script and its bytecode


def installed_package() -> Path:
    """The crashcart package that the console script imports (run from / without PYTHONPATH,
    as an operator's shell would)."""
    e = dict(os.environ)
    e.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-c",
            "import crashcart, os; print(os.path.dirname(crashcart.__file__))",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        env=e,
    )
    if proc.returncode != 0:
        raise BenchError(f"the venv cannot import crashcart: {proc.stderr.strip()[-300:]}")
    return Path(proc.stdout.strip())


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.py"))
    }


def console_script() -> dict[str, object]:
    """The installed crashcart, and the interpreter its shebang names (must be Debian's
    /usr/bin/python3 through the venv: the pyenv python on PATH starts ~30 ms slower)."""
    if not os.access(CRASHCART, os.X_OK):
        raise BenchError(f"{CRASHCART} missing: run scripts/runtimes install")
    text = CRASHCART.read_text()
    shebang = text.splitlines()[0]
    interp = shebang.removeprefix("#!").split()[0]
    real = os.path.realpath(interp)
    cfg = (VENV / "pyvenv.cfg").read_text()
    home = next(
        (line.split("=", 1)[1].strip() for line in cfg.splitlines() if line.startswith("home")), ""
    )
    pkg = installed_package()
    facts = {
        "path": str(CRASHCART),
        "shebang": shebang,
        "interpreter": real,
        "venv_home": home,
        "python": subprocess.run(
            [interp, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
        ).stdout.strip(),
        # pip's generated wrapper imports re (and enum) just to tidy sys.argv[0]
        "pip_wrapper": "import re" in text,
        "editable_finder": any(VENV.glob("lib/python3*/site-packages/__editable___crashcart*")),
        "package": str(pkg),
        "package_matches_repo": pkg == PACKAGE or _digest_tree(pkg) == _digest_tree(PACKAGE),
    }
    if not real.startswith("/usr/bin/python3") or home != "/usr/bin":
        log(f"warning: {CRASHCART} runs {real} (venv home {home!r}), not Debian's /usr/bin/python3")
    if not facts["package_matches_repo"]:
        log(
            f"warning: the installed package {pkg} differs from the repo's crashcart/ "
            "(scripts/runtimes install reinstalls it)"
        )
    return facts


def _pyc_state(src: Path) -> str:
    """fresh, stale or missing: would the interpreter use the cached bytecode of ``src``?"""
    pyc = Path(importlib.util.cache_from_source(str(src)))
    try:
        head = pyc.read_bytes()[:16]
    except FileNotFoundError:
        return "missing"
    flags, mtime, size = struct.unpack("<III", head[4:16])
    st = src.stat()
    if flags != 0 or mtime != int(st.st_mtime) & 0xFFFFFFFF or size != st.st_size & 0xFFFFFFFF:
        return "stale"
    return "fresh"


def pyc_report(pkg: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"fresh": [], "stale": [], "missing": []}
    for src in sorted(pkg.rglob("*.py")):
        out[_pyc_state(src)].append(str(src.relative_to(pkg.parent)))
    return out


def compile_package(pkg: Path) -> dict[str, object]:
    """Make sure the installed package's .pyc files exist and are fresh, as pip leaves them.

    PYTHONDONTWRITEBYTECODE=1 is set in this environment, so the interpreter never writes
    them itself: a missing or stale .pyc means that module is compiled from source at every
    start."""
    before = pyc_report(pkg)
    python = str(VENV / "bin" / "python")
    proc = subprocess.run(
        [python, "-m", "compileall", "-q", str(pkg)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BenchError(f"compileall failed: {proc.stdout}{proc.stderr}")
    after = pyc_report(pkg)
    return {
        "package": str(pkg),
        "before": {k: len(v) for k, v in before.items()},
        "after": {k: len(v) for k, v in after.items()},
    }


def source_snapshot(pkg: Path, dest: Path) -> Path:
    """A copy of the package without any __pycache__, for the no-bytecode variant (put first on
    PYTHONPATH, it shadows the installed one; PYTHONDONTWRITEBYTECODE keeps it bare)."""
    shutil.copytree(pkg, dest / "crashcart", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


# ---------------------------------------------------------------------------------------------
# The machine


def _out(argv: list[str]) -> str:
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / hz, total / hz


class Contention:
    """How busy the machine was during a phase, and how much of that our commands were:
    ``others`` is what everything else used (other users' work, and the daemons' work on our
    behalf, e.g. dockerd serving docker exec), as a share of all cores."""

    def __init__(self) -> None:
        self.start = cpu_times()
        self.load = loadavg()

    def done(self, ours_cpu_s: float) -> dict[str, object]:
        busy0, total0 = self.start
        busy1, total1 = cpu_times()
        total = max(total1 - total0, 1e-9)
        busy = busy1 - busy0
        return {
            "loadavg_before": self.load,
            "loadavg_after": loadavg(),
            "machine_busy_pct": round(100 * busy / total, 1),
            "our_commands_pct": round(100 * ours_cpu_s / total, 1),
            "others_pct": round(100 * max(busy - ours_cpu_s, 0) / total, 1),
        }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, object]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "memory": mem,
        "os": _out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "loadavg_start": loadavg(),
    }


def _ctr_server_version() -> str:
    text = _out(["ctr", "version"])
    server = text.split("Server:", 1)[1] if "Server:" in text else ""
    for line in server.splitlines():
        if line.strip().startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return ""


def versions(docker: str) -> dict[str, str]:
    runc = _out(["runc", "--version"]).splitlines()
    return {
        "docker": _out([docker, "version", "-f", "{{.Client.Version}}/{{.Server.Version}}"]),
        "podman": _out(["podman", "version", "-f", "{{.Client.Version}}"]),
        "containerd": _ctr_server_version(),
        "runc": runc[0] if runc else "",
        "nsenter": _out(["nsenter", "--version"]),
    }


def git_facts() -> dict[str, object]:
    return {
        "head": _out(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "crashcart_dirty": _out(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "crashcart"]
        ).splitlines(),
    }

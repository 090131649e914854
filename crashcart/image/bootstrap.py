"""Install a recipe's packages into a directory with mmdebstrap.

Measured on the project machine (bookworm, 2 cores): `--variant=essential` plus the
recipe's packages beats `minbase` (no apt, no priority-required extras in the image), the
merged-usr hook avoids usrmerge pulling perl into every image, and path-exclude drops
documentation before it is even written. A warm rebuild still takes ~40 s for the default
recipe: dpkg's configure step (maintainer scripts, python byte-compiling) dominates.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from crashcart.errors import ImageError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
CACHE_DIR = "/var/cache/crashcart/debs"
MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr"

# dpkg filters: documentation never reaches the disk. Copyright files stay (a few hundred
# KB): the image is a redistribution of Debian packages.
PATH_EXCLUDES = (
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-include=/usr/share/locale/locale.alias",
    "--dpkgopt=path-exclude=/usr/share/lintian/*",
    "--dpkgopt=path-exclude=/usr/share/linda/*",
)

LineSink = Callable[[str], None]


@dataclass
class BootstrapSpec:
    packages: list[str]
    target: str
    suite: str = DEFAULT_SUITE
    mirror: str = DEFAULT_MIRROR
    variant: str = "essential"
    mode: str = "unshare"
    cache_dir: str | None = CACHE_DIR


def command(spec: BootstrapSpec) -> list[str]:
    """The mmdebstrap command line for `spec` (pure: unit-tested)."""
    cmd = [
        "mmdebstrap",
        "--verbose",
        f"--variant={spec.variant}",
        f"--mode={spec.mode}",
        "--format=directory",
        "--dpkgopt=force-unsafe-io",  # the tree is packed and thrown away: no fsync
        *PATH_EXCLUDES,
    ]
    if os.path.isdir(MERGED_USR_HOOK):
        cmd.append(f"--hook-dir={MERGED_USR_HOOK}")
    if spec.packages:
        cmd.append("--include=" + ",".join(spec.packages))
    if spec.cache_dir:
        # mmdebstrap's documented .deb cache: copy in before download, copy out after.
        cmd += [
            "--skip=essential/unlink",
            '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
            f"--setup-hook=sync-in {spec.cache_dir} /var/cache/apt/archives/",
            f"--customize-hook=sync-out /var/cache/apt/archives {spec.cache_dir}",
        ]
    return [*cmd, spec.suite, spec.target, spec.mirror]


def choose_mode() -> str:
    """unshare mode (maintainer scripts cannot touch the host) where user namespaces work."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    if probe.returncode == 0:
        return "unshare"
    if os.geteuid() == 0:
        return "root"
    raise ImageError(
        "cannot build: user namespaces are disabled and we are not root",
        hint="run as root, or enable unprivileged user namespaces",
    )


def check_mirror(mirror: str, suite: str, timeout: float = 15.0) -> None:
    """Fail early and clearly when the mirror is unreachable or lacks the suite."""
    if mirror.startswith(("file:", "copy:")):
        return
    url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read(1)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise ImageError(f"suite {suite!r} not found on {mirror}", hint=f"no {url}") from None
        raise ImageError(f"mirror {mirror} answered HTTP {e.code} for {url}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ImageError(
            f"cannot reach mirror {mirror}: {reason}",
            hint="check the network or pass --mirror URL",
        ) from None


def run(spec: BootstrapSpec, log_path: str, on_line: LineSink | None = None) -> None:
    """Run mmdebstrap, streaming its log; raise ImageError with the cause on failure."""
    if shutil.which("mmdebstrap") is None:
        raise ImageError("mmdebstrap not found", hint="apt-get install mmdebstrap")
    if spec.cache_dir:
        os.makedirs(spec.cache_dir, exist_ok=True)
        # Two builds share the cache: one's prune must not delete what the other syncs in.
        with open(os.path.join(spec.cache_dir, ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _run_logged(spec, log_path, on_line)
            prune_cache(spec.cache_dir)
        return
    _run_logged(spec, log_path, on_line)


def _run_logged(spec: BootstrapSpec, log_path: str, on_line: LineSink | None) -> None:
    tail: list[str] = []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            command(spec),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            tail = (tail + [line.rstrip()])[-400:]
            if on_line:
                on_line(line.rstrip())
        rc = proc.wait()
    if rc != 0:
        raise explain_failure(tail, log_path)


_MISSING = re.compile(r"E: Unable to locate package (\S+)")
_NO_CANDIDATE = re.compile(r"E: Package '([^']+)' has no installation candidate")


def explain_failure(lines: list[str], log_path: str) -> ImageError:
    """Turn mmdebstrap's log tail into one clear message."""
    text = "\n".join(lines)
    missing = _MISSING.findall(text) + _NO_CANDIDATE.findall(text)
    if missing:
        return ImageError(
            f"package not found in the suite: {', '.join(dict.fromkeys(missing))}",
            hint="check the name with `apt-cache policy NAME` or pick another --suite",
        )
    if "No space left on device" in text:
        return ImageError(
            "no space left on device while installing packages",
            hint=f"free space under the build directory; log: {log_path}",
        )
    if re.search(r"(Could not resolve|Failed to fetch|Temporary failure|Connection)", text):
        fetch = next((ln for ln in lines if "Failed to fetch" in ln or "Err:" in ln), "")
        return ImageError(
            f"downloading packages failed: {fetch.strip()}",
            hint="check the network or --mirror; log: " + log_path,
        )
    errors = [ln for ln in lines if ln.startswith("E:")]
    detail = errors[-1] if errors else (lines[-1] if lines else "no output")
    return ImageError(f"mmdebstrap failed: {detail}", hint=f"full log: {log_path}")


def prune_cache(cache_dir: str) -> None:
    """Keep only the newest .deb of each package so the cache does not grow forever."""
    newest: dict[str, tuple[float, str]] = {}
    for entry in os.scandir(cache_dir):
        if not entry.name.endswith(".deb"):
            continue
        pkg = entry.name.split("_", 1)[0] + "_" + entry.name.rsplit("_", 1)[-1]
        mtime = entry.stat().st_mtime
        old = newest.get(pkg)
        if old is None or mtime > old[0]:
            if old is not None:
                os.unlink(old[1])
            newest[pkg] = (mtime, entry.path)
        else:
            os.unlink(entry.path)


def installed_packages(rootfs: str) -> list[dict[str, str]]:
    """Package name, version and architecture from the rootfs's dpkg status."""
    status = os.path.join(rootfs, "var/lib/dpkg/status")
    if not os.path.exists(status):
        return apk_packages(rootfs)
    with open(status, errors="replace") as f:
        return parse_dpkg_status(f.read())


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields = dict(_fields(block))
        if "Package" in fields and fields.get("Status", "").endswith(" installed"):
            out.append(
                {
                    "name": fields["Package"],
                    "version": fields.get("Version", ""),
                    "arch": fields.get("Architecture", ""),
                }
            )
    return sorted(out, key=lambda p: p["name"])


def _fields(block: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            pairs.append((key, value.strip()))
    return pairs


def apk_packages(rootfs: str) -> list[dict[str, str]]:
    """Alpine's installed database (for --from-image of an Alpine-based image)."""
    path = os.path.join(rootfs, "lib/apk/db/installed")
    if not os.path.exists(path):
        return []
    out: list[dict[str, str]] = []
    with open(path, errors="replace") as f:
        current: dict[str, str] = {}
        for line in f:
            key, _, value = line.rstrip("\n").partition(":")
            if key == "P":
                current = {"name": value, "version": "", "arch": ""}
                out.append(current)
            elif key == "V" and current:
                current["version"] = value
            elif key == "A" and current:
                current["arch"] = value
    return sorted(out, key=lambda p: p["name"])

"""Relocate a root filesystem so that its programs run from PREFIX (`/dev/crashcart`).

In sideload mode the toolbox is mounted at /dev/crashcart inside a container whose own `/`
may hold no glibc at all (busybox, musl, distroless). The kernel then starts a toolbox
program with *the container's* root, so every absolute path baked into the toolbox has to
point below the prefix:

- ELF programs: PT_INTERP (the kernel opens it; no $ORIGIN there) becomes the loader's
  physical path under the prefix; DT_RPATH lists the toolbox library directories under the
  prefix. DT_RPATH rather than DT_RUNPATH because ld.so searches an executable's RPATH for
  every library in the process, dlopen()ed ones included, and *before* LD_LIBRARY_PATH,
  which a container may set to its own libraries. Absolute rather than $ORIGIN-relative
  because ld.so ignores $ORIGIN in AT_SECURE processes (ping and mtr-packet carry file
  capabilities).
- Libraries keep no RUNPATH: an object with DT_RUNPATH makes ld.so skip every RPATH for its
  dependencies, so existing RUNPATH/RPATH entries become an RPATH under the prefix.
- Absolute symlinks become relative (an absolute `/bin/ip` silently runs the container's
  busybox ip), except those meant to point into the live system (/proc, /dev, ...).
- `#!` lines point at the toolbox's interpreters under the prefix.
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from crashcart.errors import ImageError
from crashcart.image import rootpath
from crashcart.image.elf import ElfInfo, read_elf

PREFIX = "/dev/crashcart"

# Symlinks into the live system: resolving them against the container's / is the point.
LIVE_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp")
BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
DEFAULT_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64")
CAP_XATTR = "security.capability"
# A #! line matters only in a file that is run: one in a bin, sbin or libexec directory, one
# a symlink there points to, or any file that is not a library module. A module with a stale
# #! (Debian's /usr/lib/python3.11/cgi.py names /usr/local/bin/python) is imported, never
# executed: not worth a word to the operator.
PROGRAM_DIRS = frozenset({"bin", "sbin", "libexec"})
MODULE_SUFFIXES = (".py", ".pm", ".rb", ".tcl", ".lua")

Progress = Callable[[int, int], None]


@dataclass
class Report:
    """What relocation did, and what it could not do (for the manifest and the user)."""

    prefix: str = PREFIX
    elf_patched: int = 0
    elf_static: int = 0
    symlinks_rewritten: int = 0
    shebangs_rewritten: int = 0
    interpreters: dict[str, str] = field(default_factory=dict)
    rpath: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    library_shebangs: int = 0  # modules whose #! names a missing interpreter: left as is

    def as_dict(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "elf_patched": self.elf_patched,
            "elf_static": self.elf_static,
            "symlinks_rewritten": self.symlinks_rewritten,
            "shebangs_rewritten": self.shebangs_rewritten,
            "interpreters": self.interpreters,
            "rpath": self.rpath,
            "not_relocated": self.problems,
            "library_shebangs_left": self.library_shebangs,
        }


@dataclass
class ElfJob:
    path: str  # rootfs-absolute
    interp: str | None
    rpath: str | None


# ---- pure planning -------------------------------------------------------------------


def symlink_target(link: str, target: str, prefix: str = PREFIX) -> str | None:
    """The new text of symlink `link` (rootfs-absolute), or None to keep `target`."""
    if not target.startswith("/") or target.startswith(prefix + "/"):
        return None
    if any(target == d or target.startswith(d + "/") for d in LIVE_DIRS):
        return None
    return rootpath.relative_target(link, target)


def rewrite_shebang(
    line: bytes, find: Callable[[str], str | None], prefix: str = PREFIX
) -> bytes | None:
    """Rewrite a `#!` line (without newline) to use the toolbox's interpreter.

    `find(path)` returns the rootfs-absolute path when `path` exists in the toolbox (for a
    bare command name: where it is on the toolbox PATH), else None. Returns None when the
    line needs no change. Raises LookupError when the interpreter is not in the toolbox.
    """
    if not line.startswith(b"#!"):
        return None
    body = line[2:].strip()
    if not body:
        return None
    interp, _, arg = body.partition(b" ")
    arg = arg.strip()
    text = interp.decode(errors="surrogateescape")
    if not text.startswith("/") or text.startswith(prefix + "/"):
        return None
    if find(text) is None:
        raise LookupError(text)
    if os.path.basename(text) == "env" and arg and not arg.startswith(b"-"):
        # `#!/usr/bin/env python3` would search the *container's* PATH first when run
        # outside crashcart's shell; pin the toolbox's program instead.
        name = arg.decode(errors="surrogateescape")
        found = find(name) if b" " not in arg and b"/" not in arg else None
        if found is not None:
            return b"#!" + (prefix + found).encode(errors="surrogateescape")
    new = b"#!" + (prefix + text).encode(errors="surrogateescape")
    return new + (b" " + arg if arg else b"")


def map_search_path(path: str | None, prefix: str = PREFIX) -> list[str]:
    """Existing RPATH/RUNPATH entries, absolute ones moved under the prefix."""
    out: list[str] = []
    for entry in (path or "").split(":"):
        if not entry:
            continue
        if entry.startswith("/") and not entry.startswith(prefix + "/"):
            entry = prefix + entry
        out.append(entry)
    return out


def plan_elf(
    path: str,
    info: ElfInfo,
    interp_map: dict[str, str | None],
    lib_dirs: list[str],
    prefix: str = PREFIX,
) -> ElfJob | None:
    """What to patch in one ELF file; None if nothing (static, loader, plain library)."""
    new_interp: str | None = None
    if info.interp is not None:
        resolved = interp_map.get(info.interp)
        if resolved is None or resolved == path:
            return None
        new_interp = prefix + resolved
        if new_interp == info.interp:
            new_interp = None
    own = map_search_path(info.search_path, prefix)
    if info.is_executable:
        rpath = _dedupe(own + [prefix + d for d in lib_dirs])
    elif info.search_path is not None:
        rpath = _dedupe(own + [prefix + d for d in lib_dirs])
    else:
        rpath = []
    joined = ":".join(rpath) if rpath else None
    if new_interp is None and (joined is None or (joined == info.rpath and info.runpath is None)):
        return None
    return ElfJob(path=path, interp=new_interp, rpath=joined)


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


# ---- reading the rootfs --------------------------------------------------------------


def walk(rootfs: str) -> Iterator[tuple[str, os.stat_result]]:
    """(rootfs-absolute path, lstat) of every file; symlinked directories are not entered."""
    for dirpath, dirnames, filenames in os.walk(rootfs):
        rel_dir = "/" + os.path.relpath(dirpath, rootfs).lstrip(".")
        for name in dirnames + filenames:
            rel = os.path.join(rel_dir, name)
            yield rel, os.lstat(os.path.join(dirpath, name))


def library_dirs(rootfs: str) -> list[str]:
    """Directories ld.so searches in this rootfs, physical paths, only ones holding libs."""
    dirs = _ld_so_conf(rootfs, "/etc/ld.so.conf", 0) + list(DEFAULT_LIB_DIRS)
    for musl_path in glob.glob(rootpath.host_path(rootfs, "/etc/ld-musl-*.path")):
        with open(musl_path) as f:
            dirs += f.read().replace(":", "\n").split()
    out: list[str] = []
    for d in dirs:
        real = rootpath.resolve(rootfs, d)
        if real and real not in out and _has_libraries(rootpath.host_path(rootfs, real)):
            out.append(real)
    return out


def _ld_so_conf(rootfs: str, conf: str, depth: int) -> list[str]:
    path = rootpath.host_path(rootfs, conf)
    if depth > 8 or not os.path.isfile(path):
        return []
    dirs: list[str] = []
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if line.startswith("include "):
                pattern = line.split(None, 1)[1]
                if not pattern.startswith("/"):
                    pattern = os.path.join(os.path.dirname(conf), pattern)
                for inc in sorted(glob.glob(rootpath.host_path(rootfs, pattern))):
                    dirs += _ld_so_conf(rootfs, "/" + os.path.relpath(inc, rootfs), depth + 1)
            elif line.startswith("/"):
                dirs.append(line)
    return dirs


def _has_libraries(path: str) -> bool:
    try:
        # the loader alone (/usr/lib64 on Debian) is not a library directory
        return any(
            ".so" in e.name and not e.name.startswith("ld-")
            for e in os.scandir(path)
            if not e.is_dir()
        )
    except OSError:
        return False


# ---- applying ------------------------------------------------------------------------


def relocate(rootfs: str, prefix: str = PREFIX, progress: Progress | None = None) -> Report:
    """Relocate `rootfs` in place to run from `prefix`."""
    report = Report(prefix=prefix)
    files = list(walk(rootfs))
    report.symlinks_rewritten = _rewrite_symlinks(rootfs, files, prefix)
    report.shebangs_rewritten = _rewrite_shebangs(rootfs, files, prefix, report)
    _fix_ldd(rootfs, prefix)
    _patch_elves(rootfs, files, prefix, report, progress)
    return report


def _rewrite_symlinks(rootfs: str, files: list[tuple[str, os.stat_result]], prefix: str) -> int:
    count = 0
    for rel, st in files:
        if not stat.S_ISLNK(st.st_mode):
            continue
        host = rootpath.host_path(rootfs, rel)
        new = symlink_target(rel, os.readlink(host), prefix)
        if new is not None:
            os.unlink(host)
            os.symlink(new, host)
            count += 1
    return count


def _find_in_toolbox(rootfs: str, name: str) -> str | None:
    if name.startswith("/"):
        return name if rootpath.exists(rootfs, name) else None
    for d in BIN_DIRS:
        candidate = f"{d}/{name}"
        real = rootpath.resolve(rootfs, candidate)
        if real and os.access(rootpath.host_path(rootfs, real), os.X_OK):
            return candidate
    return None


def _rewrite_shebangs(
    rootfs: str, files: list[tuple[str, os.stat_result]], prefix: str, report: Report
) -> int:
    count = 0
    cache: dict[str, str | None] = {}

    def find(name: str) -> str | None:
        if name not in cache:
            cache[name] = _find_in_toolbox(rootfs, name)
        return cache[name]

    linked = _program_link_targets(rootfs, files)
    for rel, st in files:
        # Only executables: a non-executable script is run as `sh file`, its #! unused.
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        try:
            if _rewrite_one_shebang(rootpath.host_path(rootfs, rel), find, prefix):
                count += 1
        except LookupError as e:
            if is_program(rel, linked):
                report.problems.append(f"{rel}: interpreter {e.args[0]} is not in the image")
            else:
                report.library_shebangs += 1
    return count


def is_program(rel: str, linked: set[str]) -> bool:
    """Whether the executable file `rel` is run as a program (see PROGRAM_DIRS)."""
    parts = rel.strip("/").split("/")
    if PROGRAM_DIRS & set(parts[:-1]) or rel in linked:
        return True
    return not parts[-1].endswith(MODULE_SUFFIXES)


def _program_link_targets(rootfs: str, files: list[tuple[str, os.stat_result]]) -> set[str]:
    out = set()
    for rel, st in files:
        if stat.S_ISLNK(st.st_mode) and PROGRAM_DIRS & set(rel.strip("/").split("/")[:-1]):
            real = rootpath.resolve(rootfs, rel)
            if real:
                out.add(real)
    return out


def _rewrite_one_shebang(path: str, find: Callable[[str], str | None], prefix: str) -> bool:
    with open(path, "rb") as f:
        if f.read(2) != b"#!":
            return False
        data = b"#!" + f.read()
    first, nl, rest = data.partition(b"\n")
    new = rewrite_shebang(first, find, prefix)
    if new is None:
        return False
    # Same inode: keeps hard links, owner and mode.
    with open(path, "r+b") as f:
        f.write(new + nl + rest)
        f.truncate()
    return True


def _fix_ldd(rootfs: str, prefix: str) -> None:
    """ldd hard-codes the loader paths in RTLDLIST; point them into the toolbox."""
    path = rootpath.host_path(rootfs, "/usr/bin/ldd")
    if not os.path.isfile(path) or os.path.islink(path):
        return
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines):
        if line.startswith(b"RTLDLIST=") and prefix.encode() not in line:
            lines[i] = line.replace(b" /", b" " + prefix.encode() + b"/").replace(
                b'="/', b'="' + prefix.encode() + b"/"
            )
    with open(path, "r+b") as f:
        f.write(b"\n".join(lines))
        f.truncate()


def _patch_elves(
    rootfs: str,
    files: list[tuple[str, os.stat_result]],
    prefix: str,
    report: Report,
    progress: Progress | None,
) -> None:
    lib_dirs = library_dirs(rootfs)
    report.rpath = [prefix + d for d in lib_dirs]
    jobs = _elf_jobs(rootfs, files, prefix, lib_dirs, report)
    if jobs and shutil.which("patchelf") is None:
        raise ImageError("patchelf not found", hint="apt-get install patchelf")
    done = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for error in pool.map(lambda j: _run_patchelf(rootfs, j), jobs):
            done += 1
            if error:
                report.problems.append(error)
            else:
                report.elf_patched += 1
            if progress:
                progress(done, len(jobs))


def _elf_jobs(
    rootfs: str,
    files: list[tuple[str, os.stat_result]],
    prefix: str,
    lib_dirs: list[str],
    report: Report,
) -> list[ElfJob]:
    seen: set[int] = set()
    interp_map: dict[str, str | None] = {}
    jobs: list[ElfJob] = []
    for rel, st in files:
        if not stat.S_ISREG(st.st_mode) or st.st_ino in seen or st.st_size < 64:
            continue
        seen.add(st.st_ino)  # hard links (perl, perl5.36.0) are patched once
        info = read_elf(rootpath.host_path(rootfs, rel))
        if info is None:
            continue
        if not info.dynamic:
            report.elf_static += 1
            continue
        if info.interp is not None and info.interp not in interp_map:
            interp_map[info.interp] = rootpath.resolve(rootfs, info.interp)
            _note_interp(info.interp, interp_map[info.interp], prefix, report)
        if info.interp is not None and interp_map[info.interp] is None:
            report.problems.append(f"{rel}: loader {info.interp} is not in the image")
            continue
        job = plan_elf(rel, info, interp_map, lib_dirs, prefix)
        if job is not None:
            jobs.append(job)
    return jobs


def _note_interp(old: str, resolved: str | None, prefix: str, report: Report) -> None:
    if resolved is not None:
        report.interpreters[old] = prefix + resolved


def _run_patchelf(rootfs: str, job: ElfJob) -> str | None:
    path = rootpath.host_path(rootfs, job.path)
    args = ["patchelf"]
    if job.interp:
        args += ["--set-interpreter", job.interp]
    if job.rpath:
        args += ["--force-rpath", "--set-rpath", job.rpath]
    st = os.lstat(path)
    caps = _get_caps(path)
    proc = subprocess.run(args + [path], capture_output=True, text=True)
    # Writing a file drops its security.capability xattr (and, for non-root, setuid):
    # put back what dpkg set (ping, mtr-packet need CAP_NET_RAW outside a root session).
    os.chmod(path, stat.S_IMODE(st.st_mode))
    if caps is not None:
        os.setxattr(path, CAP_XATTR, caps)
    if proc.returncode != 0:
        return f"{job.path}: patchelf failed: {proc.stderr.strip()}"
    return None


def _get_caps(path: str) -> bytes | None:
    try:
        return os.getxattr(path, CAP_XATTR, follow_symlinks=False)
    except OSError:
        return None

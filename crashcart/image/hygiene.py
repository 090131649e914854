"""Keep the toolbox's own tools from loading the container's code or configuration, and from
writing side files into it. The audit behind every entry is in docs/toolbox.md.

Session mode: crashcart builds each command's environment and adds the KEY=VALUE lines of
/.crashcart/session.env (written here); the working directory is under /target, the
container's files, while /tmp, /run and /root (HOME) are the session's private tmpfs.

Sideload mode: the container's root is `/`, so every path compiled into a program (/etc/...)
names the container's file, and crashcart owns no writable place: env.sh switches side files
off and points HOME at the toolbox's read-only /root; wrappers say what no variable can
(gdb -nx, vim -u, nano --rcfile). Three tools have no switch at all for their
current-directory rc file; a small patch to the toolbox's copy removes it (PATCHES).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from crashcart.image import elf, rootpath
from crashcart.image.relocate import PREFIX

REAL_DIR = "/usr/lib/crashcart"

# (variable, value, a path that must exist in the rootfs, why). Values are literal: the
# attach engine does no quoting or expansion in session.env.
SESSION_ENV = (
    ("PYTHONSAFEPATH", "1", "/usr/bin/python3*",
     "python: never import from the current directory (/target/...) or a script's"),
    ("PYTHONNOUSERSITE", "1", "/usr/bin/python3*", "python: no ~/.local site-packages"),
    ("PYTHONDONTWRITEBYTECODE", "1", "/usr/bin/python3*",
     "python: no __pycache__ next to modules imported from /target"),
    ("AWKPATH", "/usr/share/awk", "/usr/share/awk",
     "gawk: -i/-f/@include search '.' first by default (-i inplace ran ./inplace)"),
    ("AWKLIBPATH", "/usr/lib/*-linux-gnu/gawk", "/usr/lib/*-linux-gnu/gawk",
     "gawk: extensions (-l) from the toolbox only"),
    ("NMAPDIR", "/usr/share/nmap", "/usr/share/nmap", "nmap: data and NSE from the toolbox"),
    ("GDBHISTFILE", "/root/.gdb_history", "/usr/bin/gdb",
     "gdb: its history file defaults to ./.gdb_history (in /target)"),
)  # fmt: skip


@dataclass(frozen=True)
class Patch:
    """A one-place change to a toolbox file that has no switch for what it reads."""

    path: str  # glob in the rootfs
    old: str
    new: str
    why: str


PATCHES = (
    Patch("/usr/lib/python3*/pdb.py",
          '                with open(".pdbrc", encoding=\'utf-8\') as rcFile:\n',
          "                if sys.flags.safe_path:  # crashcart: never ./.pdbrc\n"
          "                    raise OSError\n"
          '                with open(".pdbrc", encoding=\'utf-8\') as rcFile:\n',
          "pdb runs ./.pdbrc (the container's, in /target) with no switch to stop it"),
    Patch("/usr/lib/python3*/pydoc.py",
          "def _get_revised_path(given_path, argv0):\n",
          "def _get_revised_path(given_path, argv0):\n"
          "    if sys.flags.safe_path:  # crashcart: no modules from the current directory\n"
          "        return None\n",
          "pydoc3 puts the current directory on sys.path whatever PYTHONSAFEPATH says"),
    Patch("/usr/share/perl/5.*/perl5db.pl",
          'if ( -f $rcfile ) {\n    safe_do("./$rcfile");\n}\n',
          "if ( 0 ) {  # crashcart: never ./.perldb (the container's)\n"
          '    safe_do("./$rcfile");\n}\n',
          "perl -d runs ./.perldb when root owns it: every file of a container without a "
          "user namespace"),
)  # fmt: skip

# program -> (paths it may have, wrapper in data/wrappers/, how it is installed).
# "front": the wrapper goes to /usr/local/bin, first on PATH (gdb finds its data directory
# from its own path, so the real binary stays put). "replace": the real program moves to
# REAL_DIR and the wrapper takes its place, so every name (vi, view, ex, rnano) reaches it.
WRAPPED = {
    "gdb": (("/usr/bin/gdb",), "front"),
    "vim.basic": (("/usr/bin/vim.basic",), "replace"),
    "nano": (("/usr/bin/nano",), "replace"),
    "tmux": (("/usr/bin/tmux",), "front"),
    "screen": (("/usr/bin/screen",), "front"),
}


def _data(name: str) -> str:
    return resources.files("crashcart.image").joinpath(f"data/{name}").read_text()


def _find(rootfs: str, pattern: str) -> list[str]:
    hits = sorted(glob.glob(rootpath.host_path(rootfs, pattern)))
    return ["/" + os.path.relpath(h, rootfs) for h in hits]


def session_environment(rootfs: str) -> list[tuple[str, str]]:
    out = []
    for name, value, needs, _ in SESSION_ENV:
        if not _find(rootfs, needs):
            continue
        found = _find(rootfs, value) if "*" in value else [value]
        if found:
            out.append((name, found[0]))
    return out


def render_session_env(env: list[tuple[str, str]]) -> str:
    why = {name: reason for name, _, _, reason in SESSION_ENV}
    lines = [
        "# crashcart: added to every session command's environment (KEY=VALUE, literal).",
        "# The session's working directory is the container's (under /target): no tool may",
        "# load code or configuration from it. See docs/toolbox.md.",
    ]
    for name, value in env:
        lines += [f"# {why.get(name, '')}", f"{name}={value}"]
    return "\n".join(lines) + "\n"


def apply_patches(rootfs: str) -> list[str]:
    """Apply PATCHES; returns problems (a file whose text is not the expected one)."""
    problems = []
    for patch in PATCHES:
        for rel in _find(rootfs, patch.path):
            problem = _patch_file(rootfs, rel, patch)
            if problem:
                problems.append(problem)
    return problems


def _patch_file(rootfs: str, rel: str, patch: Patch) -> str | None:
    host = rootpath.host_path(rootfs, rel)
    with open(host, encoding="utf-8") as f:
        text = f.read()
    if patch.new in text:
        return None  # a rebuilt toolbox
    if text.count(patch.old) != 1:
        return f"{rel}: not hardened ({patch.why}): its text is not the expected one"
    with open(host, "w", encoding="utf-8") as f:
        f.write(text.replace(patch.old, patch.new))
    # The shipped .pyc no longer matches its source (python then compiles it in memory).
    cache = os.path.join(os.path.dirname(host), "__pycache__")
    stem = os.path.splitext(os.path.basename(host))[0]
    for pyc in glob.glob(os.path.join(cache, f"{stem}.*.pyc")):
        os.unlink(pyc)
    return None


Writer = Callable[[str, str, str, int], None]


def install_wrappers(rootfs: str, write: Writer, real_bash: str, prefix: str = PREFIX) -> None:
    """The wrappers of WRAPPED whose program is in the image. Their #! names the real bash
    with -p (no BASH_ENV, no functions from the environment); relocation prefixes it."""
    for name, (candidates, how) in WRAPPED.items():
        path = next((c for c in candidates if _is_program(rootfs, c)), None)
        if path is None:
            continue
        real = path
        if how == "replace":
            real = f"{REAL_DIR}/{os.path.basename(path)}"
            os.makedirs(rootpath.host_path(rootfs, REAL_DIR), exist_ok=True)
            os.replace(rootpath.host_path(rootfs, path), rootpath.host_path(rootfs, real))
            dest = path
        else:
            dest = f"/usr/local/bin/{name}"
        text = _data(f"wrappers/{name}").replace(f"#!{REAL_DIR}/bash -p", f"#!{real_bash} -p", 1)
        text = text.replace("@REAL@", prefix + real).replace("@PREFIX@", prefix)
        write(rootfs, dest, text, 0o755)


def _is_program(rootfs: str, path: str) -> bool:
    host = rootpath.host_path(rootfs, path)
    return not os.path.islink(host) and os.path.isfile(host) and elf.is_elf(host)


def config_files(rootfs: str, prefix: str = PREFIX) -> dict[str, str]:
    """crashcart's configuration files for the wrapped tools in the image: path -> text."""
    out = {}
    if rootpath.exists(rootfs, "/usr/bin/gdb"):
        out["/.crashcart/gdbinit"] = _data("gdbinit")
    if rootpath.exists(rootfs, "/usr/bin/vim.basic"):
        out["/.crashcart/vimrc"] = _data("vimrc")
    if rootpath.exists(rootfs, "/usr/bin/nano"):
        nano = [prefix + p for p in _find(rootfs, "/usr/share/nano")]
        text = _data("nanorc")
        out["/.crashcart/nanorc"] = text + (f'include "{nano[0]}/*.nanorc"\n' if nano else "")
    return out

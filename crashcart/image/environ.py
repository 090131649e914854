"""The environment toolbox programs need when they run from PREFIX.

Relocation fixes what the kernel and ld.so read; programs still have data paths compiled
in (/usr/share/terminfo, /usr/lib/locale, perl's @INC, vim's runtime, ...) that would be
looked up in the *container's* root in sideload mode. Each variable below points one of
them into the toolbox. Only variables whose directory or file exists in the rootfs are
written, so the same code serves recipes, --from-rootfs and --from-image.
"""

from __future__ import annotations

import glob
import os
import shlex
from collections.abc import Callable

from crashcart.image import rootpath
from crashcart.image.relocate import PREFIX

Finder = Callable[[str], list[str]]


def _glob_finder(rootfs: str) -> Finder:
    def find(pattern: str) -> list[str]:
        hits = sorted(glob.glob(rootpath.host_path(rootfs, pattern)))
        return ["/" + os.path.relpath(h, rootfs) for h in hits]

    return find


def environment(rootfs: str, prefix: str = PREFIX) -> list[tuple[str, str]]:
    """(name, value) pairs for env.sh, in order."""
    find = _glob_finder(rootfs)
    env: list[tuple[str, str]] = []

    def add(name: str, patterns: list[str], sep: str = ":") -> None:
        paths = [p for pat in patterns for p in find(pat)]
        if paths:
            env.append((name, sep.join(prefix + p for p in dict.fromkeys(paths))))

    add("TERMINFO_DIRS", ["/etc/terminfo", "/lib/terminfo", "/usr/share/terminfo"])
    add("LOCPATH", ["/usr/lib/locale"])
    add("GCONV_PATH", ["/usr/lib/*-linux-gnu/gconv", "/usr/lib/gconv", "/usr/lib64/gconv"])
    add(
        "PERL5LIB",
        [
            "/etc/perl",
            "/usr/local/lib/*-linux-gnu/perl/5.*",
            "/usr/local/share/perl/5.*",
            "/usr/lib/*-linux-gnu/perl5/5.*",
            "/usr/share/perl5",
            "/usr/lib/*-linux-gnu/perl-base",
            "/usr/lib/*-linux-gnu/perl/5.*",
            "/usr/share/perl/5.*",
        ],
    )
    add("VIM", ["/usr/share/vim"])
    add("VIMRUNTIME", ["/usr/share/vim/vim[0-9]*"])
    add("NMAPDIR", ["/usr/share/nmap"])
    add("MAGIC", ["/usr/lib/file/magic.mgc", "/usr/share/misc/magic.mgc"])
    add("SSL_CERT_FILE", ["/etc/ssl/certs/ca-certificates.crt"])
    add("CURL_CA_BUNDLE", ["/etc/ssl/certs/ca-certificates.crt"])
    add("SSL_CERT_DIR", ["/etc/ssl/certs"])
    add("OPENSSL_CONF", ["/etc/ssl/openssl.cnf"])
    add("OPENSSL_MODULES", ["/usr/lib/*-linux-gnu/ossl-modules"])
    add("XTABLES_LIBDIR", ["/usr/lib/*-linux-gnu/xtables"])
    add("AWKPATH", ["/usr/share/awk"])
    add("AWKLIBPATH", ["/usr/lib/*-linux-gnu/gawk"])
    add("PERF_EXEC_PATH", ["/usr/libexec/perf-core", "/usr/lib/perf-core"])
    add("WGETRC", ["/.crashcart/wgetrc"])
    add("ZDOTDIR", ["/.crashcart/zsh"])
    add("INPUTRC", ["/etc/inputrc"])
    add("SCREENRC", ["/etc/screenrc"])
    return env


def render_env_sh(env: list[tuple[str, str]]) -> str:
    """The variable block of env.sh (the static part lives in data/env.sh)."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env]
    return "\n".join(lines) + "\n"


def wgetrc(prefix: str = PREFIX) -> str:
    # wget uses GnuTLS, which reads no SSL_CERT_FILE: tell it through its own rc file.
    return f"ca_certificate = {prefix}/etc/ssl/certs/ca-certificates.crt\n"


def zshenv(rootfs: str, prefix: str = PREFIX) -> str:
    """zsh ignores MODULE_PATH and FPATH from the environment: set them in ZDOTDIR/.zshenv."""
    find = _glob_finder(rootfs)
    modules = find("/usr/lib/*-linux-gnu/zsh/[0-9]*")
    # zsh's compiled-in fpath: every function directory, Completion/Unix and the like too
    patterns = ("/usr/share/zsh/vendor-*", "/usr/share/zsh/functions/*",
                "/usr/share/zsh/functions/*/*")  # fmt: skip
    functions = [
        d for p in patterns for d in find(p) if os.path.isdir(rootpath.host_path(rootfs, d))
    ]
    lines = []
    if modules:
        lines.append(f"module_path=({prefix}{modules[-1]})")
    if functions:
        lines.append("fpath=(" + " ".join(prefix + d for d in functions) + " $fpath)")
    # Sideload mode: /etc/zsh/* are the container's files. zshenv cannot be skipped; the
    # others (zprofile, zshrc, zlogin, zlogout) can.
    lines.append("[[ ${CRASHCART_MODE:-sideload} == session ]] || unsetopt GLOBAL_RCS")
    lines.append(f"[[ -o interactive ]] && source {prefix}/.crashcart/env.sh")
    return "\n".join(lines) + "\n"

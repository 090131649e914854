"""crashcart's own files in the image: rc file, shell entry point, helpers, environment.

Layout contract with the attach engine (keep it exactly):

    /.crashcartrc                 bash rc for both modes
    /shell                        `docker exec -it CTR /dev/crashcart/shell`
    /profile -> .                 keeps `/dev/crashcart/profile/bin/bash` (original crashcart)
    /.crashcart/env.sh            environment, sourced by the rc file and the helpers
    /.crashcart/session.env       KEY=VALUE lines the attach engine adds to every session
                                  command's environment (see hygiene.py)
    /.crashcart/{gdbinit,vimrc,nanorc}  settings the gdb, vim and nano wrappers load
    /.crashcart/tools.tsv         check-tools probes
    /.crashcart/manifest.json     see manifest.py
    /usr/local/bin/<helpers>
    /etc/{resolv.conf,hosts,hostname} -> ../target/etc/<same>
    /target /proc /dev /dev/pts /sys /tmp /run   empty mount points
"""

from __future__ import annotations

import os
from importlib import resources

from crashcart.image import elf, environ, hygiene, rootpath
from crashcart.image.recipe import Tool
from crashcart.image.relocate import PREFIX

HELPERS = (
    "check-tools",
    "debug-process",
    "trace-process",
    "trace-network",
    "trace-files",
    "list-files",
    "network-status",
    "network-capture",
    "container-shell",
    "debug-in-ns",
)
# In session mode the toolbox's /etc is what programs read: the target's name service
# files are what a debugger wants (its DNS servers, its /etc/hosts), so link to them.
TARGET_ETC = ("resolv.conf", "hosts", "hostname")
TOOLBOX_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _data(name: str) -> str:
    return resources.files("crashcart.image").joinpath(f"data/{name}").read_text()


def _write(rootfs: str, path: str, text: str, mode: int = 0o644) -> None:
    host = rootpath.host_path(rootfs, path)
    os.makedirs(os.path.dirname(host), exist_ok=True)
    if os.path.islink(host):
        os.unlink(host)
    with open(host, "w") as f:
        f.write(text)
    os.chmod(host, mode)


def _symlink(rootfs: str, path: str, target: str) -> None:
    host = rootpath.host_path(rootfs, path)
    os.makedirs(os.path.dirname(host), exist_ok=True)  # --from-rootfs: a root without /etc
    if os.path.lexists(host):
        if os.path.isdir(host) and not os.path.islink(host):
            raise FileExistsError(host)
        os.unlink(host)
    os.symlink(target, host)


def find_bash(rootfs: str) -> str | None:
    for candidate in ("/usr/bin/bash", "/bin/bash"):
        real = rootpath.resolve(rootfs, candidate)
        if real:
            return real
    return None


def toolbox_path(rootfs: str, prefix: str = PREFIX) -> str:
    """PATH entries under the prefix, skipping directories that are symlinks (merged /usr)."""
    dirs = []
    for d in TOOLBOX_BIN_DIRS:
        host = rootpath.host_path(rootfs, d)
        if os.path.isdir(host) and not os.path.islink(host):
            dirs.append(prefix + d)
    return ":".join(dirs)


def find_loader(rootfs: str) -> str | None:
    for candidate in ("/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"):
        real = rootpath.resolve(rootfs, candidate)
        if real:
            return real
    return None


def render_env(rootfs: str, prefix: str = PREFIX) -> str:
    variables = environ.environment(rootfs, prefix)
    loader = find_loader(rootfs)
    if loader:
        variables.append(("CRASHCART_LOADER", prefix + loader))
    text = _data("env.sh.in")
    text = text.replace("@TOOLBOX_PATH@", toolbox_path(rootfs, prefix))
    return text.replace("@VARIABLES@\n", environ.render_env_sh(variables))


# Programs that misbehave when they read the container's /etc in sideload mode get a wrapper
# in /usr/local/sbin, which comes before /usr/bin on the toolbox PATH.
WRAPPERS = {"tcpdump": ("/usr/bin/tcpdump", "/usr/sbin/tcpdump")}


def _install_wrappers(rootfs: str, prefix: str) -> None:
    for name, candidates in WRAPPERS.items():
        real = next((c for c in candidates if rootpath.exists(rootfs, c)), None)
        if real is not None:
            text = _data(f"wrappers/{name}").replace("@REAL@", prefix + real)
            _write(rootfs, f"/usr/local/sbin/{name}", text, 0o755)


REAL_BASH = "/usr/lib/crashcart/bash"


def _wrap_bash(rootfs: str, bash: str, prefix: str) -> str:
    """Move the real bash aside and put the environment-loading wrapper in its place (see
    data/wrappers/bash, whose #! names REAL_BASH: relocation prefixes it like every #! line);
    returns the real bash's path in the image."""
    src = rootpath.host_path(rootfs, bash)
    dst = rootpath.host_path(rootfs, REAL_BASH)
    if os.path.basename(bash) != "bash":  # e.g. busybox's multi-call binary: leave it be
        return bash
    if not elf.is_elf(src):  # already wrapped (a rebuilt toolbox), or not a binary
        return REAL_BASH if os.path.exists(dst) else bash
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)
    text = _data("wrappers/bash").replace("@REAL@", prefix + REAL_BASH).replace("@PREFIX@", prefix)
    _write(rootfs, bash, text, 0o755)
    return REAL_BASH


def install(rootfs: str, tools: list[Tool], prefix: str = PREFIX) -> list[str]:
    """Install crashcart's files into `rootfs`; returns problems (e.g. no bash)."""
    problems: list[str] = []
    bash = find_bash(rootfs)
    have_bash = bash is not None
    if bash is None:
        problems.append("no bash in the image: /shell, .crashcartrc and the helpers need it")
        bash = "/bin/bash"
    else:
        bash = _wrap_bash(rootfs, bash, prefix)
    if rootpath.exists(rootfs, "/usr/bin/wget"):
        _write(rootfs, "/.crashcart/wgetrc", environ.wgetrc(prefix))
    if rootpath.exists(rootfs, "/usr/bin/zsh") or rootpath.exists(rootfs, "/bin/zsh"):
        _write(rootfs, "/.crashcart/zsh/.zshenv", environ.zshenv(rootfs, prefix))
    _write(rootfs, "/.crashcart/env.sh", render_env(rootfs, prefix))
    session_env = hygiene.session_environment(rootfs)
    _write(rootfs, "/.crashcart/session.env", hygiene.render_session_env(session_env))
    for path, text in hygiene.config_files(rootfs, prefix).items():
        _write(rootfs, path, text)
    if have_bash:  # the wrappers are bash scripts
        hygiene.install_wrappers(rootfs, _write, bash, prefix)
    problems += hygiene.apply_patches(rootfs)
    _write(rootfs, "/.crashcart/helpers.sh", _data("helpers.sh"))
    _write(rootfs, "/.crashcart/tools.tsv", "".join(t.tsv() + "\n" for t in tools))
    rc = _data("crashcartrc").replace("@HELPERS@", " ".join(HELPERS))
    _write(rootfs, "/.crashcartrc", rc)
    _write(rootfs, "/shell", _data("shell").replace("@BASH@", prefix + bash), 0o755)
    for name in HELPERS:
        _write(rootfs, f"/usr/local/bin/{name}", _data(f"helpers/{name}"), 0o755)
    _install_wrappers(rootfs, prefix)
    _symlink(rootfs, "/profile", ".")
    for name in TARGET_ETC:
        _symlink(rootfs, f"/etc/{name}", f"../target/etc/{name}")
    return problems

"""Remove what a read-only debugging toolbox never uses.

Sizes measured on the default recipe (bookworm): vim's help, translations, tutor and
spell files 25 MB; perl's C headers 8 MB; apt and dpkg state 9 MB. Package state lives on in
the manifest (name, version, architecture of every package); nothing at run time needs
/var/lib/dpkg once relocation is done, which reads ELF headers, not package lists.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess

from crashcart.image import rootpath

# Globs relative to the rootfs; each match is removed (files and whole directories).
TRIM_GLOBS = (
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/lintian",
    "/usr/share/linda",
    "/usr/share/vim/vim*/doc",
    "/usr/share/vim/vim*/lang",
    "/usr/share/vim/vim*/tutor",
    "/usr/share/vim/vim*/spell",
    "/usr/lib/*-linux-gnu/perl/5.*/CORE/*.h",
    "/usr/include",
    "/var/lib/apt",
    "/var/lib/dpkg",
    "/var/cache/*",
    "/var/log/*",
    "/etc/systemd",
    "/etc/cron.d",
    "/etc/cron.daily",
    "/etc/init.d",
    "/etc/rc?.d",
    "/etc/logrotate.d",
    "/usr/lib/systemd",
    "/usr/lib/tmpfiles.d",
    "/etc/machine-id",
    # zsh ships every function directory twice: as files and as a .zwc digest (9 MB).
    # Without the digest zsh autoloads from the files.
    "/usr/share/zsh/functions/*.zwc",
    "/usr/share/zsh/functions/*/*.zwc",
    # pydoc's keyword/topic pages (help("if")): documentation
    "/usr/lib/python3*/pydoc_data",
)

# glibc iconv modules for EBCDIC and IBM mainframe code pages (4 MB of 8): a container
# debugger meets UTF-*, ISO-8859-*, Windows, DOS and Asian code pages, kept. iconv_open()
# of a removed one fails cleanly with EINVAL; the module cache is rebuilt.
GCONV_DIR = "/usr/lib/*-linux-gnu/gconv"
GCONV_DROP = ("EBCDIC*", "IBM*")
GCONV_KEEP = ("IBM437.so", "IBM850.so", "IBM852.so", "IBM855.so", "IBM857.so",
              "IBM860.so", "IBM861.so", "IBM862.so", "IBM863.so", "IBM864.so",
              "IBM865.so", "IBM866.so", "IBM869.so")  # fmt: skip

# Keep the copyright files in /usr/share/doc, C.UTF-8 and locale.alias; drop the rest.
KEEP_LOCALES = ("C.utf8", "C.UTF-8")

# Mount points the attach engine needs, all empty in the image.
MOUNT_POINTS = ("/target", "/proc", "/dev", "/dev/pts", "/sys", "/tmp", "/run")


def trim(rootfs: str) -> int:
    """Trim `rootfs` in place; returns the bytes removed (apparent size)."""
    removed = 0
    for pattern in TRIM_GLOBS:
        for path in glob.glob(rootpath.host_path(rootfs, pattern)):
            removed += _remove(path)
    removed += _trim_docs(rootfs)
    removed += _trim_locales(rootfs)
    removed += _trim_gconv(rootfs)
    return removed


def _trim_gconv(rootfs: str) -> int:
    removed = 0
    for gconv in glob.glob(rootpath.host_path(rootfs, GCONV_DIR)):
        for pattern in GCONV_DROP:
            for path in glob.glob(os.path.join(gconv, pattern)):
                if os.path.basename(path) not in GCONV_KEEP:
                    removed += _remove(path)
        if removed:
            _rebuild_gconv_cache(rootfs, gconv)
    return removed


def _rebuild_gconv_cache(rootfs: str, gconv: str) -> None:
    # The toolbox's own iconvconfig (same glibc), run before relocation while its binaries
    # still work under chroot. Without it, drop the cache: glibc then reads the configs.
    cache = os.path.join(gconv, "gconv-modules.cache")
    if rootpath.exists(rootfs, "/usr/sbin/iconvconfig"):
        proc = subprocess.run(["chroot", rootfs, "/usr/sbin/iconvconfig"], capture_output=True)
        if proc.returncode == 0:
            return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(cache)


def _trim_docs(rootfs: str) -> int:
    removed = 0
    doc = rootpath.host_path(rootfs, "/usr/share/doc")
    for dirpath, _dirs, files in os.walk(doc):
        for name in files:
            if name != "copyright":
                removed += _remove(os.path.join(dirpath, name))
    return removed


def _trim_locales(rootfs: str) -> int:
    removed = 0
    for base in ("/usr/lib/locale", "/usr/share/locale"):
        for path in glob.glob(rootpath.host_path(rootfs, base + "/*")):
            name = os.path.basename(path)
            if name not in KEEP_LOCALES and name != "locale.alias":
                removed += _remove(path)
    return removed


def empty_mount_points(rootfs: str) -> None:
    """Create the mount points, emptied (mmdebstrap leaves device nodes in /dev)."""
    for mp in MOUNT_POINTS:
        path = rootpath.host_path(rootfs, mp)
        if os.path.islink(path) or (os.path.exists(path) and not os.path.isdir(path)):
            os.unlink(path)
        if os.path.isdir(path) and mp != "/dev":
            _empty_dir(path)
        os.makedirs(path, exist_ok=True)
    dev = rootpath.host_path(rootfs, "/dev")
    for entry in os.scandir(dev):
        if entry.name != "pts":
            _remove(entry.path)
    _empty_dir(os.path.join(dev, "pts"))
    os.chmod(rootpath.host_path(rootfs, "/tmp"), 0o1777)


def _empty_dir(path: str) -> None:
    for entry in os.scandir(path):
        _remove(entry.path)


def _remove(path: str) -> int:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            size = _tree_size(path)
            shutil.rmtree(path)
            return size
        size = os.lstat(path).st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return 0


def _tree_size(path: str) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total

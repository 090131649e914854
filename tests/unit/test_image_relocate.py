"""Relocation planning: shebangs, symlinks, rpath/interpreter choices, rootfs paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crashcart.image import rootpath
from crashcart.image.elf import ElfInfo
from crashcart.image.relocate import (
    library_dirs,
    map_search_path,
    plan_elf,
    relocate,
    rewrite_shebang,
    symlink_target,
)

P = "/dev/crashcart"
TOOLBOX = {"/bin/sh", "/usr/bin/perl", "/usr/bin/python3", "/usr/bin/env", "/bin/bash"}


def find(name: str) -> str | None:
    if name.startswith("/"):
        return name if name in TOOLBOX else None
    return {"python3": "/usr/bin/python3", "perl": "/usr/bin/perl"}.get(name)


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"#!/bin/sh", b"#!/dev/crashcart/bin/sh"),
        (b"#! /bin/sh -e", b"#!/dev/crashcart/bin/sh -e"),
        (b"#!/usr/bin/perl -w", b"#!/dev/crashcart/usr/bin/perl -w"),
        (b"#!/usr/bin/env python3", b"#!/dev/crashcart/usr/bin/python3"),
        (b"#!/usr/bin/env nosuch", b"#!/dev/crashcart/usr/bin/env nosuch"),
        (b"#!/usr/bin/env -S python3 -u", b"#!/dev/crashcart/usr/bin/env -S python3 -u"),
        (b"#!/dev/crashcart/bin/sh", None),
        (b"#!sh", None),
        (b"not a script", None),
    ],
)
def test_rewrite_shebang(line: bytes, expected: bytes | None) -> None:
    assert rewrite_shebang(line, find, P) == expected


def test_rewrite_shebang_missing_interpreter() -> None:
    with pytest.raises(LookupError):
        rewrite_shebang(b"#!/usr/bin/ruby", find, P)


@pytest.mark.parametrize(
    "link, target, expected",
    [
        ("/usr/bin/vi", "/etc/alternatives/vi", "../../etc/alternatives/vi"),
        ("/etc/alternatives/vi", "/usr/bin/vim.basic", "../../usr/bin/vim.basic"),
        ("/lib64", "/usr/lib64", "usr/lib64"),
        ("/etc/mtab", "/proc/self/mounts", None),
        ("/dev/fd", "/proc/self/fd", None),
        ("/usr/bin/x", "../lib/x", None),
        ("/usr/bin/y", "/dev/crashcart/usr/bin/z", None),
    ],
)
def test_symlink_target(link: str, target: str, expected: str | None) -> None:
    assert symlink_target(link, target, P) == expected


def test_map_search_path() -> None:
    assert map_search_path("$ORIGIN:/usr/lib/x:/dev/crashcart/lib", P) == [
        "$ORIGIN", "/dev/crashcart/usr/lib/x", "/dev/crashcart/lib",
    ]  # fmt: skip
    assert map_search_path(None, P) == []


LOADER = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
INTERPS: dict[str, str | None] = {"/lib64/ld-linux-x86-64.so.2": LOADER, "/lib/ld-gone": None}
LIBS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib"]


def test_plan_executable_gets_interp_and_rpath() -> None:
    info = ElfInfo(elf_type=3, interp="/lib64/ld-linux-x86-64.so.2", needed=["libc.so.6"],
                   dynamic=True)  # fmt: skip
    job = plan_elf("/usr/bin/gdb", info, INTERPS, LIBS, P)
    assert job is not None
    assert job.interp == P + LOADER
    assert job.rpath == "/dev/crashcart/usr/lib/x86_64-linux-gnu:/dev/crashcart/usr/lib"


def test_plan_library_runpath_becomes_prefixed_rpath() -> None:
    info = ElfInfo(elf_type=3, needed=["libJIS.so"], runpath="$ORIGIN", dynamic=True)
    job = plan_elf("/usr/lib/gconv/EUC-JP.so", info, INTERPS, LIBS, P)
    assert job is not None and job.interp is None
    assert job.rpath is not None and job.rpath.startswith("$ORIGIN:/dev/crashcart/")


def test_plan_skips_plain_libraries_and_the_loader() -> None:
    plain = ElfInfo(elf_type=3, needed=["libc.so.6"], dynamic=True)
    assert plan_elf("/usr/lib/libz.so.1", plain, INTERPS, LIBS, P) is None
    loader = ElfInfo(elf_type=3, interp="/lib64/ld-linux-x86-64.so.2", dynamic=True)
    assert plan_elf(LOADER, loader, INTERPS, LIBS, P) is None


def test_plan_is_idempotent() -> None:
    info = ElfInfo(
        elf_type=3, interp=P + LOADER, dynamic=True,
        rpath="/dev/crashcart/usr/lib/x86_64-linux-gnu:/dev/crashcart/usr/lib",
    )  # fmt: skip
    interps: dict[str, str | None] = {P + LOADER: None}
    assert plan_elf("/usr/bin/gdb", info, interps, LIBS, P) is None


def _tree(root: Path) -> None:
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/libc.so.6").write_bytes(b"")
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")  # fmt: skip
    (root / "usr/local/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "lib64").symlink_to("/usr/lib64")  # absolute: must resolve inside root
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("include /etc/ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/a.conf").write_text("/usr/local/lib\n/lib/x86_64-linux-gnu\n")


def test_rootpath_resolve_stays_inside(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_bytes(b"")
    assert rootpath.resolve(str(tmp_path), "/lib64/ld-linux-x86-64.so.2") == LOADER
    (tmp_path / "escape").symlink_to("/etc/passwd")
    assert rootpath.resolve(str(tmp_path), "/escape") is None  # not the host's /etc/passwd
    (tmp_path / "loop").symlink_to("loop")
    assert rootpath.resolve(str(tmp_path), "/loop") is None


def test_library_dirs_reads_ld_so_conf(tmp_path: Path) -> None:
    _tree(tmp_path)
    # /usr/local/lib holds no library, /usr/lib64 only the loader: both left out
    assert library_dirs(str(tmp_path)) == ["/usr/lib/x86_64-linux-gnu"]


def test_relocate_rewrites_links_and_scripts(tmp_path: Path) -> None:
    _tree(tmp_path)
    (tmp_path / "usr/bin").mkdir()
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "usr/bin/dash").write_bytes(b"\x7fELF-not-really")
    (tmp_path / "usr/bin/sh").symlink_to("/usr/bin/dash")
    script = tmp_path / "usr/bin/hello"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    os.link(script, tmp_path / "usr/bin/hello2")
    report = relocate(str(tmp_path), P)
    assert os.readlink(tmp_path / "usr/bin/sh") == "dash"
    assert os.readlink(tmp_path / "lib64") == "usr/lib64"
    assert script.read_text() == "#!/dev/crashcart/bin/sh\necho hi\n"
    assert (tmp_path / "usr/bin/hello2").read_text() == script.read_text()
    assert script.stat().st_mode & 0o777 == 0o755
    assert report.symlinks_rewritten == 2 and report.shebangs_rewritten == 1
    assert report.problems == []

"""The ELF reader against real binaries on this machine and damaged input."""

from __future__ import annotations

from pathlib import Path

import pytest

from crashcart.image.elf import parse_elf, read_elf


def test_dynamic_program() -> None:
    info = read_elf("/usr/bin/ls")
    assert info is not None and info.dynamic and info.is_executable
    assert info.interp == "/lib64/ld-linux-x86-64.so.2"
    assert "libc.so.6" in info.needed
    assert info.rpath is None and info.runpath is None


def test_shared_library_has_soname() -> None:
    libc = next(Path("/usr/lib").glob("*-linux-gnu/libc.so.6"))
    info = read_elf(str(libc))
    assert info is not None and info.soname == "libc.so.6"


def test_static_program() -> None:
    busybox = Path("/bin/busybox")
    info = read_elf(str(busybox)) if busybox.exists() else None
    if info is None or info.interp is not None:
        pytest.skip("no static busybox (busybox-static) on this machine")
    assert not info.dynamic and not info.is_executable


def test_not_elf_or_damaged(tmp_path: Path) -> None:
    (tmp_path / "s").write_text("#!/bin/sh\n")
    assert read_elf(str(tmp_path / "s")) is None
    assert parse_elf(b"\x7fELF\x02\x01" + b"\0" * 10) is None
    header = Path("/usr/bin/ls").read_bytes()[:200]
    # the program headers point past the end: parsed partially or rejected, never raised
    info = parse_elf(header)
    assert info is None or info.elf_type == 3

"""crashcart/image/hygiene.py on small trees: session.env names only tools that are there and
parses the way the attach engine reads it; the patches apply once, exactly, and say so
when the text is not the expected one; wrappers take the real program's place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from crashcart.attach import plan
from crashcart.image import hygiene, layout


def _tree(root: Path, *paths: str) -> None:
    for p in paths:
        (root / p.lstrip("/")).mkdir(parents=True, exist_ok=True)


def test_session_env_names_only_what_the_image_has(tmp_path: Path) -> None:
    _tree(tmp_path, "/usr/share/awk", "/usr/lib/x86_64-linux-gnu/gawk", "/usr/bin")
    (tmp_path / "usr/bin/python3.11").write_text("")
    env = dict(hygiene.session_environment(str(tmp_path)))
    assert env["PYTHONSAFEPATH"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["AWKPATH"] == "/usr/share/awk"
    assert env["AWKLIBPATH"] == "/usr/lib/x86_64-linux-gnu/gawk"
    assert "NMAPDIR" not in env and "GDBHISTFILE" not in env


def test_session_env_reads_back_as_the_attach_engine_reads_it(tmp_path: Path) -> None:
    env = [("PYTHONSAFEPATH", "1"), ("AWKPATH", "/usr/share/awk")]
    (tmp_path / ".crashcart").mkdir()
    (tmp_path / ".crashcart/session.env").write_text(hygiene.render_session_env(env))
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        assert plan.toolbox_environment(fd) == dict(env)
    finally:
        os.close(fd)


PDB = """        if readrc:
            try:
                with open(".pdbrc", encoding='utf-8') as rcFile:
                    self.rcLines.extend(rcFile)
            except OSError:
                pass
"""


def test_patch_applies_once_and_drops_the_stale_pyc(tmp_path: Path) -> None:
    lib = tmp_path / "usr/lib/python3.11"
    (lib / "__pycache__").mkdir(parents=True)
    (lib / "pdb.py").write_text(PDB)
    (lib / "__pycache__/pdb.cpython-311.pyc").write_bytes(b"old")
    (lib / "__pycache__/pdbx.cpython-311.pyc").write_bytes(b"other")
    assert hygiene.apply_patches(str(tmp_path)) == []
    text = (lib / "pdb.py").read_text()
    assert "if sys.flags.safe_path:" in text and text.count('open(".pdbrc"') == 1
    assert sorted(os.listdir(lib / "__pycache__")) == ["pdbx.cpython-311.pyc"]
    assert hygiene.apply_patches(str(tmp_path)) == []  # a rebuilt toolbox: unchanged
    assert (lib / "pdb.py").read_text() == text


def test_unexpected_text_is_reported_not_patched(tmp_path: Path) -> None:
    perl = tmp_path / "usr/share/perl/5.36"
    perl.mkdir(parents=True)
    (perl / "perl5db.pl").write_text("# a perl5db.pl of another version\n")
    problems = hygiene.apply_patches(str(tmp_path))
    assert len(problems) == 1 and "perl5db.pl: not hardened" in problems[0], problems


def _fake_elf(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF" + b"\0" * 60)
    path.chmod(0o755)


@pytest.mark.parametrize("name", ["vim.basic", "gdb"])
def test_wrappers(tmp_path: Path, name: str) -> None:
    _fake_elf(tmp_path / f"usr/bin/{name}")
    hygiene.install_wrappers(str(tmp_path), layout._write, "/usr/lib/crashcart/bash")
    if name == "gdb":  # in front on PATH: gdb finds its data directory from its own path
        wrapper, real = tmp_path / "usr/local/bin/gdb", "/dev/crashcart/usr/bin/gdb"
    else:  # in the program's place: vi, view, ex ... all reach it
        wrapper, real = tmp_path / "usr/bin/vim.basic", "/dev/crashcart/usr/lib/crashcart/vim.basic"
        assert (tmp_path / "usr/lib/crashcart/vim.basic").read_bytes().startswith(b"\x7fELF")
    text = wrapper.read_text()
    assert text.startswith("#!/usr/lib/crashcart/bash -p\n") and f"real={real}\n" in text
    assert "@REAL@" not in text and "@PREFIX@" not in text and os.access(wrapper, os.X_OK)
    # a rebuilt toolbox: the wrapper is no ELF program, nothing moves again
    hygiene.install_wrappers(str(tmp_path), layout._write, "/usr/lib/crashcart/bash")
    assert wrapper.read_text() == text

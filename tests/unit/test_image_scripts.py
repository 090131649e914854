"""The shell scripts shipped in the image: bash syntax always, shellcheck where installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from crashcart.image.layout import HELPERS

DATA = Path(__file__).resolve().parents[2] / "crashcart/image/data"
SCRIPTS = sorted([*DATA.glob("helpers/*"), *DATA.glob("wrappers/*"), DATA / "shell",
                  DATA / "helpers.sh", DATA / "crashcartrc"])  # fmt: skip


def test_every_helper_is_shipped() -> None:
    assert {p.name for p in DATA.glob("helpers/*")} == set(HELPERS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_helpers_have_help_and_pid_rules() -> None:
    for name in HELPERS:
        text = (DATA / "helpers" / name).read_text()
        assert text.startswith("#!/bin/bash\n"), name  # relocation rewrites it
        assert "cc_help" in text and "usage()" in text, name


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    files = [str(p) for p in SCRIPTS if p.name != "crashcartrc"]
    proc = subprocess.run(["shellcheck", "-S", "warning", "-s", "bash", *files],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout

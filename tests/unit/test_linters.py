"""The linters, run as ordinary tests: ruff over the whole repo, mypy as pyproject configures
it (plus the test bed, which pyproject's file list does not name), shellcheck over the
scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.testbed.require import missing

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = ["scripts/runtimes", "scripts/test", ".ci/run"]


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}"


def test_ruff_check() -> None:
    _run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")


def test_ruff_format() -> None:
    _run(sys.executable, "-m", "ruff", "format", "--check", "--no-cache", ".")


def test_mypy() -> None:
    _run(sys.executable, "-m", "mypy")


def test_mypy_testbed() -> None:
    _run(sys.executable, "-m", "mypy", "tests/testbed", "tests/conftest.py")


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        missing("shellcheck not installed: run scripts/runtimes install")
    _run("shellcheck", *[s for s in SCRIPTS if (REPO / s).exists()])

"""crashcart(1) and the installed completion files: generated from the parser and --help,
checked against what is committed, rendered by the real man, found by the real shells
where a wheel install puts them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crashcart import cli, completion, manpage
from tests import ccrun
from tests.testbed.require import missing


def test_committed_files_are_what_the_generator_writes() -> None:
    for rel, content in completion.generated().items():
        path = ccrun.REPO / rel
        assert path.exists(), f"{rel} missing: run python -m crashcart.completion"
        assert path.read_text() == content, f"{rel} is stale: run python -m crashcart.completion"


def test_every_option_of_the_parser_is_in_the_help() -> None:
    doc = manpage.help_text()
    for name in (*cli.VALUED, *cli.FLAGS, *cli.MODES):
        if name == "--json":
            assert "[--json]" in cli.USAGE  # in the synopsis lines: ps, doctor
            continue
        opt = doc.option(name)
        assert opt is not None, f"{name} is parsed but not in --help"
        assert opt.summary(name), name


def _words(text: str) -> list[str]:
    return text.replace("\u2010", "-").replace("\u2212", "-").split()


def _render(page: Path) -> str:
    if shutil.which("man") is None:
        missing("man is not installed (scripts/runtimes install provides man-db)")
    proc = subprocess.run(
        ["man", "-l", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(
            os.environ,
            LANG="C",
            LC_ALL="C",
            MANWIDTH="90",
            MAN_KEEP_FORMATTING="",
            MANPAGER="cat",
            PAGER="cat",
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert not proc.stderr.strip(), proc.stderr  # no groff warning
    return subprocess.run(["col", "-b"], input=proc.stdout, capture_output=True, text=True).stdout


def _in_order(needle: list[str], hay: list[str]) -> bool:
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))


def test_man_page_says_what_help_says() -> None:
    """Every line of --help's synopsis, every paragraph, each option with every word of its
    description in order, and the exit status, in the page that man renders."""
    text = _render(ccrun.REPO / completion.MAN_PAGE)
    page = _words(text)
    help_out = subprocess.run(
        ccrun.argv("--help"), capture_output=True, text=True, env=ccrun.env(), check=True
    ).stdout
    doc = manpage.Help(help_out.rstrip("\n"))
    assert doc.options and doc.paragraphs and doc.exit_status
    for line in doc.synopsis:
        assert _in_order(_words(line), page), line
    for paragraph in doc.paragraphs:
        assert _in_order(_words(paragraph), page), paragraph
    for opt in doc.options:
        assert _in_order(_words(opt.spec), page), opt.spec
        assert _in_order(_words(" ".join(opt.lines)), page), opt.lines
    assert _in_order(_words(doc.exit_status), page)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "FILES"):
        assert f"\n{section}\n" in text, section


def test_crashcart_man_prints_the_page() -> None:
    proc = subprocess.run(ccrun.argv("man"), capture_output=True, text=True, env=ccrun.env())
    assert proc.returncode == 0 and proc.stdout == manpage.roff()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This worktree built as a wheel and installed under a prefix of its own."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    build = subprocess.run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "dist"),
            str(ccrun.REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "invalid command 'bdist_wheel'" in build.stderr:
        missing("the `wheel` package is not installed (pip install -e .[test])")
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("*.whl")
    prefix = tmp / "prefix"
    subprocess.run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            "--prefix",
            str(prefix),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    return prefix


def test_install_puts_the_files_where_shells_and_man_look(installed: Path) -> None:
    share = installed / "share"
    for rel, content in completion.generated().items():
        assert (installed / rel).read_text() == content
    # bash-completion's own loader, as on TAB for a command it has not seen yet.
    code = (
        ". /usr/share/bash-completion/bash_completion; __load_completion crashcart && "
        "complete -p crashcart"
    )
    if not Path("/usr/share/bash-completion/bash_completion").exists():
        missing("bash-completion is not installed (scripts/runtimes install provides it)")
    bash = subprocess.run(
        ["bash", "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, XDG_DATA_DIRS=str(share)),
    )
    assert bash.stdout.strip() == "complete -o default -F _crashcart crashcart", bash.stderr
    # fish: vendor_completions.d under each XDG_DATA_DIRS entry, for a command on PATH.
    path = f"{installed / 'bin'}:{os.environ['PATH']}"
    fish = subprocess.run(
        ["fish", "-c", "complete -C 'crashcart --cap'"],
        capture_output=True,
        text=True,
        env=dict(os.environ, XDG_DATA_DIRS=str(share), PATH=path),
    )
    assert fish.stdout.startswith("--caps\t"), (fish.stdout, fish.stderr)
    # zsh: site-functions is on the default fpath for the /usr/local prefix.
    zsh = subprocess.run(
        [
            "zsh",
            "-fc",
            f"fpath=({share}/zsh/site-functions $fpath); "
            "autoload -Uz +X _crashcart && whence -v _crashcart",
        ],
        capture_output=True,
        text=True,
    )
    assert f"shell function from {share}/zsh/site-functions/_crashcart" in zsh.stdout, zsh.stderr
    # man finds crashcart(1) in the prefix's man directory.
    man = subprocess.run(
        ["man", "-M", str(share / "man"), "-w", "crashcart"], capture_output=True, text=True
    )
    assert man.stdout.strip() == str(share / "man/man1/crashcart.1"), man.stderr

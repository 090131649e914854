"""Shell completion in the real shells: bash runs the generated function on a command line,
fish answers `complete -C`, zsh is driven through a pty like a user pressing TAB. (Target
names from running containers: tests/runtime/test_opsx.py.)"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from crashcart import completion
from tests import ccrun
from tests.testbed.require import missing


def _need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        missing(f"{shell} is not installed (scripts/runtimes install provides it)")
    return str(path)


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three scripts, and a `crashcart` on PATH that runs this worktree's."""
    root = tmp_path_factory.mktemp("completion")
    for shell in completion.SHELLS:
        (root / shell).write_text(completion.script(shell))
    wrapper = root / "bin" / "crashcart"
    wrapper.parent.mkdir()
    wrapper.write_text(
        f'#!/bin/sh\nPYTHONPATH={ccrun.REPO} exec {os.sys.executable} -m crashcart "$@"\n'
    )
    wrapper.chmod(0o755)
    return root


def _env(scripts: Path) -> dict[str, str]:
    """The real crashcart on PATH, with every runtime's state pointed at nothing: no
    container of this host's shows up among the candidates."""
    none = str(scripts / "no-runtime")
    return dict(
        os.environ,
        PATH=f"{scripts / 'bin'}:{os.environ['PATH']}",
        DOCKER_HOST=f"unix://{none}/docker.sock",
        CRASHCART_PODMAN_GRAPHROOT=none,
        CRASHCART_CONTAINERD_TASKS=none,
        CRASHCART_RUNC_ROOT=none,
    )


def bash_complete(scripts: Path, line: str) -> list[str]:
    """COMPREPLY of the generated function for `line` (cursor at its end), as bash would run
    it on TAB (COMP_LINE, COMP_POINT; the default COMP_WORDBREAKS has ':' and '=')."""
    code = (
        f'source {scripts / "bash"}; COMP_LINE="$1"; COMP_POINT=${{#1}}; _crashcart; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(
        [_need("bash"), "-c", code, "bash", line],
        capture_output=True,
        text=True,
        env=_env(scripts),
        timeout=30,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [w for w in proc.stdout.splitlines() if w]


def fish_complete(scripts: Path, line: str) -> list[str]:
    proc = subprocess.run(
        [
            _need("fish"),
            "--no-config",
            "-c",
            f"source {scripts / 'fish'}; complete -C $argv[1]",
            line,
        ],
        capture_output=True,
        text=True,
        env=_env(scripts),
        timeout=30,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [w.split("\t")[0] for w in proc.stdout.splitlines()]


CASES = [
    ("crashcart --ca", ["--caps"]),
    ("crashcart --caps ", ["default", "privileged", "restricted"]),
    ("crashcart --runtime p", ["pid", "podman"]),
    ("crashcart --record-i", ["--record-input"]),
    ("crashcart -q --privileged do", ["docker://", "doctor"]),
    ("crashcart completion ", ["bash", "fish", "zsh"]),
    ("crashcart image ", ["build", "info", "node"]),
    ("crashcart image build --format ", ["erofs", "ext4", "squashfs"]),
    ("crashcart image build --no-c", ["--no-cache"]),
    ("crashcart cont", ["containerd://"]),
]


@pytest.mark.parametrize("line,expected", CASES)
def test_bash(scripts: Path, line: str, expected: list[str]) -> None:
    assert sorted(bash_complete(scripts, line)) == expected


@pytest.mark.parametrize("line,expected", CASES)
def test_fish(scripts: Path, line: str, expected: list[str]) -> None:
    assert sorted(fish_complete(scripts, line)) == expected


def test_bash_word_breaks_and_files(scripts: Path, tmp_path: Path) -> None:
    # readline's word after '=' (or ':') is what replaces: values without the prefix.
    assert bash_complete(scripts, "crashcart --caps=re") == ["restricted"]
    (tmp_path / "toolbox.img").write_text("")
    assert bash_complete(scripts, f"crashcart --image {tmp_path}/tool") == [
        f"{tmp_path}/toolbox.img"
    ]
    assert bash_complete(scripts, f"crashcart --record {tmp_path}/t") == [f"{tmp_path}/toolbox.img"]
    # After TARGET comes the command: nothing of crashcart's (bash falls back to files).
    assert bash_complete(scripts, "crashcart web --ca") == []
    assert bash_complete(scripts, "crashcart --image x -- -") == []


def test_every_option_completes(scripts: Path) -> None:
    from crashcart import cli

    names = {*cli.VALUED, *cli.FLAGS, *cli.MODES}
    assert names <= set(bash_complete(scripts, "crashcart -"))
    assert names <= set(fish_complete(scripts, "crashcart -"))


class Zsh:
    """An interactive zsh in a pty with compinit and the generated _crashcart on fpath."""

    def __init__(self, scripts: Path, home: Path) -> None:
        fn = home / "fn"
        fn.mkdir(exist_ok=True)
        shutil.copy(scripts / "zsh", fn / "_crashcart")
        (home / ".zshrc").write_text(
            f"fpath=({fn} $fpath)\nautoload -Uz compinit && compinit -u -d {home}/.zcompdump\n"
            "PS1='ZP> '\nunsetopt beep\n"
        )
        self.env = _env(scripts) | {"ZDOTDIR": str(home), "TERM": "dumb"}

    def tab(self, typed: str, wait_for: str) -> str:
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(_need("zsh"), ["zsh", "-i"], self.env)
        out = ""
        try:
            self._read(fd, "ZP> ", 15)
            os.write(fd, typed.encode())
            return self._read(fd, wait_for, 15)
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(fd)
        return out

    @staticmethod
    def _read(fd: int, needle: str, timeout: float) -> str:
        out = b""
        end = time.monotonic() + timeout
        while needle.encode() not in out:
            if time.monotonic() > end:
                raise TimeoutError(f"no {needle!r} in {out.decode(errors='replace')!r}")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                out += os.read(fd, 65536)
        return out.decode(errors="replace")


def test_zsh(scripts: Path, tmp_path: Path) -> None:
    _need("zsh")
    z = Zsh(scripts, tmp_path)
    assert "crashcart --caps " in z.tab("crashcart --ca\t", "--caps ")
    listing = z.tab("crashcart --caps \t", "restricted")
    assert "default" in listing and "privileged" in listing
    assert "crashcart image build --format squashfs" in z.tab(
        "crashcart image build --format sq\t", "squashfs"
    )
    assert "only look in docker" in z.tab("crashcart --r\t", "only look")  # with descriptions


def test_fish_option_equals_value(scripts: Path) -> None:
    assert fish_complete(scripts, "crashcart --caps=r") == ["--caps=restricted"]
    assert fish_complete(scripts, "crashcart --runtime=do") == ["--runtime=docker"]


def test_completion_verb(tmp_path: Path) -> None:
    def run(*args: str, shell: str = "/bin/bash") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ccrun.argv("completion", *args),
            capture_output=True,
            text=True,
            env=dict(ccrun.env(), SHELL=shell),
            timeout=30,
        )

    assert run().stdout == completion.script("bash")  # $SHELL's when none is named
    assert run(shell="/usr/bin/zsh").stdout.startswith("#compdef crashcart")
    assert run("fish").stdout == completion.script("fish")
    for args, shell in ((("tcsh",), "/bin/bash"), ((), "/bin/tcsh"), (("bash", "x"), "")):
        bad = run(*args, shell=shell)
        assert bad.returncode == 125 and bad.stdout == "", bad
        assert bad.stderr.startswith("crashcart: ") and "Traceback" not in bad.stderr

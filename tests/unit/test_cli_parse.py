"""The command line grammar: options before TARGET, everything after it is the command."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashcart.cli import SUBCOMMANDS, parse
from crashcart.errors import UsageError


def test_target_and_command() -> None:
    a = parse(["web", "ps", "-ef"])
    assert (a.action, a.target, a.command) == ("session", "web", ["ps", "-ef"])


def test_double_dash_before_or_after_target() -> None:
    assert parse(["web", "--", "ls", "-l"]).command == ["ls", "-l"]
    assert parse(["--", "web", "ls"]).target == "web"
    # options after TARGET belong to the command
    assert parse(["web", "--image", "x"]).command == ["--image", "x"]


def test_options() -> None:
    a = parse(["--image=/i.img", "--runtime", "podman", "-w", "/target", "--env", "A=1",
               "--env=B=x=y", "--user", "1000:100", "-T", "-q", "--no-cgroup", "web"])  # fmt: skip
    assert a.image == "/i.img" and a.runtime == "podman" and a.workdir == "/target"
    assert a.env == {"A": "1", "B": "x=y"} and a.user == "1000:100"
    assert a.tty is False and a.quiet and not a.join_cgroup and a.command == []


def test_caps_profiles() -> None:
    assert parse(["--privileged", "x"]).caps == "privileged"
    assert parse(["--caps", "restricted", "x"]).caps == "restricted"
    with pytest.raises(UsageError, match="unknown capability profile"):
        parse(["--caps", "all", "x"])


def test_sideload_modes_keep_original_short_flags() -> None:
    assert parse(["-m", "web"]).action == "mount"
    assert parse(["-u", "web"]).action == "unmount"
    e = parse(["-e", "web", "--", "sh"])
    assert (e.action, e.command) == ("exec", ["sh"])
    with pytest.raises(UsageError):
        parse(["-m", "-u", "web"])
    with pytest.raises(UsageError, match="takes no command"):
        parse(["-m", "web", "ls"])


def test_reserved_words_and_their_escape() -> None:
    for word in SUBCOMMANDS:
        assert parse([word]).action == word
    assert parse(["docker://ps"]).target == "docker://ps"
    assert parse(["ps", "--json"]).json
    s = parse(["status", "web"])
    assert (s.action, s.target) == ("status", "web")
    assert parse(["image", "build", "--recipe", "minimal"]).rest == ["build", "--recipe", "minimal"]


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "no TARGET"),
        (["--image"], "needs a value"),
        (["--env", "NOVALUE", "x"], "KEY=VALUE"),
        (["--bogus", "x"], "unknown option"),
        (["--tty=1", "x"], "unknown option"),
        (["ps", "extra"], "unexpected argument"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_help_and_version() -> None:
    assert parse(["-h", "web"]).action == "help"
    assert parse(["--version"]).action == "version"


@given(st.lists(st.text(min_size=0, max_size=12), max_size=8))
def test_parse_never_crashes(argv: list[str]) -> None:
    """Any argv either parses or raises UsageError: never another exception."""
    try:
        a = parse(argv)
    except UsageError:
        return
    assert a.action in ("session", "mount", "unmount", "exec", "help", "version", *SUBCOMMANDS)
    if a.action in ("session", "mount", "unmount", "exec"):
        assert a.target


@given(st.lists(st.text(alphabet="abc-=_ /", max_size=6), max_size=5), st.text(min_size=1))
def test_command_after_target_is_passed_verbatim(command: list[str], target: str) -> None:
    if target.startswith("-") or target in SUBCOMMANDS:
        return
    a = parse([target, "--", *command])
    assert a.target == target and a.command == command

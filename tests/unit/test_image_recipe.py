"""Recipe parsing: settings, packages, check-tools probes, includes."""

from __future__ import annotations

from pathlib import Path

import pytest

from crashcart.errors import ImageError
from crashcart.image.recipe import Tool, load_recipe, parse_recipe, parse_tool


def test_packages_settings_and_tools() -> None:
    r = parse_recipe(
        """
        # a comment
        suite = trixie
        mirror = http://mirror.example/debian   # trailing comment
        gdb strace
        bind9-dnsutils libc6:amd64 gdb=13.1-3
        tool: gdb --version
        tool: ca = openssl x509 -in "/etc/a b.crt"
        tool: htop
        """
    )
    assert r.settings == {"suite": "trixie", "mirror": "http://mirror.example/debian"}
    assert r.packages == ["gdb", "strace", "bind9-dnsutils", "libc6:amd64", "gdb=13.1-3"]
    assert r.tools == [
        Tool("gdb", ["gdb", "--version"]),
        Tool("ca", ["openssl", "x509", "-in", "/etc/a b.crt"]),
        Tool("htop", []),
    ]


def test_tool_keeps_hash_inside_probe() -> None:
    assert parse_tool('nc = sh -c "nc -h 2>&1 | grep -q #x"').argv[-1] == "nc -h 2>&1 | grep -q #x"


def test_tool_tsv() -> None:
    assert Tool("ca", ["openssl", "version"]).tsv() == "ca\topenssl\tversion"


@pytest.mark.parametrize(
    "text, message",
    [
        ("Gdb", "not a Debian package name"),
        ("colour = blue", "unknown setting 'colour'"),
        ("tool:", "needs a command"),
        ('tool: x "unterminated', "tool:"),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ImageError) as e:
        parse_recipe("gdb\n" + text, "my.recipe")
    assert e.value.message.startswith("my.recipe:2:")
    assert message in e.value.message


def test_builtin_recipes_parse() -> None:
    default = load_recipe("default")
    assert len(default.packages) >= 40 and len(default.tools) >= 40
    assert "bpftrace" not in default.packages
    minimal = load_recipe("minimal")
    assert set(minimal.packages) == {
        "bash", "busybox", "strace", "gdb-minimal", "iproute2", "procps", "lsof", "tcpdump",
        "mount",
    }  # fmt: skip
    assert "mount" in default.packages and "git" not in default.packages
    full = load_recipe("full")
    assert {"bpftrace", "tshark"} <= set(full.packages)
    assert set(default.packages) < set(full.packages)


def test_include_file_relative_and_override(tmp_path: Path) -> None:
    (tmp_path / "base.recipe").write_text("suite = bookworm\ncurl\ntool: curl --version\n")
    (tmp_path / "top.recipe").write_text(
        "include = base.recipe\nsuite = trixie\njq curl\ntool: curl -V\n"
    )
    r = load_recipe(str(tmp_path / "top.recipe"))
    assert r.packages == ["curl", "jq"]
    assert r.settings == {"suite": "trixie"}
    assert r.tools == [Tool("curl", ["curl", "-V"])]


def test_missing_file_hints_builtins(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as e:
        load_recipe(str(tmp_path / "nope"))
    assert e.value.hint is not None and "default" in e.value.hint

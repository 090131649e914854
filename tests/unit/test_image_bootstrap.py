"""mmdebstrap command line, failure explanations, dpkg/apk databases, the .deb cache."""

from __future__ import annotations

import os
from pathlib import Path

from crashcart.image import bootstrap


def test_command_has_cache_hooks_and_filters() -> None:
    spec = bootstrap.BootstrapSpec(["gdb", "strace"], "/w/rootfs", cache_dir="/c")
    cmd = bootstrap.command(spec)
    assert cmd[0] == "mmdebstrap"
    assert cmd[-3:] == ["bookworm", "/w/rootfs", "http://deb.debian.org/debian"]
    assert "--variant=essential" in cmd and "--mode=unshare" in cmd
    assert "--include=gdb,strace" in cmd
    assert "--setup-hook=sync-in /c /var/cache/apt/archives/" in cmd
    assert "--customize-hook=sync-out /var/cache/apt/archives /c" in cmd
    assert "--dpkgopt=path-exclude=/usr/share/doc/*" in cmd
    no_cache = bootstrap.command(bootstrap.BootstrapSpec([], "/t", cache_dir=None))
    assert not any("sync-in" in a for a in no_cache)


def test_explain_missing_package() -> None:
    err = bootstrap.explain_failure(
        ["E: Unable to locate package gdbx", "E: apt-get install failed"], "/log"
    )
    assert err.message == "package not found in the suite: gdbx"
    assert err.hint is not None and "apt-cache policy" in err.hint


def test_explain_no_space_and_network() -> None:
    assert "no space" in bootstrap.explain_failure(
        ["dpkg: error: No space left on device"], "/l").message  # fmt: skip
    net = bootstrap.explain_failure(
        ["Err:1 http://x bookworm InRelease", "  Could not resolve 'x'"], "/l")  # fmt: skip
    assert net.message.startswith("downloading packages failed")


def test_parse_dpkg_status() -> None:
    text = (
        "Package: b\nStatus: install ok installed\nVersion: 2\nArchitecture: amd64\n"
        "Description: x\n more\n\n"
        "Package: a\nStatus: deinstall ok config-files\nVersion: 1\n\n"
        "Package: c\nStatus: install ok installed\nVersion: 1:3\nArchitecture: all\n"
    )
    assert bootstrap.parse_dpkg_status(text) == [
        {"name": "b", "version": "2", "arch": "amd64"},
        {"name": "c", "version": "1:3", "arch": "all"},
    ]


def test_apk_packages(tmp_path: Path) -> None:
    db = tmp_path / "lib/apk/db"
    db.mkdir(parents=True)
    (db / "installed").write_text("C:x\nP:musl\nV:1.2.4-r2\nA:x86_64\n\nP:busybox\nV:1.36\n")
    assert [p["name"] for p in bootstrap.installed_packages(str(tmp_path))] == [
        "busybox", "musl",
    ]  # fmt: skip


def test_prune_cache_keeps_newest(tmp_path: Path) -> None:
    for name, mtime in [("gdb_1_amd64.deb", 1), ("gdb_2_amd64.deb", 2), ("jq_1_amd64.deb", 1)]:
        (tmp_path / name).write_bytes(b"")
        os.utime(tmp_path / name, (mtime, mtime))
    (tmp_path / "lock").write_bytes(b"")
    bootstrap.prune_cache(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["gdb_2_amd64.deb", "jq_1_amd64.deb", "lock"]

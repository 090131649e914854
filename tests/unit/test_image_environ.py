"""The generated environment only names paths that exist in the rootfs."""

from __future__ import annotations

from pathlib import Path

from crashcart.image import environ, layout


def test_environment_for_a_small_tree(tmp_path: Path) -> None:
    for d in ("usr/share/terminfo", "usr/lib/locale/C.utf8", "usr/share/vim/vim90",
              "usr/lib/x86_64-linux-gnu/gconv", "usr/bin", "usr/sbin"):  # fmt: skip
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    env = dict(environ.environment(str(tmp_path), "/dev/crashcart"))
    assert env["TERMINFO_DIRS"] == "/dev/crashcart/usr/share/terminfo"
    assert env["LOCPATH"] == "/dev/crashcart/usr/lib/locale"
    assert env["VIMRUNTIME"] == "/dev/crashcart/usr/share/vim/vim90"
    assert env["GCONV_PATH"] == "/dev/crashcart/usr/lib/x86_64-linux-gnu/gconv"
    assert "PERL5LIB" not in env and "NMAPDIR" not in env
    # merged /usr: /bin is a symlink, so PATH does not list it twice
    assert layout.toolbox_path(str(tmp_path)) == "/dev/crashcart/usr/sbin:/dev/crashcart/usr/bin"


def test_render_quotes_values() -> None:
    text = environ.render_env_sh([("A", "/x y"), ("B", "/z")])
    assert text == "export A='/x y'\nexport B=/z\n"

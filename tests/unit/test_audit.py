"""The audit log's writer on real files: configuration, JSON lines, rotation under
concurrent writers, the toolbox digest cache. (Sessions: tests/runtime/test_opsx.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashcart import audit, jsonout
from crashcart.errors import UsageError

JSONABLE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSONABLE)
def test_jsonout_is_json(value: object) -> None:
    text = jsonout.dumps(value)
    assert "\n" not in text
    assert json.loads(text) == value
    assert text == json.dumps(value, separators=(",", ":"))


def test_jsonout_surrogates_from_argv_survive() -> None:
    arg = os.fsdecode(b"caf\xe9")  # a non-UTF-8 argv byte becomes a lone surrogate
    assert json.loads(jsonout.dumps([arg])) == [arg]


def _cfg(tmp_path: Path, text: str = "", **env: str) -> audit.Config:
    conf = tmp_path / "crashcart.conf"
    conf.write_text(text)
    old = dict(os.environ)
    os.environ.update({"CRASHCART_CONFIG": str(conf), **env})
    for key in ("CRASHCART_AUDIT_DIR", "CRASHCART_AUDIT_REQUIRED"):
        if key not in env:
            os.environ.pop(key, None)
    try:
        return audit.load_config()
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_config_file_and_environment(tmp_path: Path) -> None:
    text = (
        "# site policy\naudit_dir = /srv/audit\naudit_required = yes  # refuse\n"
        "audit_max_bytes = 4096\naudit_keep = 2\naudit_syslog = off\nother = 1\n"
    )
    cfg = _cfg(tmp_path, text)
    assert (cfg.dir, cfg.required, cfg.max_bytes, cfg.keep, cfg.syslog) == (
        "/srv/audit",
        True,
        4096,
        2,
        "",
    )
    cfg = _cfg(tmp_path, text, CRASHCART_AUDIT_DIR="/x", CRASHCART_AUDIT_REQUIRED="no")
    assert (cfg.dir, cfg.required) == ("/x", False)
    default = _cfg(tmp_path, "")
    assert (default.dir, default.required, default.syslog) == (
        "/var/log/crashcart",
        False,
        "/dev/log",
    )


@pytest.mark.parametrize(
    "text,message",
    [
        ("audit_required = maybe\n", ":1: expected yes or no"),
        ("\naudit_keep = 0\n", ":2: expected a positive number"),
        ("audit_dir\n", "expected `key = value`"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _cfg(tmp_path, text)


def test_rotation_keeps_n_files_and_loses_no_line(tmp_path: Path) -> None:
    cfg = audit.Config()
    cfg.dir, cfg.max_bytes, cfg.keep = str(tmp_path / "log"), 2000, 3
    for i in range(100):
        audit.append(cfg, {"n": i, "pad": "x" * 80})
    files = sorted(os.listdir(cfg.dir))
    assert files == [".lock", "audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
    kept = []
    for name in ("audit.log.3", "audit.log.2", "audit.log.1", "audit.log"):
        path = Path(cfg.dir) / name
        assert path.stat().st_size <= cfg.max_bytes
        kept += [json.loads(line)["n"] for line in path.read_text().splitlines()]
    assert kept == list(range(100 - len(kept), 100))  # the newest, in order, none lost


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    cfg = audit.Config()
    cfg.dir, cfg.max_bytes, cfg.keep = str(tmp_path / "log"), 20_000, 100
    pids = []
    for w in range(4):
        pid = os.fork()
        if pid == 0:
            try:
                for i in range(150):
                    audit.append(cfg, {"w": w, "i": i, "pad": "y" * 50})
            finally:
                os._exit(0)
        pids.append(pid)
    for pid in pids:
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    seen = []
    for name in os.listdir(cfg.dir):
        if name.startswith("audit.log"):
            seen += [json.loads(line) for line in (Path(cfg.dir) / name).read_text().splitlines()]
    assert sorted((r["w"], r["i"]) for r in seen) == [(w, i) for w in range(4) for i in range(150)]


def test_digest_is_cached_by_inode_size_and_mtime(tmp_path: Path) -> None:
    cfg = audit.Config()
    cfg.dir = str(tmp_path)
    image = tmp_path / "toolbox.img"
    image.write_bytes(b"a" * 5000)
    assert audit.toolbox_digest(cfg, str(image), compute=False) is None
    first = audit.toolbox_digest(cfg, str(image), compute=True)
    assert first == "sha256:" + __import__("hashlib").sha256(b"a" * 5000).hexdigest()
    assert audit.toolbox_digest(cfg, str(image), compute=False) == first  # from the cache
    image.write_bytes(b"b" * 5000)  # same inode and size, new mtime
    os.utime(image, ns=(0, 12345))
    assert audit.toolbox_digest(cfg, str(image), compute=False) is None
    assert audit.toolbox_digest(cfg, str(image), compute=True) != first

"""A crashed process's comm is the container's choice (prctl(PR_SET_NAME)), and
systemd-coredump puts it in the core's file name, escaping only '.', '/' and blanks. The
post-mortem summary tells the operator a command line to paste: a comm of `a;touch${IFS}P`
must stay one word of it, not run `touch`. The line is run here by a real /bin/sh, with
stand-ins for the decompressor and gdb that only record their arguments."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crashcart.postmortem import cores

HOSTILE = "a;touch${IFS}P"  # 14 characters: fits TASK_COMM_LEN


@pytest.mark.parametrize("ext", [".zst", ".xz", ""])
def test_a_hostile_comm_in_a_core_name_stays_one_word(tmp_path: Path, ext: str) -> None:
    name = f"core.{HOSTILE}.0.{'ab' * 16}.4242.1764763200000000{ext}"
    found = cores.Cores("|/lib/systemd/systemd-coredump", [f"/run/crashcart/{name}"], "test", "")
    found.copies = {f"/run/crashcart/{name}": b""}
    line = next(ln for ln in found.summary() if ln.startswith("open one with: "))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("zstd", "xz", "cat", "gdb"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {tmp_path}/{tool}.args\n')
        stub.chmod(0o755)
    paste = line.removeprefix("open one with: ").split(" (with the toolbox's")[0]
    paste = paste.replace("/tmp/core", str(tmp_path / "core"))
    proc = subprocess.run(["/bin/sh", "-c", paste], cwd=tmp_path, capture_output=True,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "IFS": " \t\n"})  # fmt: skip
    assert not (tmp_path / "P").exists(), (line, proc.stderr)  # touch never ran
    tool = {".zst": "zstd", ".xz": "xz", "": "cat"}[ext]
    args = (tmp_path / f"{tool}.args").read_text().splitlines()
    assert args[-1] == f"/run/crashcart/{name}", (line, args)
    host = line.split("decompress on the host: ", 1)[1].removesuffix(")")
    subprocess.run(["/bin/sh", "-c", host], cwd=tmp_path, env={"PATH": f"{bin_dir}:/bin"})
    assert not (tmp_path / "P").exists(), line
    assert (tmp_path / f"{tool}.args").read_text().splitlines()[-1].endswith(name)
    assert os.path.basename(args[-1]) == name

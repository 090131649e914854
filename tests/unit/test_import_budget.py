"""The attach path imports only what it needs (a test of *what* is imported, not of time:
the benchmark in bench/ measures time). Each module listed here costs milliseconds of a
~40 ms budget: dataclasses (~15 ms with inspect and ast), typing (~10 ms with re), json and
re (~8 ms with enum), argparse (~7 ms), socket and signal (enum), subprocess."""

from __future__ import annotations

import subprocess
import sys

from tests.ccrun import REPO

HEAVY = ("dataclasses", "typing", "json", "re", "enum", "argparse", "socket", "signal",
         "subprocess", "inspect", "ast", "tempfile", "shutil", "pathlib", "urllib")  # fmt: skip

PROBE = """
import sys
before = set(sys.modules)
import crashcart.cli, crashcart.targets, crashcart.attach.host, crashcart.toolbox
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_attach_path_imports_no_heavy_module() -> None:
    out = subprocess.run([sys.executable, "-S", "-c", PROBE], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout.split()  # fmt: skip
    heavy = sorted(set(out) & set(HEAVY))
    assert not heavy, f"the attach path imports {heavy}"
    assert "crashcart.attach.host" in out  # the probe did import the attach path

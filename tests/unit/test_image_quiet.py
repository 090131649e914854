"""`crashcart image build` reports only what the operator must act on: a program whose #!
interpreter is missing, not a library module with a stale #! (issue: quiet output)."""

from __future__ import annotations

import os
from pathlib import Path

from crashcart.image import relocate

STALE = "#!/usr/local/bin/python\nprint('hi')\n"


def _file(root: Path, rel: str, text: str, mode: int = 0o755) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def test_only_programs_with_a_missing_interpreter_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    _file(root, "/bin/sh", "#!/bin/sh\n")  # an interpreter that is there
    _file(root, "/usr/lib/python3.11/cgi.py", STALE)  # Debian's: a module, executable
    _file(root, "/usr/share/perl5/Foo.pm", "#!/usr/local/bin/perl\n1;\n")
    _file(root, "/usr/bin/tool", STALE)  # a program: reported
    _file(root, "/usr/lib/pkg/helper", STALE)  # no module suffix: may be run, reported
    _file(root, "/usr/lib/pkg/run.py", STALE)  # a module, but /usr/bin/run points to it
    os.symlink("../lib/pkg/run.py", root / "usr/bin/run")
    _file(root, "/usr/libexec/pkg/worker.py", STALE)  # libexec: run by its package
    _file(root, "/usr/lib/pkg/script.sh", "#!/bin/sh\necho\n")  # found: rewritten
    report = relocate.relocate(str(root), "/dev/crashcart")
    problems = sorted(p.split(":")[0] for p in report.problems)
    assert problems == [
        "/usr/bin/tool",
        "/usr/lib/pkg/helper",
        "/usr/lib/pkg/run.py",
        "/usr/libexec/pkg/worker.py",
    ]
    assert report.library_shebangs == 2
    assert report.as_dict()["library_shebangs_left"] == 2
    assert (root / "usr/lib/pkg/script.sh").read_text().startswith("#!/dev/crashcart/bin/sh")
    assert (root / "usr/lib/python3.11/cgi.py").read_text() == STALE  # left as it is


def test_build_output_is_one_line_per_thing_to_fix(tmp_path: Path) -> None:
    """A real `crashcart image build --from-rootfs`: a stale module says nothing, the
    programs that need the missing bash are one line."""
    import shutil
    import subprocess

    from tests import ccrun
    from tests.testbed.require import missing

    if shutil.which("mkfs.erofs") is None:
        missing("mkfs.erofs is not installed (scripts/runtimes install provides it)")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (root / "bin" / "sh").symlink_to("busybox")
    _file(root, "/usr/lib/python3.11/cgi.py", STALE)
    _file(root, "/bin/needs-perl", "#!/usr/bin/perl\n")
    out = tmp_path / "t.img"
    proc = subprocess.run(
        ccrun.argv(
            "image", "build", "--from-rootfs", str(root), "--output", str(out), "--format", "erofs"
        ),
        capture_output=True,
        text=True,
        env=ccrun.env() | {"CRASHCART_AUDIT_DIR": str(tmp_path / "audit")},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"{out}: ") and "erofs" in lines[0]
    assert len(lines) == 4, lines
    assert lines[1] == (
        "  not relocated: no bash in the image: /shell, .crashcartrc and the helpers need it"
    )
    count, _, rest = lines[2].removeprefix("  not relocated: ").partition(" programs need ")
    assert int(count) > 3 and rest.startswith("/bin/bash, which is not in the image: /shell, ")
    assert rest.endswith(f" and {int(count) - 3} more")
    assert (
        lines[3]
        == "  not relocated: /bin/needs-perl: interpreter /usr/bin/perl is not in the image"
    )
    assert "cgi.py" not in proc.stdout + proc.stderr
    # The build hashes the new image for the audit log, so the first session does not.
    import hashlib

    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    assert f" sha256:{digest} {out}\n" in (tmp_path / "audit" / "toolbox-digests").read_text()

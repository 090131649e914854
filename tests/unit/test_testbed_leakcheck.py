"""The leak checker's pure parts, on text and on fake trees."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.testbed import leakcheck as lc
from tests.testbed.runtimes import Container

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
300 27 0:90 / /mnt/with\\040space rw,nosuid - tmpfs my\\134src rw,size=1024k
301 27 0:91 / /var/lib/docker/overlay2/abc/merged rw - overlay overlay rw,lowerdir=/x
"""


def test_parse_mountinfo() -> None:
    mounts = lc.parse_mountinfo(MOUNTINFO)
    assert mounts[0] == lc.Mount("/proc", "proc", "proc", "rw,relatime|rw")
    assert mounts[2] == lc.Mount("/mnt/with space", "tmpfs", "my\\src", "rw,nosuid|rw,size=1024k")
    assert len(mounts) == 4


def test_parse_mountinfo_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="separator"):
        lc.parse_mountinfo("1 2 3 / / rw\n")


def test_host_mounts_ignore_runtime_state_dirs() -> None:
    mounts = lc._host_mounts(MOUNTINFO)
    assert sorted(m.mountpoint for m in mounts) == ["/", "/mnt/with space", "/proc"]


def test_list_tree_records_without_following_symlinks(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "null").write_text("")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root\n")
    (tmp_path / "escape").symlink_to("/")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "1").mkdir()
    tree = lc.list_tree(tmp_path, skip=frozenset({"/proc"}))
    assert set(tree) == {"/dev", "/dev/null", "/etc", "/etc/passwd", "/escape", "/proc"}
    assert tree["/escape"].kind == "l" and tree["/escape"].target == "/"
    assert tree["/etc/passwd"].size == 5 and tree["/etc/passwd"].kind == "f"
    assert tree["/etc"].size == 0


def _snap(**changes: object) -> lc.Snapshot:
    c = Container("runc", "cc-test-x", "cc-test-x", 42, "busybox")
    base: dict[str, object] = {
        "container": c,
        "target": lc.Proc(42, 1000, "/server"),
        "host_mounts": Counter([lc.Mount("/", "ext4", "/dev/vda", "rw")]),
        "loops": frozenset(),
        "container_mounts": Counter([lc.Mount("/", "overlay", "overlay", "rw")]),
        "files": {"/etc": lc.FileInfo("d", 0o755, 0, 0, 0)},
        "container_procs": frozenset({lc.Proc(42, 1000, "/server")}),
        "crashcart_procs": frozenset(),
    }
    base.update(changes)
    return lc.Snapshot(**base)  # type: ignore[arg-type]


def test_no_difference_passes() -> None:
    lc.check(_snap(), _snap())


def test_every_kind_of_leak_is_reported() -> None:
    after = _snap(
        host_mounts=Counter(
            [lc.Mount("/", "ext4", "/dev/vda", "rw"), lc.Mount("/x", "erofs", "/img", "ro")]
        ),
        loops=frozenset({("loop3", "/var/tmp/toolbox.squashfs")}),
        container_mounts=Counter(
            [
                lc.Mount("/", "overlay", "overlay", "rw"),
                lc.Mount("/dev/crashcart", "erofs", "/img", "ro"),
            ]
        ),
        files={
            "/etc": lc.FileInfo("d", 0o700, 0, 0, 0),
            "/dev/crashcart": lc.FileInfo("d", 0o755, 0, 0, 0),
        },
        container_procs=frozenset({lc.Proc(42, 1000, "/server"), lc.Proc(77, 5, "/bin/sh")}),
        crashcart_procs=frozenset({lc.Proc(88, 6, "python -m crashcart attach")}),
    )
    with pytest.raises(AssertionError) as err:
        lc.check(_snap(), after)
    text = str(err.value)
    assert text.startswith("leak check failed for runc container cc-test-x (pid 42, busybox):")
    for expected in (
        "host mounts:\n  + /x erofs /img ro",
        "host loop devices:\n  + loop3 -> /var/tmp/toolbox.squashfs",
        "container mounts:\n  + /dev/crashcart erofs /img ro",
        "  + /dev/crashcart (d 0755 0:0)",
        "  ~ /etc: d 0755 0:0 -> d 0700 0:0",
        "new processes in the container:\n  + pid 77: /bin/sh",
        "new crashcart processes:\n  + pid 88: python -m crashcart attach",
    ):
        assert expected in text


def test_a_second_identical_mount_is_a_leak() -> None:
    twice = Counter({lc.Mount("/", "ext4", "/dev/vda", "rw"): 2})
    assert lc.diff(_snap(), _snap(host_mounts=twice)) == ["host mounts:", "  + / ext4 /dev/vda rw"]


def test_dead_target_is_reported() -> None:
    lines = lc.diff(_snap(), _snap(target=None))
    assert lines[0] == "target:"
    recycled = lc.diff(_snap(), _snap(target=lc.Proc(42, 2000, "/server")))
    assert recycled[0] == "target:"


def _fake_proc(root: Path, pid: int, ppid: int, cmdline: str, start: int = 100) -> None:
    d = root / str(pid)
    d.mkdir()
    (d / "cmdline").write_bytes(cmdline.replace(" ", "\0").encode() + b"\0")
    fields = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 5
    (d / "stat").write_text(f"{pid} (x y) " + " ".join(fields) + "\n")


def test_crashcart_procs_are_ours_or_orphans(tmp_path: Path) -> None:
    _fake_proc(tmp_path, 1, 0, "/sbin/init")
    _fake_proc(tmp_path, 10, 1, "bash /work/crashcart/scripts/test")  # the runner's parent
    _fake_proc(tmp_path, 100, 10, "python -m pytest")  # the runner
    _fake_proc(tmp_path, 200, 100, "python -m crashcart attach x")  # our child
    _fake_proc(tmp_path, 201, 200, "crashcart-helper")  # our grandchild
    _fake_proc(tmp_path, 300, 1, "crashcart -m target")  # orphaned
    _fake_proc(tmp_path, 50, 1, "bash")  # someone else's terminal
    _fake_proc(tmp_path, 400, 50, "crashcart shell other")  # their crashcart
    _fake_proc(tmp_path, 500, 100, "sleep 1")  # ours, but not crashcart
    found = lc.crashcart_procs(tmp_path, runner=100)
    assert sorted(p.pid for p in found) == [200, 201, 300]
    assert lc.Proc(200, 100, "python -m crashcart attach x") in found


def test_pidns_procs_of_a_missing_process_is_empty(tmp_path: Path) -> None:
    assert lc.pidns_procs(999_999_999, tmp_path) == frozenset()

"""The session plan as data, and the parsers behind sideload state — no root needed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashcart import pinned, text
from crashcart.attach import plan
from crashcart.errors import UsageError
from crashcart.linux import cgroups, mountinfo, ns
from crashcart.sideload import state

DOCKER_MOUNTINFO = """\
1065 886 0:96 / / rw,relatime master:500 - overlay overlay rw,lowerdir=/l,upperdir=/u
1066 1065 0:98 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
1067 1065 0:99 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
1068 1067 0:100 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620
1075 1067 0:40 / /dev/crashcart ro,nosuid,nodev,relatime - erofs /proc/self/fd/8 ro,user_xattr
1076 1065 254:0 /path\\040with\\040space /data rw - ext4 /dev/vda rw
"""


def _nss(*foreign: str) -> ns.Namespaces:
    n = ns.Namespaces()
    n.foreign = set(foreign)
    return n


def test_session_steps_in_order() -> None:
    steps = plan.steps(_nss("net", "uts", "ipc", "mnt", "pid", "user"), tty=True)
    whats = [s.what for s in steps]
    assert whats[0] == "setns ipc uts net" and whats[1] == "setns mnt"
    assert whats.index("pivot_root into the toolbox (ro, nosuid, nodev)") < whats.index(
        "attach the target's root at /target"
    )
    # /proc is taken before the fork: nothing needs CAP_SYS_ADMIN in the target's pid ns
    assert whats.index("take the target's own /proc (a procfs of its pid namespace, with its "
                       "masks)") < whats.index("unshare a private mount namespace, make / "
                                               "rprivate")  # fmt: skip
    assert whats[-1].startswith("devpts")  # tty: the pty comes last, before the fork
    assert not any("user" in w or "cgroup" in w for w in whats)  # after the plan, in setup
    final = [s.what for s in plan.final_steps()]
    assert final[0].startswith("drop to the profile")


def test_no_tty_no_shared_namespaces() -> None:
    whats = [s.what for s in plan.steps(_nss(), tty=False)]
    assert not any("cgroup" in w or "setns" in w or "devpts" in w for w in whats)


def test_in_place_plan_mounts_nothing() -> None:
    whats = [s.what for s in plan.steps(_nss("mnt", "net"), tty=True, in_place=True)]
    assert whats == [
        "setns net", "setns mnt", "enter the target's root (as nsenter -r does)",
        "a pty from a devpts instance mounted nowhere, master to the host",
    ]  # fmt: skip


def test_cwd_as_the_target_sees_it() -> None:
    assert pinned.inside("/srv/app", "/") == "/srv/app"
    assert pinned.inside("/var/lib/ctr/rootfs/srv", "/var/lib/ctr/rootfs") == "/srv"
    assert pinned.inside("/var/lib/ctr/rootfs", "/var/lib/ctr/rootfs") == "/"
    assert pinned.inside("/elsewhere", "/var/lib/ctr/rootfs") == "/"
    assert pinned.inside("/var/lib/ctr/rootfs2/x", "/var/lib/ctr/rootfs") == "/"


def test_user_lookup() -> None:
    passwd = "root:x:0:0::/:/bin/sh\nnonroot:x:65532:65532::/home:/bin/false\n"
    assert plan.lookup_user("nonroot", passwd, 7)[:2] == (65532, 65532)
    assert plan.lookup_user("65532", passwd, 7)[:2] == (65532, 65532)
    # not in /etc/passwd: the target's main process's gid, else the uid
    assert plan.lookup_user("1234", passwd, 7) == (1234, 7, "the target's main process")
    assert plan.lookup_user("1234", passwd, None)[:2] == (1234, 1234)
    assert plan.lookup_group("50", "") == 50


@pytest.mark.parametrize("bad", ["4294967295", "99999999999", "-1", "1e3"])
def test_user_ids_out_of_range_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        plan.lookup_user(bad, "", 0)
    with pytest.raises(UsageError, match="4294967295"):
        plan.lookup_user("ghost", "ghost:x:4294967295:4294967295::/:/bin/sh\n", 0)


def test_mountinfo_parsing() -> None:
    entries = mountinfo.parse(DOCKER_MOUNTINFO)
    dev = mountinfo.mount_of(entries, "/dev")
    assert dev is not None and dev.fstype == "tmpfs" and not dev.read_only and not dev.shared
    assert mountinfo.mount_of(entries, "/dev/pts/0").point == "/dev/pts"  # type: ignore[union-attr]
    assert mountinfo.mount_of(entries, "/etc").point == "/"  # type: ignore[union-attr]
    assert entries[0].optional == ["master:500"]
    assert entries[-1].root == "/path with space"
    assert entries[4].device == 40


@given(st.text(max_size=80))
def test_mountinfo_line_parser_is_total(line: str) -> None:
    try:
        mountinfo.Mount(line)
    except ValueError:
        pass


@pytest.mark.parametrize("odd", ["\x0c", "\x0b", "\x1c", "\x1d", "\x1e", "\x1f", "\x85",
                                 "\u2028", "a\x0cb c"])  # fmt: skip
def test_mountinfo_fields_and_lines_as_the_kernel_writes_them(odd: str) -> None:
    """Only space, tab, newline and backslash are escaped by the kernel: every other
    character (a form feed in a tmpfs's source) is part of its field."""
    source = odd.replace(" ", "\\040")
    line = f"77 1065 0:50 / /mnt rw - tmpfs {source} rw"
    entries = mountinfo.parse(DOCKER_MOUNTINFO + line + "\n")
    assert len(entries) == 7
    assert entries[-1].source == odd and entries[-1].point == "/mnt"


def test_printable_escapes_every_control() -> None:
    assert text.printable("\x1b[31mFAKE\nLINE\x07") == "\\x1b[31mFAKE\\x0aLINE\\x07"
    assert text.safe_output("a\nb\tc\x1b]0;t\x07") == "a\nb\tc\\x1b]0;t\\x07"
    assert text.printable("caf\u00e9 \u2028") == "caf\u00e9 \\u2028"
    assert text.shell_quote("$(sh x)") == "'$(sh x)'"
    assert text.shell_quote("it's") == "'it'\"'\"'s'"


def test_cgroup_mounts_match_controller_sets() -> None:
    mountinfo = (
        "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate\n"
        "31 25 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd\n"
        "32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    )
    found = cgroups.parse_mounts(mountinfo)
    assert cgroups.find(found, "name=systemd") == "/sys/fs/cgroup/systemd"
    assert cgroups.find(found, "cpu,cpuacct") == "/sys/fs/cgroup/cpu,cpuacct"
    assert cgroups.find(found, "cpuacct,cpu") == "/sys/fs/cgroup/cpu,cpuacct"
    assert cgroups.find(found, "") == "/sys/fs/cgroup/unified"
    assert cgroups.find(found, "memory") is None


def test_records_read_back_only_what_is_well_formed() -> None:
    r = state.Record.from_json({"pid": 7, "pid_start": 3, "leases": [[1, 2], ["x", 3], [4]],
                                "created_dir": "pending", "dev_times": [1, 2, 3],
                                "by_exec": True, "image": 5})  # fmt: skip
    assert r is not None and (r.pid, r.pid_start, r.leases) == (7, 3, [[1, 2]])
    assert r.created_dir == "pending" and r.dev_times == [1, 2, 3] and r.by_exec
    assert r.image == "?"  # not a string: the default
    assert state.Record.from_json(["not", "a", "record"]) is None
    back = state.Record.from_json(r.to_json())
    assert back is not None and back.to_json() == r.to_json()

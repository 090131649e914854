"""The session plan as data, and the parsers behind sideload state — no root needed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crashcart.attach import plan
from crashcart.linux import cgroups, ns
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


def test_session_steps_in_order_user_namespace_last() -> None:
    steps = plan.steps(_nss("net", "uts", "ipc", "mnt", "pid", "user"), True, True, True)
    whats = [s.what for s in steps]
    assert whats[0] == "setns ipc uts net" and whats[1] == "setns mnt"
    assert whats[-2] == "join the target's cgroups"  # late: overlaps the RCU grace period
    assert whats.index("pivot_root into the toolbox (ro, nosuid, nodev)") < whats.index(
        "attach the target's root at /target"
    )
    assert whats[-1].startswith("devpts")  # tty: the pty comes last, before the fork
    final = [s.what for s in plan.final_steps(True)]
    assert final[0] == "setns user"  # in the command's own process, after everything else


def test_no_cgroup_no_tty_no_shared_namespaces() -> None:
    whats = [s.what for s in plan.steps(_nss(), False, False, False)]
    assert not any("cgroup" in w or "setns" in w or "devpts" in w for w in whats)
    assert [s.what for s in plan.final_steps(False)][0].startswith("drop capabilities")


def test_cwd_as_the_target_sees_it() -> None:
    assert plan._inside("/srv/app", "/") == "/srv/app"
    assert plan._inside("/var/lib/ctr/rootfs/srv", "/var/lib/ctr/rootfs") == "/srv"
    assert plan._inside("/var/lib/ctr/rootfs", "/var/lib/ctr/rootfs") == "/"
    assert plan._inside("/elsewhere", "/var/lib/ctr/rootfs") == "/"
    assert plan._inside("/var/lib/ctr/rootfs2/x", "/var/lib/ctr/rootfs") == "/"


def test_user_lookup() -> None:
    passwd = "root:x:0:0::/:/bin/sh\nnonroot:x:65532:65532::/home:/bin/false\n"
    assert plan._lookup("nonroot", passwd, "user") == (65532, 65532)
    assert plan._lookup("65532", passwd, "user") == (65532, 65532)
    assert plan._lookup("1234", passwd, "user") == (1234, 0)


def test_mountinfo_parsing() -> None:
    entries = [state.MountEntry(line) for line in DOCKER_MOUNTINFO.splitlines()]
    assert [m.point for m in state.toolbox_mounts(entries)] == ["/dev/crashcart"]
    dev = state.mount_of(entries, "/dev")
    assert dev is not None and dev.fstype == "tmpfs" and not dev.read_only and not dev.shared
    assert state.mount_of(entries, "/dev/pts/0").point == "/dev/pts"  # type: ignore[union-attr]
    assert state.mount_of(entries, "/etc").point == "/"  # type: ignore[union-attr]
    assert entries[0].optional == ["master:500"]
    assert entries[-1].root == "/path with space"
    assert entries[4].device == 40


@given(st.text(max_size=80))
def test_mountinfo_line_parser_is_total(line: str) -> None:
    try:
        state.MountEntry(line)
    except ValueError:
        pass


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

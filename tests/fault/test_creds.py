"""Credentials of the session: the capability profiles against what `--help` promises,
--user by number and by name (also in a user-namespaced container), --no-cgroup, and
capabilities the caller holds that must not leak into the session."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from crashcart.linux import caps
from tests import ccrun
from tests.fault import kit
from tests.fault.conftest import target
from tests.testbed import leakcheck as lc
from tests.testbed import runtimes
from tests.testbed.runtimes import Container, ContainerFactory

SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def cap_sets(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in SETS:
            out[key] = int(value, 16)
    return out


def own_bounding() -> int:
    return cap_sets(Path("/proc/self/status").read_text())["CapBnd"]


def promised_default() -> list[str]:
    """The capability names `crashcart --help` lists for the default profile."""
    help_text = ccrun.run("--help").stdout.decode()
    block = help_text.split("default ", 1)[1].split("restricted", 1)[0]
    block = block.split("(", 1)[0]  # the note about --user
    names = re.findall(r"[a-z_]+", block.replace("the target's bounding set plus", ""))
    assert names and all(n in caps.NUMBERS for n in names), names
    return names


@pytest.mark.parametrize("profile", ["default", "restricted", "privileged"])
def test_profiles_keep_exactly_what_help_says(
    shared: Container, tiny: str, profile: str, leakcheck: lc.LeakCheckFn
) -> None:
    target_bnd = cap_sets(Path(f"/proc/{shared.pid}/status").read_text())["CapBnd"]
    with leakcheck(shared):
        proc = ccrun.run("--caps", profile, target(shared), "--", "cat", "/proc/self/status",
                         image=tiny)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = cap_sets(ccrun.text(proc))
    want = {
        "default": target_bnd | caps.mask(promised_default()),
        "restricted": target_bnd,
        "privileged": own_bounding(),
    }[profile] & own_bounding()
    assert got["CapBnd"] == want, (caps.names(got["CapBnd"] ^ want), profile)
    assert got["CapPrm"] == got["CapEff"] == want  # root's execve: permitted = bounding
    assert got["CapInh"] == got["CapAmb"] == 0


def test_callers_inheritable_capabilities_do_not_survive(shared: Container, tiny: str) -> None:
    """For root, execve gives P' = inheritable | bounding: a caller's inheritable set would
    bypass the profile if crashcart did not clear it."""
    argv = [
        "setpriv",
        "--inh-caps",
        "+sys_admin,+sys_module",
        *ccrun.argv("--caps", "restricted", target(shared), "--", "cat", "/proc/self/status"),
    ]
    proc = subprocess.run(argv, capture_output=True, env=ccrun.env(tiny), cwd=ccrun.REPO,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = cap_sets(ccrun.text(proc))
    leaked = caps.names(got["CapPrm"] & caps.mask(["sys_admin", "sys_module"]))
    assert leaked == [] and got["CapInh"] == 0, got


def test_default_profile_cannot_open_host_files_by_handle(
    shared: Container, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """docker binds /etc/hosts from the host's filesystem: with CAP_DAC_READ_SEARCH in the
    host's user namespace, open_by_handle_at(inode 2) on it opens the host's root
    directory ("shocker"). Only --privileged keeps that capability."""
    with leakcheck(shared):
        default = ccrun.run(target(shared), "--", "probe", "shocker", "/target/etc/hosts",
                            image=tiny)  # fmt: skip
        privileged = ccrun.run("--privileged", target(shared), "--", "probe", "shocker",
                               "/target/etc/hosts", image=tiny)  # fmt: skip
    assert "open_by_handle_at EPERM" in ccrun.text(default), ccrun.text(default)
    assert "open_by_handle_at ok" in ccrun.text(privileged)  # documented: not protected


USERS = {
    "1000": ("1000", "0", "0"),
    "1000:1000": ("1000", "1000", "1000"),
    "nobody": ("65534", "65534", "65534"),
    "nonroot:nogroup": ("65532", "65534", "65534"),
    "0:65534": ("0", "65534", "65534"),
}


@pytest.mark.parametrize("user", USERS)
def test_user(shared: Container, tiny: str, user: str, leakcheck: lc.LeakCheckFn) -> None:
    target_bnd = cap_sets(Path(f"/proc/{shared.pid}/status").read_text())["CapBnd"]
    with leakcheck(shared):
        proc = ccrun.run("--user", user, target(shared), "--", "sh", "-c",
                         "id -u; id -g; id -G; cat /proc/self/status", image=tiny)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = ccrun.text(proc).splitlines()
    assert tuple(lines[:3]) == USERS[user], lines[:3]
    got = cap_sets(ccrun.text(proc))
    if lines[0] != "0":
        assert got["CapEff"] == 0 and got["CapPrm"] == 0
        assert got["CapBnd"] == target_bnd  # nothing a set-user-ID program of theirs lacks


def test_unknown_user_is_one_clear_line(shared: Container, tiny: str) -> None:
    proc = ccrun.run("--user", "nosuchuser", target(shared), "--", "true", image=tiny)
    err = proc.stderr.decode()
    assert proc.returncode == 125
    assert "no user 'nosuchuser' in the target's /etc/passwd" in err, err
    assert len(err.strip().splitlines()) == 1


def test_user_in_a_user_namespaced_container(
    start_container: ContainerFactory, tiny: str, leakcheck: lc.LeakCheckFn
) -> None:
    """IDs are the container's: 1000 inside is USERNS_HOST_ID + 1000 on the host."""
    c = start_container("podman", "busybox", userns=True)
    with leakcheck(c):
        p = kit.popen("--user", "1000:1000", target(c), "--", "sh", "-c", "id -u; sleep 30",
                      image=tiny)  # fmt: skip
        assert p.stdout is not None and p.stdout.readline() == b"1000\n"
        kit.wait_for(lambda: any(x.cmdline == "sleep 30" for x in kit.session_procs(c)),
                     what="the session")  # fmt: skip
        cmd = next(x.pid for x in kit.session_procs(c) if x.cmdline == "sleep 30")
        host_uid = Path(f"/proc/{cmd}/status").read_text().split("Uid:")[1].split()[0]
        kit.kill(p.pid, 15)
        p.wait(20)
    assert int(host_uid) == runtimes.USERNS_HOST_ID + 1000


@pytest.mark.parametrize("join", [True, False])
def test_cgroup_join_and_no_cgroup(
    shared: Container, tiny: str, join: bool, leakcheck: lc.LeakCheckFn
) -> None:
    with leakcheck(shared):
        p = kit.popen(*([] if join else ["--no-cgroup"]), target(shared), "--", "sleep", "30",
                      image=tiny)  # fmt: skip
        kit.wait_for(lambda: any(x.cmdline == "sleep 30" for x in kit.session_procs(shared)),
                     what="the session")  # fmt: skip
        cmd = next(x.pid for x in kit.session_procs(shared) if x.cmdline == "sleep 30")
        theirs = Path(f"/proc/{shared.pid}/cgroup").read_text()
        ours = Path(f"/proc/{cmd}/cgroup").read_text()
        mine = Path("/proc/self/cgroup").read_text()
        kit.kill(p.pid, 15)
        p.wait(20)
    if join:
        assert ours == theirs
    else:
        assert ours == mine and ours != theirs

"""Target lookup without runtimes: the exact-match rule, nspawn command lines, pod names
from libpod's database bytes, cgroup paths that name a container crashcart does not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crashcart.errors import UsageError
from crashcart.targets import dedupe, lxc, machine, podman
from crashcart.targets.model import Target, is_hex_id, matches, parse_spec
from crashcart.targets.pid import cgroup_id

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "query,ident,names,expected",
    [
        ("cc-h-", "cc-h-ctrd", [], (False, False)),  # the bug: a name is never a prefix
        ("cc-h-ctrd", "cc-h-ctrd", [], (True, True)),
        ("0123", HEX, [], (True, False)),
        ("0123", "0123-not-hex", [], (False, False)),
        ("web", HEX, ["web"], (True, True)),
        ("we", HEX, ["web"], (False, False)),  # names match exactly
        ("abc", "abcdef", [], (False, False)),  # too short to be a runtime's hex ID
    ],
)
def test_matches(query: str, ident: str, names: list[str], expected: tuple[bool, bool]) -> None:
    assert matches(query, ident, names) == expected


def test_hex_ids() -> None:
    assert is_hex_id(HEX) and is_hex_id(HEX[:12])
    assert not is_hex_id(HEX.upper()) and not is_hex_id("cafe") and not is_hex_id(HEX[:11] + "g")


@pytest.mark.parametrize(
    "text,runtime,query,ns",
    [
        ("lxc://web", "lxc", "web", None),
        ("machine://box", "machine", "box", None),
        ("crun://x", "crun", "x", None),
        ("podman://pod/app", "podman", "app", "pod"),
        ("k8s.io/abc", "containerd", "abc", "k8s.io"),
    ],
)
def test_new_spellings(text: str, runtime: str, query: str, ns: str | None) -> None:
    spec = parse_spec(text)
    assert (spec.runtime, spec.query, spec.namespace) == (runtime, query, ns)


@pytest.mark.parametrize("text", ["lxc://a/b", "machine://a/b", "podman://pod/", "crun://"])
def test_bad_two_part_forms(text: str) -> None:
    with pytest.raises(UsageError):
        parse_spec(text)


@pytest.mark.parametrize(
    "argv,name",
    [
        (["systemd-nspawn", "--register=no", "-D", "/srv/box", "/bin/init"], "box"),
        (["systemd-nspawn", "-q", "--directory=/srv/box/", "-M", "web", "sh"], "web"),
        (["systemd-nspawn", "--machine=db", "-D/srv/x"], "db"),
        (["systemd-nspawn", "-i", "/img/disk.raw"], "disk"),
        (["systemd-nspawn", "-D", "/a", "--", "-M", "no"], "a"),
    ],
)
def test_nspawn_machine_name(argv: list[str], name: str) -> None:
    assert machine.machine_name(argv) == name


def test_machined_leader_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """machined's state file: LEADER= names the leader; a VM is not a container target."""
    import os

    monkeypatch.setenv("CRASHCART_MACHINES_DIR", str(tmp_path))
    monkeypatch.setenv("CRASHCART_NSPAWN_PROPAGATE", str(tmp_path / "none"))
    (tmp_path / "box").write_text(f"NAME=box\nCLASS=container\nLEADER={os.getpid()}\n")
    (tmp_path / "vm").write_text(f"NAME=vm\nCLASS=vm\nLEADER={os.getpid()}\n")
    found = [(t.id, t.pid, t.state) for t in machine.find("box")]
    assert found == [("box", os.getpid(), "running")]
    assert machine.find("vm") == [] and machine.find("../box") == []
    assert [t.id for t in machine.list_running()] == ["box"]


def test_lxc_stopped_and_names_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRASHCART_LXC_PATH", str(tmp_path))
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "config").write_text("lxc.uts.name = web\n")
    assert [(t.id, t.state, t.pid) for t in lxc.find("web")] == [("web", "stopped", 0)]
    assert lxc.find("we") == [] and lxc.find("..") == [] and lxc.list_running() == []


def test_pod_names_from_bolt_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """libpod stores a pod's config as a JSON value after the key `config`, between bolt's
    binary page data; a container's config (no hasInfra) is not a pod."""
    pod = {"id": HEX, "name": "shop", "labels": {}, "hasInfra": True, "infraConfig": {"a": 1}}
    ctr = {"id": HEX[::-1], "name": "app", "spec": {"x": "}"}}
    raw = b"\x00\x01\x02config" + json.dumps(pod, separators=(",", ":")).encode() + b"\x00\xff"
    raw += b"config" + json.dumps(ctr, separators=(",", ":")).encode() + b'config{"id":"tru'
    (tmp_path / "libpod").mkdir()
    (tmp_path / "libpod" / "bolt_state.db").write_bytes(raw)
    store = podman.Store(str(tmp_path), str(tmp_path / "run"), 0)
    assert podman.pod_names(store) == {HEX: "shop"}


def test_cgroup_names_an_unknown_container() -> None:
    assert cgroup_id([("0", "", f"/kubepods/besteffort/pod1/crio-{HEX}.scope")]) == HEX
    assert cgroup_id([("1", "cpu", "/user.slice/session-2.scope")]) == ""


def test_dedupe_keeps_stopped_containers_apart() -> None:
    """Containers without a process (pid 0) are one entry per ID, not one for all."""
    out = dedupe([Target("docker", "a" * 64, "x", 0, state="stopped"),
                  Target("docker", "b" * 64, "y", 0, state="created")])  # fmt: skip
    assert sorted(t.name for t in out) == ["x", "y"]

"""TARGET spellings, and the runtime answers crashcart parses (malformed ones included)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crashcart import fastjson
from crashcart.errors import CrashcartError, RuntimeAnswerError, UsageError
from crashcart.targets import dedupe, runc, unixhttp
from crashcart.targets import podman as podman_mod
from crashcart.targets.docker import _target as docker_target
from crashcart.targets.model import RUNTIMES, Spec, Target, matches, parse_spec


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1234", Spec("1234", "pid", "1234")),
        ("pid://77", Spec("pid://77", "pid", "77")),
        ("web", Spec("web", None, "web")),
        ("docker://web", Spec("docker://web", "docker", "web")),
        ("podman://abc123", Spec("podman://abc123", "podman", "abc123")),
        ("containerd://k8s.io/abc", Spec("containerd://k8s.io/abc", "containerd", "abc", "k8s.io")),
        ("moby/abc", Spec("moby/abc", "containerd", "abc", "moby")),
        ("runc://x", Spec("runc://x", "runc", "x")),
        ("docker://1234", Spec("docker://1234", "docker", "1234")),
    ],
)
def test_spec_forms(text: str, expected: Spec) -> None:
    assert parse_spec(text) == expected


@pytest.mark.parametrize(
    "text,runtime", [("rkt://x", None), ("docker://", None), ("pid://0", None), ("pid://x", None),
                     ("docker://a/b", None), ("ns/", None), ("a/b/c", None), ("x", "kube"),
                     ("docker://x", "podman"), ("", None), ("a\nb", None)],
)  # fmt: skip
def test_spec_errors(text: str, runtime: str | None) -> None:
    with pytest.raises(UsageError):
        parse_spec(text, runtime)


def test_runtime_option_forces_like_a_prefix() -> None:
    assert parse_spec("web", "podman") == Spec("web", "podman", "web")
    assert parse_spec("123", "docker").runtime == "docker"


@given(st.text(max_size=40), st.sampled_from([None, *RUNTIMES]))
def test_spec_parser_total(text: str, runtime: str | None) -> None:
    try:
        spec = parse_spec(text, runtime)
    except UsageError:
        return
    assert spec.query and (spec.runtime in (None, *RUNTIMES, "pid"))


def test_matches() -> None:
    assert matches("web", "abc", ["web"]) == (True, True)
    assert matches("abc", "abc", []) == (True, True)
    assert matches("ab", "abc", []) == (False, False)  # an ID that is a name: exact only
    assert matches("abc1", "abc123" * 10 + "abcd", []) == (True, False)  # a hex ID's prefix
    assert matches("x", "abc", ["y"]) == (False, False)


def test_dedupe_prefers_the_higher_level_runtime() -> None:
    out = dedupe([Target("containerd", "c1", "c1", 10, namespace="moby"),
                  Target("docker", "c1", "web", 10), Target("runc", "r", "r", 11)])  # fmt: skip
    assert [(t.runtime, t.pid) for t in out] == [("docker", 10), ("runc", 11)]


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4)
    ),
    max_leaves=20,
)


@given(JSON)
def test_fastjson_agrees_with_json(value: object) -> None:
    text = json.dumps(value)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == json.loads(text)


@given(st.binary(max_size=60))
def test_fastjson_rejects_garbage_with_valueerror(raw: bytes) -> None:
    try:
        fastjson.loads(raw)
    except ValueError:
        pass


@given(st.binary(max_size=300))
def test_http_parser_on_malformed_answers(raw: bytes) -> None:
    try:
        status, _ = unixhttp._parse(raw, "test")
    except RuntimeAnswerError:
        return
    assert 0 <= status


def test_http_parser_reads_a_docker_answer() -> None:
    raw = (
        b"HTTP/1.0 404 Not Found\r\nContent-Type: application/json\r\n\r\n"
        b'{"message":"No such container: x"}\n'
    )
    assert unixhttp._parse(raw, "t") == (404, {"message": "No such container: x"})


FIELD = st.none() | st.integers() | st.text() | st.dictionaries(st.text(max_size=4), st.integers())


@given(st.dictionaries(st.sampled_from(["Id", "Name", "State", "Config"]), FIELD))
def test_docker_inspect_validation(info: dict[str, object]) -> None:
    try:
        t = docker_target(info)
    except RuntimeAnswerError:
        return
    assert isinstance(t.pid, int) and isinstance(t.id, str)


def _state(tmp: Path, cid: str, content: str) -> None:
    (tmp / cid).mkdir(parents=True, exist_ok=True)
    (tmp / cid / "state.json").write_text(content)


def test_runc_state_live_and_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRASHCART_RUNC_ROOT", str(tmp_path))
    me = os.getpid()
    start = runc.started_at(me)
    _state(
        tmp_path,
        "live",
        json.dumps({"id": "live", "init_process_pid": me, "init_process_start": start}),
    )
    _state(
        tmp_path,
        "stale",
        json.dumps({"id": "stale", "init_process_pid": me, "init_process_start": 1}),
    )
    assert [t.id for t in runc.list_running()] == ["live"]
    assert [(t.state, t.pid) for t in runc.find("stale")] == [("stopped", 0)]
    assert runc.find("li") == []  # runc IDs are names: no prefix matching


@pytest.mark.parametrize(
    "content", ["{", "[]", '{"id": 3}', '{"id": "x", "init_process_pid": "1"}', "\xff"]
)
def test_runc_malformed_state_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    monkeypatch.setenv("CRASHCART_RUNC_ROOT", str(tmp_path))
    _state(tmp_path, "bad", content)
    with pytest.raises(RuntimeAnswerError, match="bad"):
        runc.list_running()


@pytest.mark.parametrize("content", ["{}", "[1]", '[{"id": 5}]', "nope"])
def test_podman_malformed_store_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    monkeypatch.setenv("CRASHCART_PODMAN_GRAPHROOT", str(tmp_path))
    (tmp_path / "overlay-containers").mkdir()
    (tmp_path / "overlay-containers" / "containers.json").write_text(content)
    with pytest.raises(CrashcartError):
        podman_mod.find("x")


def test_read_text_reads_past_one_page(tmp_path: Path) -> None:
    """seq_file /proc files give about a page per read(): mountinfo of a container with many
    mounts is longer (found by the P3 benchmark: -u missed the toolbox and said "not
    mounted")."""
    from crashcart.linux import procfs

    maps = procfs.read_text(f"/proc/{os.getpid()}/maps")  # one read() gives <= 4096 bytes
    assert len(maps) > 8192 and maps.endswith("\n")


def test_identity_check_after_pinning() -> None:
    """A PID the runtime named, pinned a moment later, must still be in that container's
    cgroup: otherwise the container exited and the PID may belong to someone else."""
    from crashcart.errors import TargetGone
    from crashcart.pinned import check_identity

    web = Target("docker", "abc123" * 10 + "abcd", "web", 42)
    check_identity(web, ["/docker/" + web.id])
    check_identity(web, ["/system.slice/docker-" + web.id + ".scope"])
    check_identity(Target("pid", "42", "sleep", 42), ["/"])
    with pytest.raises(TargetGone, match="no longer belongs"):
        check_identity(web, ["/user.slice/session-3.scope"])

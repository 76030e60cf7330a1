"""The control flag reaches the agent within seconds through the API, falls back to the mount, fails closed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tourniquet.domain import wiring
from tourniquet.runtime import ControlFollower, ControlState, parse_control
from tourniquet.runtime.control import CONTROL_MOUNT, MODES
from tourniquet.runtime.worker import BUNDLE_FILE

NAMESPACE = "support"


def fast_follower(agent: str, **options: Any) -> ControlFollower:
    """A follower with test-sized intervals (production polls every 3 s and backs off up to 30 s)."""
    options.setdefault("poll_interval", 0.1)
    options.setdefault("max_backoff", 0.3)
    options.setdefault("connect_timeout", 1.0)
    return ControlFollower(agent, NAMESPACE, **options)


# -- what a flag means -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "mode", "revoked", "error"),
    [
        (None, "active", set(), None),
        ({}, "active", set(), None),
        ({"mode": "active", "revokedTools": "[]"}, "active", set(), None),
        ({"mode": "shadow", "revokedTools": '["issue_refund"]'}, "shadow", {"issue_refund"}, None),
        ({"mode": " Shadow\n", "revokedTools": ""}, "shadow", set(), None),
        ({"mode": "paused"}, "shadow", set(), "unknown mode 'paused'"),
        ({"mode": "active", "revokedTools": "issue_refund"}, "shadow", set(), "not a JSON list"),
        ({"mode": "active", "revokedTools": '{"issue_refund": true}'}, "shadow", set(), "not a JSON list"),
        ({"mode": "active", "revokedTools": "[1, 2]"}, "shadow", set(), "not a JSON list"),
    ],
)
def test_a_flag_means_what_it_says_and_a_garbled_one_fails_closed(
    data: dict[str, str] | None, mode: str, revoked: set[str], error: str | None
) -> None:
    state = parse_control(data, source="api")

    assert (state.mode, set(state.revoked_tools)) == (mode, revoked)
    if error is None:
        assert state.error is None
    else:
        assert state.error is not None and error in state.error and "failing closed to shadow mode" in state.error


@given(st.dictionaries(st.sampled_from(["mode", "revokedTools", "other"]), st.text(max_size=30)))
def test_no_flag_content_crashes_the_parser_or_loosens_an_unknown_mode(data: dict[str, str]) -> None:
    state = parse_control(data, source="file")

    assert state.mode in MODES
    if data.get("mode", "active").strip().lower() not in MODES:
        assert state.shadow and state.error


def test_the_runtime_reads_where_the_operator_mounts() -> None:
    assert CONTROL_MOUNT == wiring.CONTROL_MOUNT
    assert Path(BUNDLE_FILE).parent == Path(wiring.BUNDLE_MOUNT)


# -- through the API -------------------------------------------------------------------------------


def test_a_configmap_change_reaches_the_agent_through_the_api_within_two_seconds(
    kubeconfig: Path, set_control: Callable[[str, dict[str, str]], None], tmp_path: Path
) -> None:
    set_control("watch-agent", {"mode": "active", "revokedTools": "[]"})
    with fast_follower("watch-agent", kubeconfig=kubeconfig, mount_dir=tmp_path / "no-mount") as follower:
        follower.wait_for(lambda s: s.source == "api", timeout=10)  # the first client build costs ~1 s

        started = time.monotonic()
        set_control("watch-agent", {"mode": "shadow", "revokedTools": '["issue_refund"]'})
        state = follower.wait_for(lambda s: s.shadow, timeout=2)
        assert time.monotonic() - started < 2
        assert (state.source, state.revoked_tools, state.error) == ("api", frozenset({"issue_refund"}), None)

        set_control("watch-agent", {"mode": "active", "revokedTools": "[]"})
        state = follower.wait_for(lambda s: not s.shadow, timeout=2)
        assert state.revoked_tools == frozenset()


def test_a_renewed_watch_resumes_where_it_left_off(
    kubeconfig: Path, set_control: Callable[[str, dict[str, str]], None], tmp_path: Path
) -> None:
    seen: list[ControlState] = []
    set_control("renew-agent", {"mode": "active", "revokedTools": "[]"})
    with fast_follower(
        "renew-agent",
        kubeconfig=kubeconfig,
        mount_dir=tmp_path / "no-mount",
        watch_timeout_seconds=1,
        on_change=seen.append,
    ) as follower:
        follower.wait_for(lambda s: s.source == "api", timeout=10)
        time.sleep(1.5)  # the server has ended the first watch; the follower has watched again
        set_control("renew-agent", {"mode": "shadow", "revokedTools": "[]"})
        follower.wait_for(lambda s: s.shadow, timeout=2)

    versions = [int(s.resource_version) for s in seen if s.resource_version]
    assert versions == sorted(set(versions)), "a resumed watch must not replay what was already seen"
    assert [s.mode for s in seen] == ["active", "shadow"]


def test_a_garbled_flag_through_the_api_fails_closed(
    kubeconfig: Path, set_control: Callable[[str, dict[str, str]], None], tmp_path: Path
) -> None:
    set_control("garbled-agent", {"mode": "paused", "revokedTools": "[]"})
    with fast_follower("garbled-agent", kubeconfig=kubeconfig, mount_dir=tmp_path / "no-mount") as follower:
        state = follower.wait_for(lambda s: s.source == "api", timeout=10)

    assert state.shadow
    assert state.error is not None and "unknown mode 'paused'" in state.error


def test_no_control_configmap_means_no_flag(kubeconfig: Path, tmp_path: Path) -> None:
    with fast_follower("unmanaged-agent", kubeconfig=kubeconfig, mount_dir=tmp_path / "no-mount") as follower:
        state = follower.wait_for(lambda s: s.source == "api", timeout=10)

    assert (state.mode, state.revoked_tools, state.error) == ("active", frozenset(), None)


# -- without the API -------------------------------------------------------------------------------


def test_without_api_access_the_mounted_files_are_followed(
    unreachable_kubeconfig: Path, tmp_path: Path, write_mount: Callable[..., Path]
) -> None:
    mount = write_mount(tmp_path / "control", "shadow", [])
    with fast_follower("refund-agent", kubeconfig=unreachable_kubeconfig, mount_dir=mount) as follower:
        state = follower.wait_for(lambda s: s.fallback_reason is not None, timeout=5)
        assert (state.source, state.mode) == ("file", "shadow")
        assert "API unreachable" in state.fallback_reason  # type: ignore[operator]

        write_mount(mount, "active", ["issue_refund"])
        state = follower.wait_for(lambda s: not s.shadow, timeout=2)
        assert state.revoked_tools == frozenset({"issue_refund"})


def test_an_unreadable_mounted_flag_fails_closed(
    unreachable_kubeconfig: Path, tmp_path: Path, write_mount: Callable[..., Path]
) -> None:
    mount = write_mount(tmp_path / "control", "active", "[not json")
    with fast_follower("refund-agent", kubeconfig=unreachable_kubeconfig, mount_dir=mount) as follower:
        state = follower.wait_for(lambda s: s.fallback_reason is not None, timeout=5)

    assert state.shadow
    assert state.error is not None and "revokedTools is not a JSON list" in state.error


def test_no_kubeconfig_and_no_service_account_means_files(
    tmp_path: Path, write_mount: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod, whatever runs the tests
    mount = write_mount(tmp_path / "control", "active", ["send_email"])
    with fast_follower("refund-agent", mount_dir=mount) as follower:  # in-cluster config: absent here
        state = follower.wait_for(lambda s: s.fallback_reason is not None, timeout=5)

    assert state.revoked_tools == frozenset({"send_email"})
    assert "no API configuration" in (state.fallback_reason or "")


def test_a_stale_mount_never_loosens_what_the_api_said_and_the_api_is_rejoined(
    tmp_path: Path, write_mount: Callable[..., Path]
) -> None:
    from kubemu.server import ApiServerThread

    control_cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "outage-agent-control", "namespace": NAMESPACE},
        "data": {"mode": "shadow", "revokedTools": "[]"},
    }
    mount = write_mount(tmp_path / "control", "active", [])  # the kubelet has not synced the shadow flag yet
    with ApiServerThread() as server:
        server.apply_manifests([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, control_cm])
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        port = server.port
        with fast_follower("outage-agent", kubeconfig=kubeconfig, mount_dir=mount) as follower:
            follower.wait_for(lambda s: s.source == "api" and s.shadow, timeout=10)

            server.stop()
            state = follower.wait_for(lambda s: s.source == "file", timeout=5)
            time.sleep(0.3)  # several polls of the stale mount
            assert follower.state().shadow, "a stale mount must not end shadow mode"

            write_mount(mount, "shadow", ["issue_refund"])  # the kubelet catches up
            state = follower.wait_for(lambda s: "issue_refund" in s.revoked_tools, timeout=2)
            assert state.shadow

            server.start(port=port)
            server.apply_manifests([{**control_cm, "data": {"mode": "active", "revokedTools": json.dumps([])}}])
            state = follower.wait_for(lambda s: s.source == "api" and not s.shadow, timeout=5)
            assert state.fallback_reason is None and state.revoked_tools == frozenset()


def test_a_state_is_readable_before_and_after_following() -> None:
    follower = ControlFollower("refund-agent", NAMESPACE, mount_dir="/nonexistent")
    assert follower.state() == ControlState(observed_at=follower.state().observed_at)
    follower.stop()  # stopping a follower that never started is harmless

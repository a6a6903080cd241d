"""The gateway fleet without processes: liveness and lag (pure, on a given ``now``), the signed
counters' datagrams (signature, replay), and the registry and the routing wait on a real store
(SQLite here; the PostgreSQL path with LISTEN/NOTIFY runs in tests/test_e2e_postgres.py and
bench/gateway_fleet.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from openeas.gateway.routing.registry import Registration, StatsTarget, parse_addr
from openeas.gateway_fleet import FleetAcks
from openeas.kernel.fleet import HEARTBEAT_S, LIVE_S, GatewayRecord, lagging
from openeas.store import Store
from openeas.telemetry.gateway_stats import GatewayStats, ServiceSample, encode
from openeas.telemetry.signed_stats import ReplayGuard, SignedReceiver, sign, verify

# docs/scale.md ("Gateways on other machines"): a heartbeat every 1 s; live while the last one
# is at most 3 s old (three missed heartbeats).
DOC_HEARTBEAT_S = 1.0
DOC_LIVE_S = 3.0
KEY = bytes(range(32))


def test_registry_defaults_are_the_documented_numbers() -> None:
    assert (HEARTBEAT_S, LIVE_S) == (DOC_HEARTBEAT_S, DOC_LIVE_S)


def rec(gid: str, heartbeat_at: float, applied: int) -> GatewayRecord:
    return GatewayRecord(gid, f"http://{gid}:8081", "h", 1, 0.0, heartbeat_at, applied)


@pytest.mark.parametrize(
    "heartbeat_at,applied,version,now,late",
    [
        pytest.param(100.0, 7, 7, 101.0, False, id="applied-live"),
        pytest.param(100.0, 8, 7, 101.0, False, id="a-later-version-counts"),
        pytest.param(100.0, 6, 7, 101.0, True, id="behind-live"),
        pytest.param(100.0, 6, 7, 103.0, True, id="3s-old-still-live"),
        pytest.param(100.0, 6, 7, 103.5, False, id="3.5s-old-dead-not-waited-for"),
        pytest.param(100.0, -1, 0, 101.0, True, id="no-table-yet"),
    ],
)
def test_lagging_is_the_live_gateways_behind_the_version(
    heartbeat_at: float, applied: int, version: int, now: float, late: bool
) -> None:
    r = rec("g1", heartbeat_at, applied)
    assert lagging([r], version, now) == ([r] if late else [])
    assert r.to_dict(now, version)["lag"] == max(0, version - applied)


def payload(gid: str = "gw-1", up: float = 10.0, arrivals: int = 5) -> bytes:
    return encode(gid, up, {"svc": ServiceSample(arrivals, 1, 0)})[0]


@pytest.mark.parametrize(
    "datagram,ok",
    [
        pytest.param(sign(KEY, payload()), True, id="signed"),
        pytest.param(sign(bytes(32), payload()), False, id="another-key"),
        pytest.param(sign(KEY, payload()).replace(b"[5,", b"[9,"), False, id="tampered"),
        pytest.param(payload(), False, id="unsigned"),
        pytest.param(b"OEs1short", False, id="too-short"),
    ],
)
def test_only_a_datagram_signed_with_the_stores_key_is_read(datagram: bytes, ok: bool) -> None:
    assert (verify(KEY, datagram) == payload()) is ok
    stats = GatewayStats(lambda: 0.0)
    receiver = SignedReceiver(KEY, stats)
    assert receiver.feed(datagram, 1.0) is ok
    assert (stats.current("svc", 1.0) is not None) is ok and receiver.refused == (0 if ok else 1)


@pytest.mark.parametrize(
    "ups,accepted",
    [
        pytest.param([1.0, 1.2, 1.4], [True, True, True], id="in-order"),
        pytest.param([1.0, 1.0], [True, True], id="split-send-shares-its-uptime"),
        pytest.param([1.0, 1.4, 1.2], [True, True, False], id="replayed-older"),
    ],
)
def test_a_replayed_datagram_is_refused(ups: list[float], accepted: list[bool]) -> None:
    guard = ReplayGuard()
    assert [guard.accept("gw-1", up) for up in ups] == accepted


def test_a_replay_cannot_turn_back_a_counter_into_new_requests() -> None:
    stats = GatewayStats(lambda: 0.0)
    receiver = SignedReceiver(KEY, stats)
    old, new = sign(KEY, payload(up=5.0, arrivals=10)), sign(KEY, payload(up=6.0, arrivals=20))
    assert [receiver.feed(d, t) for d, t in ((old, 5.0), (new, 6.0), (old, 6.5))] == [True, True, False]
    assert receiver.feed(sign(KEY, payload(up=7.0, arrivals=20)), 7.0)
    # 10 → 20 between the first two; the replay refused, so no reset and no phantom +20.
    assert stats.requests_between("svc", 0.0, 8.0) == 10


@pytest.mark.parametrize(
    "addr,parsed",
    [
        pytest.param("10.0.0.1:4000", ("10.0.0.1", 4000), id="v4"),
        pytest.param("[::1]:4000", ("::1", 4000), id="v6"),
        pytest.param("cp.example:4000", ("cp.example", 4000), id="name"),
        pytest.param("10.0.0.1", None, id="no-port"),
        pytest.param(":4000", None, id="no-host"),
    ],
)
def test_the_advertised_address(addr: str, parsed: tuple[str, int] | None) -> None:
    assert parse_addr(addr) == parsed


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)


def test_a_gateway_registers_heartbeats_acknowledges_and_leaves(store: Store) -> None:
    reg = Registration(store.data_dir, None, "gw-a", "http://10.0.0.7:8081")
    assert reg.beat(-1) is None  # registered; no counters' address advertised (SQLite)
    key = store.advertise_gateway_stats("10.0.0.1:4000")
    assert reg.beat(3) == StatsTarget("10.0.0.1", 4000, key)
    assert reg.applied(5)
    assert reg.beat(4) is not None  # a heartbeat never lowers the applied version
    (r,), now, _ = store.gateways()
    assert (r.id, r.url, r.pid, r.applied_version, r.live(now)) == (
        "gw-a",
        "http://10.0.0.7:8081",
        reg.pid,
        5,
        True,
    )
    reg.leave()
    assert store.gateways()[0] == []


def test_the_wait_returns_once_every_live_gateway_applied(store: Store) -> None:
    store.bump_routing()
    version = store.routing_version()
    regs = [Registration(store.data_dir, None, g, f"http://{g}:8081") for g in ("gw-a", "gw-b")]
    for reg in regs:
        reg.beat(version - 1)
    late = threading.Timer(0.05, regs[1].applied, args=(version,))
    late.start()
    regs[0].applied(version)
    out = FleetAcks(store).wait_applied(version, timeout_s=10.0)
    late.join()
    assert out.acknowledged and out.to_dict()["gateways"] == {"live": 2, "applied": 2}
    assert out.to_dict()["not_applied"] == [] and "warning" not in out.to_dict()


def test_the_wait_names_each_gateway_that_did_not_apply_and_skips_dead_ones(store: Store) -> None:
    store.bump_routing()
    version = store.routing_version()
    Registration(store.data_dir, None, "gw-slow", "http://10.0.0.8:8081").beat(version - 1)
    dead = Registration(store.data_dir, None, "gw-dead", "http://10.0.0.9:8081")
    dead.beat(version - 1)
    dead._run("ageing", "UPDATE gateways SET heartbeat_at = heartbeat_at - 60 WHERE id = 'gw-dead'")
    d = FleetAcks(store).wait_applied(version, timeout_s=0.1).to_dict()
    assert not d["acknowledged"] and d["gateways"] == {"live": 1, "applied": 0}
    assert d["not_applied"] == [
        {"id": "gw-slow", "url": "http://10.0.0.8:8081", "applied_version": version - 1}
    ]
    assert "gw-slow (http://10.0.0.8:8081)" in d["warning"] and "gw-dead" not in d["warning"]


def test_on_postgresql_the_acknowledgement_wakes_the_wait(tmp_path: Path, pg_url: str) -> None:
    """The gateway's write notifies; the wait counts it from the notification: with the safety-net
    poll far past the bound, only the notification can end the wait early."""
    store = Store(tmp_path, url=pg_url)
    store.bump_routing()
    version = store.routing_version()
    reg = Registration(tmp_path, pg_url, "gw-pg", "http://10.0.0.7:8081")
    reg.beat(version - 1)
    acks = FleetAcks(store)
    acks.poll_s = 60.0
    try:
        acks.wait_applied(version - 1, timeout_s=1.0)  # the listener starts with the first wait
        assert acks.listening.wait(10.0)
        late = threading.Timer(0.2, reg.applied, args=(version,))
        late.start()
        out = acks.wait_applied(version, timeout_s=30.0)
        late.join()
    finally:
        acks.close()
        reg.close()
        store.engine.dispose()
    assert out.acknowledged and out.live == 1
    assert out.waited_s < 15.0, out  # the notification, not the poll (60 s) nor the bound (30 s)


def test_a_killed_gateway_of_this_machine_is_not_waited_for(store: Store) -> None:
    """Killed, its heartbeat still looks live for up to 3 s; its pid says it is gone."""
    store.bump_routing()
    version = store.routing_version()
    reg = Registration(store.data_dir, None, "gw-killed", "http://127.0.0.1:8081")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    reg.pid = dead.pid  # a process that has exited
    reg.beat(version - 1)
    out = FleetAcks(store).wait_applied(version, timeout_s=5.0)
    assert out.acknowledged and out.live == 0 and out.waited_s < 5.0, out

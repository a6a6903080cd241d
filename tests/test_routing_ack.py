"""The gateway acknowledges the routing version it applied; the control plane waits for it.

The bookkeeping (`PendingAcks`, the datagram formats, what the API answers) without sockets; then
a real store, a real in-process gateway on the notification socket and the control plane's
`RoutingNotifier`: a wait returns once the gateway's table has the version, a lost notification
is sent again, and a gateway that is not there is named in the answer after the bounded wait.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openeas.gateway.routing import ack
from openeas.gateway.routing.ack import AckOutcome, PendingAcks
from openeas.gateway.routing.notify import RoutingNotifier, socket_path, socket_paths
from openeas.unixdgram import BoundSocket
from tests.harness import wait_for
from tests.routing_harness import RoutingRig, spec


def test_the_documented_defaults() -> None:
    # docs/groups.md: an API call waits at most 2 s for the acknowledgement; resent every 50 ms.
    assert ack.ROUTING_ACK_TIMEOUT_S == 2.0
    assert ack.RESEND_S == 0.05
    assert ack.MAX_PENDING == 64


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"12", 12, id="version"),
        pytest.param(b"0", 0, id="zero"),
        pytest.param(b" 7\n", 7, id="whitespace"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"-3", None, id="negative"),
        pytest.param(b"applied 3 4", None, id="an-ack-is-not-a-notification"),
    ],
)
def test_parse_notify(data: bytes, expected: int | None) -> None:
    assert ack.parse_notify(data) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(ack.encode_ack(9, 1234), (9, 1234), id="round-trip"),
        pytest.param(b"applied 9", None, id="no-pid"),
        pytest.param(b"applied x 1", None, id="not-a-number"),
        pytest.param(b"applied -1 1", None, id="negative-version"),
        pytest.param(b"applied 1 0", None, id="pid-zero"),
        pytest.param(b"9", None, id="a-notification-is-not-an-ack"),
    ],
)
def test_parse_ack(data: bytes, expected: tuple[int, int] | None) -> None:
    assert ack.parse_ack(data) == expected


@pytest.mark.parametrize(
    ("wants", "applied", "due", "left"),
    [
        pytest.param([("a", 3)], 3, [("a", 3)], 0, id="exactly-applied"),
        pytest.param([("a", 3)], 5, [("a", 3)], 0, id="a-later-version-covers-it"),
        pytest.param([("a", 6)], 5, [], 1, id="not-yet"),
        pytest.param([("a", 3), ("a", 6)], 5, [], 1, id="one-entry-per-sender-its-highest"),
        pytest.param([("a", 6), ("a", 3)], 6, [("a", 6)], 0, id="an-older-want-does-not-lower-it"),
        pytest.param([("a", 2), ("b", 7)], 5, [("a", 2)], 1, id="each-sender-on-its-own"),
        pytest.param([("", 2), (b"", 2)], 5, [], 0, id="an-unnamed-sender-cannot-be-answered"),
        pytest.param([(b"\0abc", 1)], 1, [(b"\0abc", 1)], 0, id="abstract-address"),
    ],
)
def test_pending_acks(wants: list[tuple[ack.Address, int]], applied: int, due: list[tuple[ack.Address, int]], left: int) -> None:
    p = PendingAcks()
    for addr, v in wants:
        p.want(addr, v)
    assert p.due(applied) == due
    assert len(p) == left


def test_pending_acks_are_bounded_oldest_forgotten_first() -> None:
    p = PendingAcks(max_pending=2)
    for addr in ("a", "b", "c"):
        p.want(addr, 1)
    assert [a for a, _ in p.due(1)] == ["b", "c"]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        pytest.param(
            AckOutcome(4, True, 0.0021, "the gateway (pid 7, x)"),
            {"version": 4, "acknowledged": True, "waited_ms": 2.1, "gateway": "the gateway (pid 7, x)"},
            id="acknowledged",
        ),
        pytest.param(
            AckOutcome(4, False, 2.0, "the gateway on h:1 (not running, s)"),
            {
                "version": 4,
                "acknowledged": False,
                "waited_ms": 2000.0,
                "gateway": "the gateway on h:1 (not running, s)",
                "warning": "the gateway on h:1 (not running, s) did not acknowledge routing version 4 within 2s; "
                "the change is saved and the gateway applies it when it next reads the store (its poll runs every second)",
            },
            id="timed-out-names-the-gateway",
        ),
    ],
)
def test_what_the_api_answers(outcome: AckOutcome, expected: dict[str, object]) -> None:
    assert outcome.to_dict() == expected


# --- real sockets: store, in-process gateway, the control plane's notifier ---------------------


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[RoutingRig, RoutingNotifier]]:
    # The gateway's safety-net poll is out of the way: only the push and its answer can be this fast.
    r = RoutingRig(tmp_path, push=False, poll_interval_s=60.0)
    notifier = RoutingNotifier(socket_path(tmp_path), lambda: "the test gateway")
    r.store.add_routing_listener(notifier)
    try:
        yield r, notifier
    finally:
        notifier.close()
        r.close()


def test_a_wait_returns_once_the_gateway_has_the_version(rig: tuple[RoutingRig, RoutingNotifier]) -> None:
    r, notifier = rig
    r.start_gateway()
    for i in range(20):
        r.store.create_service(spec(f"svc{i}"))
        version = r.store.routing_version()
        out = notifier.wait_applied(version, timeout_s=5.0)
        assert out.acknowledged, out
        # The gateway's table has it by the time the wait returns, not later.
        assert r.table().version >= version
        assert "pid" in out.gateway and out.waited_s < 5.0


def test_a_lost_notification_is_sent_again_while_waiting(rig: tuple[RoutingRig, RoutingNotifier]) -> None:
    r, notifier = rig
    r.start_gateway()
    before = notifier.wait_applied(r.store.routing_version(), timeout_s=5.0)
    assert before.acknowledged
    # A commit whose datagram is lost: the version moves without a notification.
    with r.store.session() as s:
        r.store._set_meta(s, "routing_version", str(before.version + 1))
    out = notifier.wait_applied(before.version + 1, timeout_s=10.0)
    assert out.acknowledged and r.table().version == before.version + 1
    assert out.waited_s < 10.0  # the resend (every 50 ms), not the 60 s poll


def test_no_gateway_the_wait_is_bounded_and_names_it(rig: tuple[RoutingRig, RoutingNotifier]) -> None:
    r, notifier = rig
    r.store.create_service(spec("alone"))
    t0 = time.monotonic()
    out = notifier.wait_applied(r.store.routing_version(), timeout_s=0.3)
    assert not out.acknowledged and out.gateway == "the test gateway"
    assert 0.3 <= time.monotonic() - t0 < 2.0
    assert "the test gateway did not acknowledge routing version" in out.to_dict()["warning"]
    # The change landed: a gateway started now loads it and acknowledges the next wait.
    r.start_gateway()
    assert notifier.wait_applied(r.store.routing_version(), timeout_s=5.0).acknowledged


def test_a_worker_restarted_on_a_long_path_is_still_one_worker(tmp_path: Path) -> None:
    """A data dir too deep for sun_path binds each socket as /proc/self/fd/<dir fd>/<name>; a
    restarted worker's fd may differ, and its acknowledgements must replace its old ones, not count
    as one more worker's (which made version 12 look in effect while worker 1 had 11)."""
    paths = socket_paths(tmp_path / ("d" * 110), 2)
    notifier = RoutingNotifier(paths)
    to = notifier._sock.getsockname()
    w0, w1 = BoundSocket(paths[0]), BoundSocket(paths[1])
    spacer = None
    try:
        w0.sock.sendto(ack.encode_ack(12, 100), to)
        w1.sock.sendto(ack.encode_ack(11, 101), to)
        assert notifier.wait_applied(11, timeout_s=2.0).acknowledged
        before = w0._addr.addr
        w0.close()
        spacer = os.open(tmp_path, os.O_PATH)  # the restarted worker's dir fd gets another number
        w0 = BoundSocket(paths[0])
        assert before.startswith("/proc/self/fd/") and w0._addr.addr != before
        w0.sock.sendto(ack.encode_ack(13, 102), to)
        wait_for(lambda: notifier.pids_at(13) == {102}, 5, what="the restarted worker's ack")
        assert notifier.applied == 11
        assert not notifier.wait_applied(12, timeout_s=0.3).acknowledged
        w1.sock.sendto(ack.encode_ack(13, 101), to)
        assert notifier.wait_applied(13, timeout_s=2.0).acknowledged
    finally:
        notifier.close()
        w0.close()
        w1.close()
        if spacer is not None:
            os.close(spacer)

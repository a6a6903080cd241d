"""The gateway's push on an in-flight jump, without sockets: a request that brings a service's
in-flight count to its threshold makes the gateway send its counters at once (outside the 0.2 s
cadence), naming the service, so the autoscaler decides on it without waiting for its tick.

The fakes are those of tests/test_gateway_protocol.py (a loop whose clock only the test moves,
client and replica transports that record); the sender records its datagrams instead of writing
them to a socket. Everything else is the real proxy and the real `StatsSender`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from openeas.gateway.telemetry.metrics import GatewayMetrics, ServiceMetrics
from openeas.gateway.telemetry.stats import StatsSender, jumped, push_threshold, rearm, samples
from openeas.telemetry.gateway_stats import (
    JUMP_GAP_S,
    JUMP_MIN_IN_FLIGHT,
    SEND_INTERVAL_S,
    ServiceSample,
    decode,
)
from tests.test_gateway_protocol import GET, OK, Gateway, route

# (loop time s, {service: (arrivals, in_flight, held)}, services named as jumped)
Sent = tuple[float, dict[str, tuple[int, int, int]], list[str]]


class RecordingSender(StatsSender):
    """The real sender, with the socket replaced by a list."""

    def __init__(self, gw: Gateway, **kw: float) -> None:
        super().__init__(Path("unused"), gw.metrics, **kw)
        self.gw = gw
        self.datagrams: list[Sent] = []

    def open(self) -> None:
        pass

    def transmit(self, datagram: bytes) -> bool:
        _, _, counters, jumps = decode(datagram)
        values = {name: (s.arrivals, s.in_flight, s.held) for name, s in counters.items()}
        self.datagrams.append((round(self.gw.loop.time(), 6), values, jumps))
        return True


def started(gw: Gateway, **kw: float) -> RecordingSender:
    sender = RecordingSender(gw, **kw)
    sender.start(gw.loop)  # type: ignore[arg-type]
    gw.ctx.on_jump = sender.jump  # as openeas.gateway.server.Gateway.start does
    return sender


def requests(gw: Gateway, n: int, service: str = "svc") -> None:
    """``n`` requests that reach a replica and stay there (it never answers)."""
    request = GET.replace(b"/api/predict/svc/", f"/api/predict/{service}/".encode())
    for _ in range(n):
        gw.client().send(request)


# ---- the threshold ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "threshold"),
    [
        pytest.param(0, 2, id="idle-first-request-is-not-a-jump"),  # 0 → 1 is every service's start
        pytest.param(1, 2, id="one-then-two"),  # 2 x 1, and the minimum
        pytest.param(2, 4, id="doubles"),
        pytest.param(37, 74, id="large"),
    ],
)
def test_push_threshold(in_flight: int, threshold: int) -> None:
    assert push_threshold(in_flight) == threshold


def test_documented_jump_defaults() -> None:
    # docs/autoscaling.md: a jump is twice the last sent in-flight count and at least 2; jump
    # datagrams at least 0.05 s apart; the regular cadence 0.2 s.
    assert (JUMP_MIN_IN_FLIGHT, JUMP_GAP_S, SEND_INTERVAL_S) == (2, 0.05, 0.2)
    assert ServiceMetrics().push_at == 2  # before the first datagram: the minimum


def test_jumped_and_rearm() -> None:
    metrics = GatewayMetrics()
    for name, in_flight in [("idle", 0), ("one", 1), ("two", 2), ("five", 5)]:
        metrics.service(name).in_flight = in_flight
    assert jumped(metrics) == ["two", "five"]  # at or above the minimum of 2
    rearm(metrics)
    assert [m.push_at for m in metrics.services.values()] == [2, 2, 4, 10]
    assert jumped(metrics) == []
    metrics.services["five"].in_flight = 10
    assert jumped(metrics) == ["five"]


# ---- the sender on the proxy -----------------------------------------------------------------------

JUMP_CASES = [
    pytest.param(
        [(0.0, 1)],
        [],
        id="one-request-is-no-jump",
    ),
    pytest.param(
        [(0.0, 2)],
        [(0.0, {"svc": (2, 2, 0)}, ["svc"])],
        # the 2nd request reaches the minimum: sent in the same loop turn
        id="two-at-once",
    ),
    pytest.param(
        [(0.0, 2), (0.01, 2), (0.02, 4)],
        [(0.0, {"svc": (2, 2, 0)}, ["svc"]), (0.05, {"svc": (8, 8, 0)}, ["svc"])],
        # 2 → push_at 4: reached at 0.01 s, but the gap holds it to 0.05 s, by then 8 in flight
        id="a-burst-is-a-few-datagrams",
    ),
    pytest.param(
        [(0.0, 2), (0.1, 1)],
        [(0.0, {"svc": (2, 2, 0)}, ["svc"])],
        # 3 < push_at 4: no jump; the 0.2 s datagram carries it
        id="below-double-waits-for-the-cadence",
    ),
    pytest.param(
        [(0.0, 2), (0.1, 2)],
        [(0.0, {"svc": (2, 2, 0)}, ["svc"]), (0.1, {"svc": (4, 4, 0)}, ["svc"])],
        # 4 = 2 x 2 at 0.1 s, past the gap: sent at once
        id="doubled-after-the-gap",
    ),
]


@pytest.mark.parametrize(("arrivals", "expected"), JUMP_CASES)
def test_a_jump_is_sent_at_once(arrivals: list[tuple[float, int]], expected: list[Sent]) -> None:
    gw = Gateway(route("a"))
    sender = started(gw, interval_s=10.0)  # the cadence out of the way: only jumps are sent
    start = sender.datagrams.pop(0)
    assert start == (0.0, {"svc": (0, 0, 0)}, [])  # the first datagram, at start: routed, idle
    now = 0.0
    for at, n in arrivals:
        gw.loop.advance(at - now)
        now = at
        requests(gw, n)
        gw.loop.run_ready()
    gw.loop.advance(1.0)
    assert sender.datagrams == expected


def test_the_cadence_carries_a_pending_jump_and_rearms() -> None:
    gw = Gateway(route("a"))
    sender = started(gw)  # 0.2 s cadence, 0.05 s gap
    requests(gw, 2)  # a jump at 0.0: sent at once
    gw.loop.advance(0.19)
    requests(gw, 2)  # 4 = 2 x 2 at 0.19 s: due at once (the gap has passed)...
    gw.loop.advance(0.01)  # ...and sent before the cadence's datagram at 0.2
    gw.loop.advance(0.5)
    times = [t for t, _, _ in sender.datagrams]
    assert times == [0.0, 0.0, 0.19, 0.2, 0.4, 0.6]
    assert [j for _, _, j in sender.datagrams] == [[], ["svc"], ["svc"], [], [], []]
    assert gw.metrics.services["svc"].push_at == 8  # 2 x the 4 in flight the last datagram sent


def test_jumps_of_several_services_share_a_datagram() -> None:
    gw = Gateway(route("a"), route("b", service="other"))
    sender = started(gw, interval_s=10.0)
    requests(gw, 2)
    gw.loop.advance(0.01)
    requests(gw, 3, service="other")  # inside the gap: waits for the svc datagram's gap to end
    gw.loop.advance(1.0)
    assert sender.datagrams[1:] == [
        (0.0, {"svc": (2, 2, 0), "other": (0, 0, 0)}, ["svc"]),
        (0.05, {"svc": (2, 2, 0), "other": (3, 3, 0)}, ["other"]),
    ]


def test_answers_lower_the_threshold_at_the_next_datagram() -> None:
    gw = Gateway(route("a"))
    sender = started(gw, interval_s=0.2)
    requests(gw, 4)
    gw.loop.advance(0.05)  # one datagram for the 4 that came in one loop turn (push_at → 8)
    assert gw.metrics.services["svc"].push_at == 8
    for conn in range(4):
        gw.replicas["a"].answer(OK, conn)
    gw.loop.advance(0.2)  # the cadence sends 0 in flight: push_at back to the minimum
    assert gw.metrics.services["svc"].push_at == 2
    before = len(sender.datagrams)
    requests(gw, 2)
    gw.loop.advance(0.0)
    assert sender.datagrams[before:] == [(0.25, {"svc": (6, 2, 0)}, ["svc"])]


def test_no_sender_no_jump_calls() -> None:
    gw = Gateway(route("a"))  # a gateway from a routing file has no stats sender
    requests(gw, 5)
    assert gw.ctx.on_jump is None
    assert samples(gw.metrics)["svc"] == ServiceSample(arrivals=5, in_flight=5, held=0)


def test_held_requests_jump_too() -> None:
    gw = Gateway(route(hold_timeout_s=60.0))  # no replica: requests are held
    sender = started(gw, interval_s=10.0)
    gw.ctx.on_hold = sender.send_soon  # as the gateway wires it
    requests(gw, 2)
    gw.loop.run_ready()
    # the hold's datagram (at once) and the jump's (in_flight counts held requests): the held
    # ones are apart from those in flight to a replica
    assert sender.datagrams[1:] == [(0.0, {"svc": (1, 0, 1)}, []), (0.0, {"svc": (2, 0, 2)}, ["svc"])]

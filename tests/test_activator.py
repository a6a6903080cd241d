"""The activator without sockets: requests to a service with no routable replica are held, then
sent the moment the routing table offers one, or refused (429), timed out (503), abandoned.

The fakes are those of tests/test_gateway_protocol.py (a loop whose clock only the test moves,
transports that record, replicas the test plays); everything under test is the real proxy.
"""

from __future__ import annotations

import pytest

from openeas.gateway.http.activator import HOLD_POLL_S, gateway_stopping
from openeas.gateway.http.proxy import IDLE
from openeas.gateway.telemetry.metrics import HoldStats
from openeas.gateway.telemetry.stats import samples
from openeas.telemetry.gateway_stats import ServiceSample
from tests.fakeloop import (
    GET,
    GET_UPSTREAM,
    OK,
    POST_HEAD,
    POST_HEAD_UPSTREAM,
    Client,
    Gateway,
    error,
    route,
)


def hold_stats(gw: Gateway, service: str = "svc") -> HoldStats:
    stats = gw.metrics.services[service].hold
    assert stats is not None
    return stats


def outcomes(gw: Gateway, service: str = "svc") -> dict[str, int]:
    h = hold_stats(gw, service)
    # Every held request is exactly one of these (or still held).
    assert h.held_total == h.held + h.released_total + h.timed_out + h.abandoned + h.ended
    return {
        k: v
        for k, v in {
            "held": h.held,
            "released": h.released_total,
            "timed_out": h.timed_out,
            "abandoned": h.abandoned,
            "ended": h.ended,
            "overflow": h.overflow,
        }.items()
        if v
    }


def held_clients(gw: Gateway, n: int, request: bytes = GET) -> list[Client]:
    clients = [gw.client() for _ in range(n)]
    for c in clients:
        c.send(request)
    return clients


# ---- held, then released by the push ----------------------------------------------------------------


def test_a_held_request_goes_out_the_moment_the_table_has_a_replica() -> None:
    gw = Gateway(route(hold_timeout_s=60.0))
    client = gw.client()
    client.send(GET)
    gw.loop.advance(3.7)  # a cold start
    assert client.received() == b""  # held, not answered
    assert outcomes(gw) == {"held": 1}
    gw.set_routes(route("a", hold_timeout_s=60.0))  # the push: no poll interval to wait out
    gw.loop.run_ready()  # the connection to the new replica opens (a task)
    a = gw.replicas["a"]
    assert a.received() == GET_UPSTREAM
    a.answer(OK)
    assert client.received() == OK
    assert outcomes(gw) == {"released": 1}
    h = hold_stats(gw)
    assert h.wait_sum_s == pytest.approx(3.7)  # held at t=0, sent at t=3.7
    assert gw.codes() == {200: 1} and gw.in_flight() == 0


def test_held_requests_go_out_in_arrival_order() -> None:
    gw = Gateway(route(hold_timeout_s=60.0))
    first, second = gw.client(), gw.client()
    first.send(b"GET /api/predict/svc/first HTTP/1.1\r\nHost: gw\r\n\r\n")
    second.send(b"GET /api/predict/svc/second HTTP/1.1\r\nHost: gw\r\n\r\n")
    gw.set_routes(route("a", hold_timeout_s=60.0))
    gw.loop.run_ready()
    a = gw.replicas["a"]
    assert [a.received(0).split(b" ")[1], a.received(1).split(b" ")[1]] == [b"/first", b"/second"]
    a.answer(OK, 1)
    a.answer(OK, 0)
    assert first.received() == OK and second.received() == OK
    assert outcomes(gw) == {"released": 2}


def test_a_held_post_keeps_its_body_and_streams_after_release() -> None:
    gw = Gateway(route(hold_timeout_s=60.0))
    client = gw.client()
    client.send(POST_HEAD)
    client.send(b"01234")  # part of the body arrives while held: kept
    gw.loop.advance(1.0)
    gw.set_routes(route("a", hold_timeout_s=60.0))
    gw.loop.run_ready()
    a = gw.replicas["a"]
    assert a.received() == POST_HEAD_UPSTREAM + b"01234"
    client.send(b"56789")  # the rest streams straight to the replica
    assert a.received() == POST_HEAD_UPSTREAM + b"0123456789"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    a.answer(head + b"5\r\nhello\r\n")  # a streamed answer reaches the client as it comes
    assert client.received() == head + b"5\r\nhello\r\n"
    a.answer(b"0\r\n\r\n")
    assert client.received() == b"0\r\n\r\n"
    assert gw.codes() == {200: 1} and outcomes(gw) == {"released": 1}


def test_a_replica_that_refuses_keeps_the_request_held_until_it_accepts() -> None:
    # The table has a replica, but it refuses connections (it just crashed): the queue's poll
    # retries it every HOLD_POLL_S; the request is released once it accepts.
    gw = Gateway(route("a", hold_timeout_s=60.0))
    a = gw.replicas["a"]
    a.refuse = True
    client = gw.client()
    client.send(GET)
    gw.loop.advance(1.0)
    assert client.received() == b"" and outcomes(gw) == {"held": 1}
    a.refuse = False
    gw.loop.advance(HOLD_POLL_S)
    assert a.received() == GET_UPSTREAM
    a.answer(OK)
    assert client.received() == OK
    assert outcomes(gw) == {"released": 1}


# ---- refused, timed out, abandoned, ended ---------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after() -> None:
    gw = Gateway(route(max_held=2, hold_timeout_s=60.0))
    first, second, third = held_clients(gw, 3)
    message = (
        "service 'svc' has no ready replica and already holds 2 requests waiting for one "
        "(max_queue_size); retry after 1 s"
    )
    answer = third.received()
    assert answer == error(429, "hold_queue_full", message).replace(
        b"\r\n\r\n", b"\r\nRetry-After: 1\r\n\r\n", 1
    )
    assert first.received() == b"" and second.received() == b""  # still held
    assert outcomes(gw) == {"held": 2, "overflow": 1}
    assert gw.codes() == {429: 1}


def test_a_request_held_past_its_timeout_gets_503() -> None:
    gw = Gateway(route(hold_timeout_s=2.0))
    client = gw.client()
    client.send(GET)
    gw.loop.advance(1.9)
    assert client.received() == b""
    gw.loop.advance(0.2)  # the deadline (2 s) falls between two polls (every 0.05 s)
    message = "service 'svc' has no ready replica; none became ready within 2 s (hold_timeout_ms)"
    assert client.received() == error(503, "no_ready_replica", message)
    assert outcomes(gw) == {"timed_out": 1}
    assert client.conn.phase is IDLE  # the connection serves the next request
    gw.loop.advance(10)
    assert gw.loop.pending() == []  # an empty queue stops polling


def test_a_client_that_leaves_while_held_is_removed_and_counted() -> None:
    gw = Gateway(route(hold_timeout_s=60.0))
    client = gw.client()
    client.send(GET)
    client.conn.connection_lost(ConnectionResetError(104, "Connection reset by peer"))
    gw.loop.run_ready()
    assert outcomes(gw) == {"abandoned": 1}
    assert gw.codes() == {499: 1} and gw.in_flight() == 0
    gw.set_routes(route("a", hold_timeout_s=60.0))
    gw.loop.run_ready()
    assert gw.replicas["a"].conns == []  # nothing sent for a client that is gone


def test_a_stopped_service_answers_at_once() -> None:
    gw = Gateway(route(stopped=True))
    client = gw.client()
    client.send(GET)  # no time passes
    message = "service 'svc' is stopped; start it to serve requests (openeas start svc)"
    assert client.received() == error(503, "service_stopped", message)
    assert gw.metrics.services["svc"].hold is None  # never held
    assert gw.codes() == {503: 1}


@pytest.mark.parametrize(
    ("change", "status", "code", "message"),
    [
        pytest.param(
            "stopped",
            503,
            "service_stopped",
            "service 'svc' is stopped; start it to serve requests (openeas start svc)",
            id="service-stopped-while-held",
        ),
        pytest.param("deleted", 404, "service_not_found", "service 'svc' not found", id="deleted-while-held"),
    ],
)
def test_held_requests_end_when_their_service_stops_or_goes(
    change: str, status: int, code: str, message: str
) -> None:
    gw = Gateway(route(hold_timeout_s=60.0))
    clients = held_clients(gw, 2)
    if change == "stopped":
        gw.set_routes(route(stopped=True, hold_timeout_s=60.0))
    else:
        gw.set_routes(route(service="other"))
    for c in clients:
        assert c.received() == error(status, code, message)
    assert outcomes(gw) == {"ended": 2}


def test_the_request_timeout_still_applies_while_held() -> None:
    gw = Gateway(route(timeout_s=1.0, hold_timeout_s=60.0))
    client = gw.client()
    client.send(GET)
    gw.loop.advance(1.01)
    message = "service 'svc' did not answer within 1 s (timeout_s)"
    assert client.received() == error(408, "timeout", message)
    assert outcomes(gw) == {"ended": 1}


# ---- what the control plane hears ------------------------------------------------------------------


def test_holding_tells_the_control_plane_at_once() -> None:
    gw = Gateway(route(hold_timeout_s=60.0), route("a", service="busy"))
    heard: list[str] = []
    gw.ctx.on_hold = heard.append
    held_clients(gw, 2)
    busy = gw.client()
    busy.send(b"GET /api/predict/busy/x HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert heard == ["svc", "svc"]
    # The counters the gateway sends: held requests are not in flight to a replica; arrivals
    # count every request received (answered or not).
    assert samples(gw.metrics) == {
        "svc": ServiceSample(arrivals=2, in_flight=0, held=2),
        "busy": ServiceSample(arrivals=1, in_flight=1, held=0),
    }
    gw.replicas["a"].answer(OK)
    assert samples(gw.metrics)["busy"] == ServiceSample(arrivals=1, in_flight=0, held=0)


def test_hold_metrics_are_on_the_metrics_page() -> None:
    gw = Gateway(route(max_held=1, hold_timeout_s=60.0))
    held_clients(gw, 2)  # one held, one refused
    gw.loop.advance(0.3)
    gw.set_routes(route("a", max_held=1, hold_timeout_s=60.0))
    gw.loop.run_ready()
    text = gw.metrics.render().decode()
    for line in [
        'openeas_gateway_held_requests{service="svc"} 0',
        'openeas_gateway_held_requests_total{service="svc"} 1',
        'openeas_gateway_held_requests_released_total{service="svc"} 1',
        'openeas_gateway_held_requests_timed_out_total{service="svc"} 0',
        'openeas_gateway_held_requests_abandoned_total{service="svc"} 0',
        'openeas_gateway_hold_overflow_total{service="svc"} 1',
        'openeas_gateway_hold_wait_seconds_bucket{service="svc",le="0.25"} 0',  # waited 0.3 s
        'openeas_gateway_hold_wait_seconds_bucket{service="svc",le="0.5"} 1',
        'openeas_gateway_hold_wait_seconds_count{service="svc"} 1',
    ]:
        assert line in text.splitlines(), line


def test_a_stopping_gateway_answers_its_held_requests_with_retry_after() -> None:
    gw = Gateway(route(hold_timeout_s=60.0))
    (client,) = held_clients(gw, 1)
    gw.ctx.holds["svc"].fail_all(gateway_stopping("svc"))  # what Gateway.stop does after its grace
    message = "service 'svc' has no ready replica and this gateway is stopping; retry"
    expected = error(503, "gateway_stopping", message, close=True)
    assert client.received() == expected.replace(b"\r\n\r\n", b"\r\nRetry-After: 1\r\n\r\n", 1)
    assert outcomes(gw) == {"ended": 1}

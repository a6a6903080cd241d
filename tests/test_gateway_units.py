"""Pure parts of the gateway: auth, path resolution, balancers, metrics, retry decisions, local
answers, and the one kernel fact the resend rule relies on (real loopback sockets, no loop)."""

from __future__ import annotations

import hashlib
import socket
import sys
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import pytest

from openeas.gateway import (
    AuthError,
    Credentials,
    GatewayMetrics,
    UnknownBalancerError,
    authorize,
    balancer_names,
    create_balancer,
    eas_signature,
    split_predict_path,
    verify_content_md5,
)
from openeas.gateway.errors import GatewayError
from openeas.gateway.http.local import local_answer
from openeas.gateway.http.pool import UpstreamConnection, UpstreamState
from openeas.gateway.http.retry import AfterLoss, NextAttempt, after_loss, next_attempt
from openeas.gateway.routing.routes import build_routes
from openeas.kernel.routing import Route, RoutingTable, Upstream

NOW = 1_800_000_000.0
TOKEN = "s3cret-token"
BODY = b'{"x": 1}'
MD5 = hashlib.md5(BODY).hexdigest().encode()
CTYPE = b"application/json"


def date(offset_s: float) -> bytes:
    return formatdate(NOW + offset_s, usegmt=True).encode()


def signed(token: str = TOKEN, offset_s: float = 0, method: bytes = b"POST", service: str = "svc") -> bytes:
    sig = eas_signature(
        token.encode(), method, MD5, CTYPE, date(offset_s), f"/api/predict/{service}".encode()
    )
    return b"EAS " + sig


def test_signature_matches_the_eas_sdk() -> None:
    from eas_prediction import PredictClient

    client = PredictClient("127.0.0.1:1", "svc")
    client.set_token(TOKEN)
    client.set_content_type("application/json")
    h = client.generate_singaure(bytearray(BODY))
    expected = eas_signature(
        TOKEN.encode(), b"POST", h["Content-MD5"].encode(), CTYPE, h["Date"].encode(), b"/api/predict/svc"
    )
    assert h["Authorization"].encode() == b"EAS " + expected
    assert h["Content-MD5"].encode() == MD5  # the SDK sends the hex md5 of the body


@pytest.mark.parametrize(
    ("header", "headers_date", "expect"),
    [
        pytest.param(TOKEN.encode(), None, None, id="plain-token"),
        pytest.param(b"Bearer " + TOKEN.encode(), None, None, id="bearer"),
        pytest.param(b"bearer " + TOKEN.encode(), None, None, id="bearer-lowercase"),
        pytest.param(signed(), date(0), MD5, id="eas-signed"),
        pytest.param(signed(offset_s=-600), date(-600), MD5, id="eas-signed-10min-old"),
        pytest.param(None, None, "missing_token", id="missing"),
        pytest.param(b"", None, "missing_token", id="empty"),
        pytest.param(b"wrong", None, "invalid_token", id="wrong-plain"),
        pytest.param(b"Bearer wrong", None, "invalid_token", id="wrong-bearer"),
        pytest.param(signed(token="other"), date(0), "invalid_signature", id="eas-wrong-token"),
        pytest.param(signed(service="other"), date(0), "invalid_signature", id="eas-other-service"),
        pytest.param(signed(), None, "missing_date", id="eas-no-date"),
        pytest.param(signed(offset_s=-901), date(-901), "stale_signature_date", id="eas-stale-901s"),
        pytest.param(signed(offset_s=+1200), date(1200), "stale_signature_date", id="eas-future-20min"),
        pytest.param(b"EAS " + b"x" * 28, b"not a date", "invalid_signature", id="eas-garbage"),
    ],
)
def test_authorize(header: bytes | None, headers_date: bytes | None, expect: bytes | str | None) -> None:
    kwargs = dict(method=b"POST", content_md5=MD5, content_type=CTYPE, date=headers_date, now=NOW)
    if isinstance(expect, str):
        with pytest.raises(AuthError) as e:
            authorize(Credentials.from_token(TOKEN), "svc", header, **kwargs)  # type: ignore[arg-type]
        assert e.value.code == expect
        assert e.value.status == 401
        assert TOKEN not in e.value.message
    else:
        assert authorize(Credentials.from_token(TOKEN), "svc", header, **kwargs) == expect  # type: ignore[arg-type]


def test_stale_message_says_how_far_and_the_limit() -> None:
    with pytest.raises(AuthError) as e:
        authorize(
            Credentials.from_token(TOKEN),
            "svc",
            signed(offset_s=-3600),
            content_md5=MD5,
            content_type=CTYPE,
            date=date(-3600),
            now=NOW,
            max_skew_s=900,
        )
    assert "3600 s behind" in e.value.message and "allowed: 900 s" in e.value.message


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        pytest.param(MD5, True, id="hex"),
        pytest.param(MD5.upper(), True, id="hex-upper"),
        pytest.param(b"WBEAr4fSrx7RwwBNk6Ly2A==", False, id="base64-of-other"),
        pytest.param(__import__("base64").b64encode(hashlib.md5(BODY).digest()), True, id="base64-rfc1864"),
        pytest.param(hashlib.md5(b"tampered").hexdigest().encode(), False, id="mismatch"),
    ],
)
def test_verify_content_md5(header: bytes, ok: bool) -> None:
    if ok:
        verify_content_md5(header, BODY)
    else:
        with pytest.raises(AuthError, match="Content-MD5"):
            verify_content_md5(header, BODY)


@pytest.mark.parametrize(
    ("url", "expect"),
    [
        pytest.param(b"/api/predict/svc", ("svc", b"/"), id="bare"),
        pytest.param(b"/api/predict/svc/", ("svc", b"/"), id="trailing-slash"),
        pytest.param(
            b"/api/predict/svc/v1/chat/completions", ("svc", b"/v1/chat/completions"), id="sub-path"
        ),
        pytest.param(b"/api/predict/svc?a=1&b=2", ("svc", b"/?a=1&b=2"), id="query"),
        pytest.param(b"/api/predict/svc/x?a=/b", ("svc", b"/x?a=/b"), id="sub-path-and-query"),
        pytest.param(b"/api/predict/g.svc/x", ("g.svc", b"/x"), id="dotted-name-kept-whole"),
        pytest.param(b"/api/predict/", None, id="no-service"),
        pytest.param(b"/api/predict", None, id="prefix-only"),
        pytest.param(b"/metrics", None, id="other-path"),
    ],
)
def test_split_predict_path(url: bytes, expect: tuple[str, bytes] | None) -> None:
    assert split_predict_path(url) == expect


@dataclass
class FakeUpstream:
    outstanding: int = 0
    cooldown_until: float = 0.0

    def __hash__(self) -> int:
        return id(self)


def test_unknown_balancer_is_a_clear_error() -> None:
    with pytest.raises(
        UnknownBalancerError, match=r"unknown balancer 'fastest'; known: least-kv, least-request, least-waiting, power-of-two"
    ):
        create_balancer("fastest")
    assert {"least-request", "round-robin"} <= set(balancer_names())


@pytest.mark.parametrize(
    ("loads", "cooldown", "exclude", "expect"),
    [
        pytest.param([3, 1, 2], [], [], {1}, id="fewest-outstanding"),
        pytest.param([0, 0, 5], [], [], {0, 1}, id="tie-random-between-idle"),
        pytest.param([0, 4, 5], [0], [], {1}, id="cooling-down-skipped"),
        pytest.param([0, 4, 5], [0, 1, 2], [], {0}, id="all-cooling-still-picks"),
        pytest.param([0, 4, 5], [], [0], {1}, id="excluded-skipped"),
        pytest.param([0, 4], [], [0, 1], {-1}, id="all-excluded"),
        pytest.param([7], [], [], {0}, id="single"),
        pytest.param([7], [], [0], {-1}, id="single-excluded"),
    ],
)
def test_least_request(loads: list[int], cooldown: list[int], exclude: list[int], expect: set[int]) -> None:
    ups = [FakeUpstream(n, 10.0 if i in cooldown else 0.0) for i, n in enumerate(loads)]
    lb = create_balancer("least-request")
    picks = {lb.pick(ups, 5.0, [ups[i] for i in exclude]) for _ in range(200)}
    assert picks == expect  # with 200 draws, a fair tie-break hits both idle replicas (miss chance 2^-199)


def test_round_robin_cycles_and_skips_cooling() -> None:
    ups = [FakeUpstream(), FakeUpstream(cooldown_until=10.0), FakeUpstream()]
    lb = create_balancer("round-robin")
    assert [lb.pick(ups, 5.0) for _ in range(4)] == [0, 2, 0, 2]


def test_metrics_snapshot_and_render() -> None:
    m = GatewayMetrics()
    s = m.service("svc")
    for status, secs in [(200, 0.0004), (200, 0.003), (503, 0.2)]:
        s.in_flight += 1
        s.finish(status, secs)
    s.in_flight += 1  # one still running
    m.unrouted(404)
    snap = m.snapshot()["svc"]
    assert (snap.requests_total, snap.errors_total, snap.in_flight) == (3, 1, 1)
    assert snap.by_code == {200: 2, 503: 1}
    text = m.render().decode()
    assert 'openeas_gateway_requests_total{service="svc",code="200"} 2' in text
    assert 'openeas_gateway_in_flight_requests{service="svc"} 1' in text
    # buckets are cumulative: 0.0004 <= 0.001; 0.003 <= 0.005; 0.2 <= 0.25
    assert 'openeas_gateway_request_duration_seconds_bucket{service="svc",le="0.001"} 1' in text
    assert 'openeas_gateway_request_duration_seconds_bucket{service="svc",le="0.005"} 2' in text
    assert 'openeas_gateway_request_duration_seconds_bucket{service="svc",le="+Inf"} 3' in text
    assert 'openeas_gateway_unrouted_requests_total{code="404"} 1' in text


@pytest.mark.parametrize(
    ("answer_started", "resendable", "resend_unanswered", "acknowledged", "expect"),
    [
        pytest.param(True, True, True, True, AfterLoss.CUT, id="answer-started-cut"),
        pytest.param(True, True, False, False, AfterLoss.CUT, id="answer-started-cut-even-unacked"),
        pytest.param(False, False, True, None, AfterLoss.FAIL, id="too-large-to-resend"),
        pytest.param(False, True, True, None, AfterLoss.RESEND, id="resend-on"),
        pytest.param(False, True, True, True, AfterLoss.RESEND, id="resend-on-acked"),
        pytest.param(False, True, False, True, AfterLoss.FAIL, id="resend-off-acked"),
        pytest.param(False, True, False, None, AfterLoss.FAIL, id="resend-off-ack-unknown"),
        pytest.param(False, True, False, False, AfterLoss.RESEND, id="resend-off-never-acked"),
        pytest.param(False, False, False, False, AfterLoss.FAIL, id="never-acked-but-too-large"),
    ],
)
def test_after_loss(
    answer_started: bool,
    resendable: bool,
    resend_unanswered: bool,
    acknowledged: bool | None,
    expect: AfterLoss,
) -> None:
    got = after_loss(
        answer_started=answer_started,
        resendable=resendable,
        resend_unanswered=resend_unanswered,
        acknowledged=acknowledged,
    )
    assert got is expect


@pytest.mark.parametrize(
    ("found_other", "stale", "fresh_used", "connect_failed", "expect"),
    [
        pytest.param(True, True, False, False, NextAttempt.OTHER, id="other-replica-first"),
        pytest.param(True, False, False, True, NextAttempt.OTHER, id="other-after-connect-failure"),
        pytest.param(False, True, False, False, NextAttempt.FRESH_SAME, id="stale-pooled-fresh-retry"),
        pytest.param(False, True, True, False, NextAttempt.FAIL, id="fresh-retry-spent"),
        pytest.param(False, False, False, False, NextAttempt.FAIL, id="fresh-connection-lost"),
        pytest.param(False, False, False, True, NextAttempt.HOLD, id="nothing-reachable-hold"),
        pytest.param(False, True, True, True, NextAttempt.HOLD, id="connect-failed-after-fresh-retry"),
    ],
)
def test_next_attempt(
    found_other: bool, stale: bool, fresh_used: bool, connect_failed: bool, expect: NextAttempt
) -> None:
    got = next_attempt(
        found_other=found_other, stale=stale, fresh_used=fresh_used, connect_failed=connect_failed
    )
    assert got is expect


@pytest.mark.parametrize("resend", [True, False], ids=["resend-on", "resend-off"])
def test_route_state_carries_resend_unanswered(resend: bool) -> None:
    r = Route("svc", None, (Upstream("a", "127.0.0.1", 1),), resend_unanswered=resend)
    routes = build_routes(RoutingTable(1, {"svc": r}), {}, {}, GatewayMetrics())
    assert routes["svc"].resend_unanswered is resend


@pytest.mark.parametrize(
    ("method", "path", "starts"),
    [
        pytest.param(
            b"GET", b"/healthz", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n", id="healthz"
        ),
        pytest.param(
            b"GET",
            b"/metrics",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n",
            id="metrics",
        ),
        pytest.param(b"POST", b"/metrics", None, id="post-metrics-404"),
        pytest.param(b"GET", b"/v1/models", None, id="outside-predict-404"),
    ],
)
def test_local_answer(method: bytes, path: bytes, starts: bytes | None) -> None:
    if starts is not None:
        assert local_answer(method, path, GatewayMetrics(), close=False).startswith(starts)
        return
    with pytest.raises(GatewayError) as e:
        local_answer(method, path, GatewayMetrics(), close=False)
    assert (e.value.status, e.value.code) == (404, "not_found")
    assert e.value.message == f"no route for {path.decode()!r}: use /api/predict/<service>[/path]"


class _SocketOnly:
    """A transport stand-in that only lends its socket (what `request_acknowledged` reads)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tcpi_bytes_acked is Linux's")
@pytest.mark.parametrize(
    ("replica_reads_it", "acknowledged"),
    [
        pytest.param(False, False, id="replica-closed-idle-connection-first"),
        pytest.param(True, True, id="replica-read-the-request-then-died"),
    ],
)
def test_tcp_acknowledgement_tells_a_stale_connection_from_a_read_request(
    replica_reads_it: bool, acknowledged: bool
) -> None:
    earlier = b"GET /first HTTP/1.1\r\n\r\n"
    request = b"POST /pay HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
    with socket.create_server(("127.0.0.1", 0)) as listener:
        gateway_side = socket.create_connection(listener.getsockname())
        replica_side, _ = listener.accept()
        with gateway_side, replica_side:
            gateway_side.settimeout(5)
            gateway_side.sendall(earlier)  # one request answered: every byte of it acknowledged
            assert replica_side.recv(100) == earlier
            replica_side.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
            gateway_side.recv(100)
            if replica_reads_it:
                gateway_side.sendall(request)
                assert replica_side.recv(100) == request
                replica_side.close()
            else:
                replica_side.close()  # keep-alive timeout: closed while idle, before our write
                gateway_side.sendall(request)
            try:
                assert gateway_side.recv(100) == b""  # the replica's FIN
            except ConnectionResetError:
                pass
            conn = UpstreamConnection(UpstreamState(Upstream("a", "127.0.0.1", 1)))
            conn.transport = _SocketOnly(gateway_side)  # type: ignore[assignment]
            conn.earlier_request_bytes = len(earlier)
            assert conn.request_acknowledged() is acknowledged


@pytest.mark.parametrize(
    ("attr", "want"),
    [
        # Made on first use (a whole table builds thousands of states), then kept as a plain slot.
        pytest.param("name", "r-1 (127.0.0.1:9)", id="name-made-on-first-use"),
        pytest.param("no_such_attribute", None, id="other-attributes-still-missing"),
    ],
)
def test_upstream_state_name(attr: str, want: str | None) -> None:
    st = UpstreamState(Upstream("r-1", "127.0.0.1", 9))
    if want is None:
        with pytest.raises(AttributeError):
            getattr(st, attr)
        return
    assert getattr(st, attr) == want
    assert getattr(st, attr) is getattr(st, attr)  # set once


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(("r-1", "127.0.0.1", 9), id="plain-tuple-key"),
        pytest.param(Upstream("r-1", "127.0.0.1", 9), id="upstream-key"),
    ],
)
def test_build_routes_finds_a_replica_by_its_tuple(key: tuple[str, str, int]) -> None:
    """An Upstream is its own pool key: a state pooled under the plain (replica_id, host, port)
    tuple is the one a route with that replica gets (its connections survive the swap)."""
    kept = UpstreamState(Upstream("r-1", "127.0.0.1", 9))
    pool = {key: kept}
    route = Route("svc", None, (Upstream(replica_id="r-1", host="127.0.0.1", port=9),))
    routes = build_routes(RoutingTable(1, {"svc": route}), {}, pool, GatewayMetrics())
    assert routes["svc"].upstreams == [kept] and list(pool.values()) == [kept]

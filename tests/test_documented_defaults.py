"""Documented defaults, each held by its documented number and by what it does (issue 20 §2).

Every expectation below is the literal number the docs give (docs/scale-from-zero.md: 100 held
requests, 120 s; docs/eas-specs.md and RouteSettings: 64 MiB bodies; gateway/http/retry.py: 1 MiB kept
to resend; docs/autoscaling.md: 300 s down window, ±10% tolerance), never the code's constant, so
changing a default in the code fails here until the docs and this file change with it.

The gateway parts run the real proxy on the fake loop and replicas of tests/test_gateway_protocol.py;
the autoscaler parts run decide() with a fake clock.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from typer.testing import CliRunner

from openeas.autoscaler import DecisionContext, Observation, PolicyState, Traffic, decide
from openeas.cli.main import app
from openeas.cli.server import server
from openeas.kernel.routing import Route, RouteSettings, Upstream
from openeas.runtime.base import REPLICA_ADDRESS_MODES, replica_address
from openeas.spec.autoscaling import AutoscalingPolicy, MetricTarget
from tests.fakeloop import GET, OK, Gateway, error

MIB = 1024 * 1024
HELD = 100  # docs/scale-from-zero.md: requests held per service
HOLD_S = 120.0  # docs/scale-from-zero.md: seconds a request is held
BODY_LIMIT = 64 * MIB  # docs: largest request body, 413 above
RESEND_CAP = 1 * MIB  # gateway/http/retry.py: request bytes kept to resend on another replica
DOWN_WINDOW_S = 300.0  # docs/autoscaling.md: scale_down_stabilization_window
TOLERANCE = 0.10  # docs/autoscaling.md: ±10%
REPLICA_ADDRESS = "loopback"  # docs/cluster.md: --replica-address, replicas reached on 127.0.0.1


def default_route(*replicas: str, **kw: Any) -> Route:
    """A route with nothing set but its replicas: every other field is the default."""
    ups = tuple(Upstream(replica_id=r, host="10.0.0.1", port=8000 + i) for i, r in enumerate(replicas))
    return Route(service="svc", token=None, upstreams=ups, balancer="round-robin", **kw)


def test_route_settings_defaults_are_the_documented_numbers() -> None:
    s = RouteSettings.from_dict({})
    assert (s.max_held, s.hold_timeout_s, s.max_body_bytes) == (HELD, HOLD_S, BODY_LIMIT)
    r = default_route()
    assert (r.max_held, r.hold_timeout_s, r.max_body_bytes) == (HELD, HOLD_S, BODY_LIMIT)


# ---- the hold queue: 100 requests, 120 s --------------------------------------------------------


def test_the_hold_queue_holds_100_and_answers_the_101st_429() -> None:
    gw = Gateway(default_route())
    held = [gw.client() for _ in range(HELD)]
    for c in held:
        c.send(GET)
    assert all(c.received() == b"" for c in held)
    extra = gw.client()
    extra.send(GET)
    message = (
        "service 'svc' has no ready replica and already holds 100 requests waiting for one "
        "(max_queue_size); retry after 1 s"
    )
    assert extra.received() == error(429, "hold_queue_full", message).replace(
        b"\r\n\r\n", b"\r\nRetry-After: 1\r\n\r\n", 1
    )
    assert gw.codes() == {429: 1}


def test_a_held_request_waits_120_s_then_gets_503() -> None:
    gw = Gateway(default_route())
    client = gw.client()
    client.send(GET)
    gw.loop.advance(HOLD_S - 0.1)
    assert client.received() == b""  # still held at 119.9 s
    gw.loop.advance(0.2)
    message = "service 'svc' has no ready replica; none became ready within 120 s (hold_timeout_ms)"
    assert client.received() == error(503, "no_ready_replica", message)


# ---- the body limit: 64 MiB ---------------------------------------------------------------------


def post_head(length: int) -> bytes:
    return b"POST /api/predict/svc/run HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % length


@pytest.mark.parametrize(
    ("length", "refused"),
    [
        pytest.param(BODY_LIMIT, False, id="64MiB-goes-through"),
        pytest.param(BODY_LIMIT + 1, True, id="64MiB-plus-1-is-413"),
    ],
)
def test_the_body_limit_is_64_mib(length: int, refused: bool) -> None:
    gw = Gateway(default_route("a"))
    a = gw.replicas["a"]
    client = gw.client()
    client.send(post_head(length))
    if refused:
        answer = client.received()
        assert answer.startswith(b"HTTP/1.1 413 "), answer
        assert b"request body exceeds 67108864 bytes" in answer
        assert gw.codes() == {413: 1}
    else:
        assert a.received().startswith(b"POST /run HTTP/1.1")  # forwarded, the body follows
        assert client.received() == b""


# ---- the resend buffer: 1 MiB -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "resent"),
    [
        pytest.param(RESEND_CAP, True, id="1MiB-request-is-resent"),
        pytest.param(RESEND_CAP + 1, False, id="1MiB-plus-1-is-not"),
    ],
)
def test_requests_up_to_1_mib_are_resent_when_a_replica_closes_unanswered(total: int, resent: bool) -> None:
    gw = Gateway(default_route("a", "b"))
    a, b = gw.replicas["a"], gw.replicas["b"]
    # The cap counts what the replica is sent: the rewritten head (path /run) plus the body.
    upstream_head = len(post_head(0).replace(b"/api/predict/svc/run", b"/run")) + 6  # 7 digits, not 1
    body = b"x" * (total - upstream_head)
    client = gw.client()
    client.send(post_head(len(body)))
    client.send(body)
    assert len(a.received()) == total
    a.close()  # closed after reading it all, before any byte of answer
    if resent:
        assert len(b.received()) == total
        b.answer(OK)
        assert client.received() == OK
    else:
        assert b.conns == []
        assert client.received().startswith(b"HTTP/1.1 502 ")


# ---- the autoscaler: 300 s down window, ±10% tolerance ------------------------------------------

CONC = MetricTarget(kind="concurrent_requests", target=2)
BUSY = Traffic(arrival_rate=1.0, in_flight=1.0, held=0)


def default_policy(**kw: Any) -> AutoscalingPolicy:
    return AutoscalingPolicy.model_validate(
        {"source": "autoscaling", "metrics": (CONC,), "min_replicas": 1, "max_replicas": 10, **kw}
    )


def step(
    policy: AutoscalingPolicy, now: float, total: float, current: int, state: PolicyState
) -> tuple[int, PolicyState]:
    ctx = DecisionContext(
        policy=policy, now=now, wall=1_704_276_000.0 + now, current=current, ready=current,
        observations={"concurrent_requests": Observation(total, None)}, traffic=BUSY, state=state,
    )  # fmt: skip
    d, state = decide(ctx)
    return d.desired, state


def test_policy_defaults_are_the_documented_numbers() -> None:
    p = default_policy()
    assert (p.scale_down_window_s, p.tolerance) == (DOWN_WINDOW_S, TOLERANCE)


def test_the_default_down_window_keeps_replicas_300_s() -> None:
    policy = default_policy()
    current, state = step(policy, 0.0, 8.0, 1, PolicyState())  # ceil(8/2) = 4 at once (0 s up window)
    assert current == 4
    # from t=1 the load is 0.5 in flight (recommendation ceil(0.25) = 1): the 4 of t=0 is the
    # highest of the last 300 s until t=300, then it leaves the window
    counts = {}
    for t in range(1, 302):
        current, state = step(policy, float(t), 0.5, current, state)
        counts[t] = current
    assert counts[299] == 4 and counts[300] == 4
    assert counts[301] == 1


@pytest.mark.parametrize(
    ("total", "desired"),
    [
        # 2 replicas of target 2 take 4 in flight: ±10% is 3.6 to 4.4 → stay 2
        pytest.param(4.3, 2, id="7.5%-over-stays"),
        pytest.param(4.5, 3, id="12.5%-over-scales-to-ceil(4.5/2)=3"),
        pytest.param(3.7, 2, id="7.5%-under-stays"),
        pytest.param(3.5, 2, id="12.5%-under-ceil(3.5/2)=2"),
        pytest.param(1.5, 1, id="far-under-ceil(1.5/2)=1"),
    ],
)
def test_the_default_tolerance_is_10_percent(total: float, desired: int) -> None:
    policy = default_policy(scale_down_window_s=0.0)  # only the tolerance under test
    got, _ = step(policy, 0.0, total, 2, PolicyState())
    assert got == desired


def test_replicas_are_reached_on_loopback_unless_told_otherwise() -> None:
    assert inspect.signature(server).parameters["replica_address"].default == REPLICA_ADDRESS
    assert REPLICA_ADDRESS_MODES[0] == REPLICA_ADDRESS  # the Ray runtime's and the env's default
    assert replica_address(REPLICA_ADDRESS, "192.0.2.7") == "127.0.0.1"  # whatever Ray reports


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param(["--replica-address", "lan"], "expected one of loopback, node, got 'lan'", id="unknown"),
        pytest.param(["--replica-address", "node"], "'node' needs --runtime ray", id="node-without-ray"),
    ],
)
def test_a_bad_replica_address_is_refused_before_anything_starts(argv: list[str], says: str) -> None:
    result = CliRunner().invoke(app, ["server", *argv])
    assert result.exit_code == 2
    words = [w for w in result.output.split() if w != "│"]  # the error box wraps the message
    assert says in " ".join(words), result.output

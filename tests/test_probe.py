"""Readiness probes: the pure tracker against a fake clock (plain timestamps), and probe_once
against real sockets (a real aiohttp server, a server that hangs up, a closed port)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from openeas.controller.probe import ProbeTracker, Transition, base_url, probe_once, probe_port
from openeas.spec.models import HealthCheck, HttpGet

# -- ProbeTracker: when to probe ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial_delay_s", "period_s", "last_probe_at", "now", "due"),
    [
        # started_at is 100.0 in every row.
        pytest.param(0.0, 1.0, None, 100.0, True, id="no-delay-first-probe-at-start"),
        pytest.param(5.0, 1.0, None, 104.9, False, id="inside-initial-delay"),
        pytest.param(5.0, 1.0, None, 105.0, True, id="initial-delay-just-over"),
        pytest.param(0.0, 2.0, 110.0, 111.9, False, id="inside-period"),
        pytest.param(0.0, 2.0, 110.0, 112.0, True, id="period-elapsed"),
        # A long pause (e.g. a stalled loop) makes one probe due, not a backlog of them.
        pytest.param(0.0, 1.0, 110.0, 500.0, True, id="long-gap-one-probe-due"),
        # A probe recorded during the initial delay does not pull the next one earlier than it.
        pytest.param(10.0, 1.0, 101.0, 102.0, False, id="delay-still-binds-after-early-probe"),
    ],
)
def test_due(
    initial_delay_s: float, period_s: float, last_probe_at: float | None, now: float, due: bool
) -> None:
    t = ProbeTracker(
        started_at=100.0, initial_delay_s=initial_delay_s, period_s=period_s, last_probe_at=last_probe_at
    )
    assert t.due(now) is due


def test_due_follows_the_fake_clock_not_calls() -> None:
    # Asking many times at the same instant never makes a probe due: delays compare timestamps.
    t = ProbeTracker(started_at=0.0, initial_delay_s=3.0, period_s=1.0)
    assert [t.due(1.0) for _ in range(100)] == [False] * 100
    assert t.next_due() == 3.0
    t.record(False, now=3.0)
    assert t.next_due() == 4.0  # 3.0 + period 1.0


# -- ProbeTracker: what results mean -------------------------------------------------------------------

R = Transition.BECAME_READY
U = Transition.BECAME_UNREADY


@dataclass(frozen=True)
class Case:
    threshold: int
    results: str  # one char per probe, 1 s apart: "+" ok, "-" failed
    transitions: list[Transition | None]
    ready: bool
    failures: int


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(Case(3, "", [], False, 0), id="not-ready-before-any-probe"),
        pytest.param(Case(3, "+", [R], True, 0), id="one-success-makes-ready"),
        pytest.param(Case(3, "----", [None] * 4, False, 4), id="failures-before-ready-only-count"),
        pytest.param(Case(3, "--+", [None, None, R], True, 0), id="ready-after-early-failures"),
        pytest.param(Case(3, "+--", [R, None, None], True, 2), id="below-threshold-stays-ready"),
        pytest.param(Case(3, "+---", [R, None, None, U], False, 3), id="threshold-makes-unready"),
        pytest.param(
            Case(3, "+--+--", [R, None, None, None, None, None], True, 2), id="success-resets-count"
        ),
        pytest.param(Case(1, "+-", [R, U], False, 1), id="threshold-one"),
        pytest.param(Case(2, "+--+", [R, None, U, R], True, 0), id="recovers-after-unready"),
        pytest.param(Case(2, "+---", [R, None, U, None], False, 3), id="unready-fires-once"),
        pytest.param(Case(3, "++", [R, None], True, 0), id="ready-fires-once"),
    ],
)
def test_record(case: Case) -> None:
    t = ProbeTracker(started_at=0.0, failure_threshold=case.threshold)
    got = [t.record(c == "+", now=float(i)) for i, c in enumerate(case.results)]
    assert got == case.transitions
    assert t.ready is case.ready
    assert t.consecutive_failures == case.failures


@pytest.mark.parametrize(
    ("results", "now", "expired"),
    [
        # started_at 0, startup timeout 60 s.
        pytest.param("", 59.9, False, id="before-timeout"),
        pytest.param("", 60.0, True, id="at-timeout"),
        pytest.param("---", 61.0, True, id="failing-past-timeout"),
        pytest.param("-+", 61.0, False, id="was-ready-once"),
        pytest.param("+---", 900.0, False, id="unready-later-is-not-a-startup-problem"),
    ],
)
def test_startup_expired(results: str, now: float, expired: bool) -> None:
    t = ProbeTracker(started_at=0.0, failure_threshold=1, startup_timeout_s=60.0)
    for i, c in enumerate(results):
        t.record(c == "+", now=float(i))
    assert t.startup_expired(now) is expired


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        pytest.param(None, (0.0, 1.0, 3, 600.0), id="no-check-uses-defaults"),
        pytest.param(
            HealthCheck(
                initial_delay_seconds=5, period_seconds=2.5, failure_threshold=7, startup_timeout_seconds=30
            ),
            (5.0, 2.5, 7, 30.0),
            id="from-spec",
        ),
    ],
)
def test_for_check(check: HealthCheck | None, expected: tuple[float, float, int, float]) -> None:
    delay, period, threshold, timeout = expected
    t = ProbeTracker.for_check(check, started_at=42.0)
    assert (t.initial_delay_s, t.period_s, t.failure_threshold, t.startup_timeout_s) == expected
    # ... and they act from the start time: the first probe after the initial delay, the next one
    # a period later, unready after `threshold` failures, the startup timeout from the start.
    assert t.next_due() == 42.0 + delay
    assert t.record(True, now=42.0 + delay) is Transition.BECAME_READY
    assert t.next_due() == 42.0 + delay + period
    got = [t.record(False, now=43.0 + delay + i * period) for i in range(threshold)]
    assert got == [None] * (threshold - 1) + [Transition.BECAME_UNREADY]
    fresh = ProbeTracker.for_check(check, started_at=42.0)
    assert (fresh.startup_expired(42.0 + timeout - 0.01), fresh.startup_expired(42.0 + timeout)) == (False, True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"period_s": 0.0}, "period_s", id="zero-period"),
        pytest.param({"failure_threshold": 0}, "failure_threshold", id="zero-threshold"),
        pytest.param({"initial_delay_s": -1.0}, "initial_delay_s", id="negative-delay"),
    ],
)
def test_tracker_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProbeTracker(started_at=0.0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        pytest.param(None, 31000, id="tcp-follows-rewrite"),
        pytest.param(HealthCheck(http_get=HttpGet(path="/h")), 31000, id="no-port-follows-rewrite"),
        pytest.param(HealthCheck(http_get=HttpGet(path="/h", port=8000)), 31000, id="container-port-follows"),
        pytest.param(HealthCheck(http_get=HttpGet(path="/h", port=9090)), 9090, id="separate-health-port"),
    ],
)
def test_probe_port(check: HealthCheck | None, expected: int) -> None:
    assert probe_port(check, container_port=8000, replica_port=31000) == expected


@pytest.mark.parametrize(
    ("host", "url"),
    [
        pytest.param("127.0.0.1", "http://127.0.0.1:80", id="ipv4"),
        pytest.param("::1", "http://[::1]:80", id="ipv6"),
        pytest.param("localhost", "http://localhost:80", id="name"),
    ],
)
def test_base_url(host: str, url: str) -> None:
    assert base_url(host, 80) == url


# -- probe_once against real sockets -------------------------------------------------------------------


async def _status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.match_info["code"]))


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/elsewhere")  # not followed: a 3xx is itself a success


RELEASE = web.AppKey("release", asyncio.Event)


async def _slow(request: web.Request) -> web.Response:
    # Answers only when the fixture tears down (or after 5 s), so teardown does not wait.
    try:
        await asyncio.wait_for(request.app[RELEASE].wait(), 5)
    except TimeoutError:
        pass
    return web.Response()


@pytest.fixture
async def http_port() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/status/{code}", _status)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/slow", _slow)
    app[RELEASE] = asyncio.Event()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    app[RELEASE].set()
    await runner.cleanup()


def _reserved_port() -> socket.socket:
    """A bound socket that does not listen: connections to its port are refused, and no other
    program can take the port while the test holds it (SO_REUSEADDR lets only a later listener
    of this test share it)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


@pytest.fixture
def closed_port() -> Iterator[int]:
    with _reserved_port() as s:
        yield int(s.getsockname()[1])


@pytest.fixture
async def hangup_port() -> AsyncIterator[int]:
    """Accepts a connection and closes it at once, without answering."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


def _http(path: str, timeout: float = 2.0) -> HealthCheck:
    return HealthCheck(http_get=HttpGet(path=path), timeout_seconds=timeout)


@pytest.mark.parametrize(
    ("path", "ok", "detail"),
    [
        pytest.param("/status/200", True, "HTTP 200 from /status/200", id="200"),
        pytest.param("/status/204", True, "HTTP 204 from /status/204", id="204"),
        pytest.param("/redirect", True, "HTTP 302 from /redirect", id="3xx-not-followed"),
        pytest.param("/status/404", False, "HTTP 404 from /status/404", id="404"),
        pytest.param("/status/503", False, "HTTP 503 from /status/503", id="503"),
        pytest.param("status/200", True, "HTTP 200 from /status/200", id="path-without-slash"),
    ],
)
async def test_http_probe_status(http_port: int, path: str, ok: bool, detail: str) -> None:
    result = await probe_once("127.0.0.1", http_port, _http(path))
    assert (result.ok, result.detail) == (ok, detail)


@pytest.mark.parametrize(
    ("check_timeout_s", "override_s", "expected_s"),
    [
        # /slow answers after 5 s: each probe must give up after the timeout that applies.
        pytest.param(2.0, 0.2, 0.2, id="argument-overrides-check"),
        pytest.param(0.1, None, 0.1, id="check-timeout"),
    ],
)
async def test_http_probe_gives_up_after_its_timeout(
    http_port: int, check_timeout_s: float, override_s: float | None, expected_s: float
) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    result = await probe_once("127.0.0.1", http_port, _http("/slow", timeout=check_timeout_s), timeout_s=override_s)
    took = loop.time() - t0
    assert not result.ok
    assert result.detail == f"no answer from /slow within {expected_s:g}s"
    assert expected_s <= took < expected_s + 0.5, took  # gave up on time, not at 2 s or 5 s


async def test_http_probe_with_a_shared_session(http_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        results = [
            await probe_once("127.0.0.1", http_port, _http("/status/200"), session=session) for _ in range(3)
        ]
    assert all(r.ok for r in results)


@pytest.mark.parametrize("kind", ["http", "tcp"])
async def test_probe_closed_port_is_connection_refused(closed_port: int, kind: str) -> None:
    check = _http("/health") if kind == "http" else None
    result = await probe_once("127.0.0.1", closed_port, check)
    assert not result.ok
    assert result.detail == f"connection refused by 127.0.0.1:{closed_port}"


async def test_http_probe_server_hangs_up(hangup_port: int) -> None:
    result = await probe_once("127.0.0.1", hangup_port, _http("/health"))
    assert not result.ok
    assert result.detail == "connection closed before /health answered"


@pytest.mark.parametrize(
    "check",
    [
        pytest.param(None, id="default-check"),
        pytest.param(HealthCheck(tcp_socket={}), id="explicit-tcp"),
    ],
)
async def test_tcp_probe_open_port(http_port: int, check: HealthCheck | None) -> None:
    # A TCP probe only connects: even a server with no "/" route passes.
    result = await probe_once("127.0.0.1", http_port, check)
    assert result.ok
    assert result.detail == f"TCP connect to 127.0.0.1:{http_port} ok"


async def test_tcp_probe_accepts_a_server_that_hangs_up(hangup_port: int) -> None:
    assert (await probe_once("127.0.0.1", hangup_port, None)).ok


async def test_tracker_drives_real_probes_to_ready() -> None:
    """The tracker and probe_once together, as a supervisor uses them, on a replica that
    starts listening only after a few failed probes (real sockets; the loop's clock)."""
    from openeas.testserver import running

    loop = asyncio.get_running_loop()
    with _reserved_port() as reserved:  # refuses connections until the server listens
        port = int(reserved.getsockname()[1])
        check = HealthCheck(http_get=HttpGet(path="/health"), period_seconds=0.05, timeout_seconds=1)
        tracker = ProbeTracker.for_check(check, started_at=loop.time())
        details = []
        for _ in range(3):  # nothing listens yet
            while not tracker.due(now := loop.time()):
                await asyncio.sleep(tracker.next_due() - now)
            r = await probe_once("127.0.0.1", port, check)
            details.append(r.detail)
            assert tracker.record(r.ok, now) is None
        async with running(port=port):
            reserved.close()
            while not tracker.due(now := loop.time()):
                await asyncio.sleep(tracker.next_due() - now)
            r = await probe_once("127.0.0.1", port, check)
            assert tracker.record(r.ok, now) is Transition.BECAME_READY
    assert details == [f"connection refused by 127.0.0.1:{port}"] * 3
    assert r.detail == "HTTP 200 from /health"

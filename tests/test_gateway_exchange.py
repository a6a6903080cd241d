"""The gateway's hot-path choices, without sockets (tests/fakeloop.py) or on plain files: the
listen backlog, and the immediate ACK on replica connections (TCP_QUICKACK)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from openeas.gateway.groups.group_table import GroupDef, GroupMember
from openeas.gateway.http import pool
from openeas.gateway.server import LISTEN_BACKLOG, listen_backlog
from tests.fakeloop import GET, OK, Gateway, route, transport

linux_only = pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")


def test_listen_backlog_default_is_4096() -> None:
    assert LISTEN_BACKLOG == 4096


@pytest.mark.parametrize(
    ("somaxconn", "expected"),
    [
        pytest.param("4096\n", 4096, id="kernel-allows-it"),
        pytest.param("511\n", 511, id="capped-by-somaxconn"),
        pytest.param("65535\n", 4096, id="kernel-allows-more"),
        pytest.param("not a number", 4096, id="unreadable-value"),
        pytest.param(None, 4096, id="no-such-file"),
        pytest.param("0\n", 4096, id="zero-ignored"),
    ],
)
def test_listen_backlog_is_capped_by_somaxconn(tmp_path: Path, somaxconn: str | None, expected: int) -> None:
    f = tmp_path / "somaxconn"
    if somaxconn is not None:
        f.write_text(somaxconn)
    assert listen_backlog(somaxconn_file=f) == expected


HEAD_ONLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


@linux_only
@pytest.mark.parametrize(
    ("reads", "quickacks", "answer"),
    [
        pytest.param([OK], 0, OK, id="whole-answer-in-one-read"),
        pytest.param([HEAD_ONLY, b"ok"], 1, OK, id="head-then-body-acked-at-once"),
        pytest.param([HEAD_ONLY, b"o", b"k"], 2, OK, id="each-incomplete-read-acked"),
        pytest.param([b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n\r\nok"], 1, OK, id="split-status-line"),
    ],
)
def test_replica_reads_that_leave_the_answer_open_are_acknowledged_at_once(
    reads: list[bytes], quickacks: int, answer: bytes
) -> None:
    gw = Gateway(route("a"))
    replica = gw.replicas["a"]
    replica.tcp = True
    client = gw.client()
    client.send(GET)
    for data in reads:
        replica.answer(data)
    assert client.received() == answer
    assert transport(replica.conns[0]).quickacks == quickacks


def test_no_quickack_without_a_tcp_socket() -> None:
    gw = Gateway(route("a"))
    replica = gw.replicas["a"]  # its connections offer no socket (a Unix socket, a test transport)
    client = gw.client()
    client.send(GET)
    replica.answer(HEAD_ONLY)
    replica.answer(b"ok")
    assert client.received() == OK
    conn = replica.conns[0]
    assert conn.sock is None and transport(conn).quickacks == 0


@linux_only
def test_a_socket_that_refuses_quickack_is_not_asked_again() -> None:
    gw = Gateway(route("a"))
    replica = gw.replicas["a"]
    replica.tcp = True
    client = gw.client()
    client.send(GET)
    conn = replica.conns[0]

    class Closed:
        def setsockopt(self, *args: object) -> None:
            raise OSError(9, "Bad file descriptor")

    conn.sock = Closed()  # type: ignore[assignment]
    replica.answer(HEAD_ONLY)
    assert conn.sock is None  # given up: the answer still flows
    replica.answer(b"ok")
    assert client.received() == OK
    assert pool._TCP_QUICKACK == socket.TCP_QUICKACK


# --- a group's request: the member answers, a candidate gets a copy ----------------------------

GROUP_GET = b"GET /api/predict/g/v1/x HTTP/1.1\r\nHost: gw\r\n\r\n"


def mirrored_gateway(mirror_percent: int) -> Gateway:
    group = GroupDef(
        name="g",
        token=None,
        members=(GroupMember("live", weight=100), GroupMember("cand", mirror_weight=mirror_percent)),
    )
    return Gateway(route("a", service="live"), route("b", service="cand"), groups={"g": group})


@pytest.mark.parametrize(
    ("mirror_percent", "copies"),
    [pytest.param(100, 1, id="every-request-copied"), pytest.param(0, 0, id="no-mirror")],
)
def test_group_request_goes_to_its_member_and_a_copy_to_the_candidate(mirror_percent: int, copies: int) -> None:
    gw = mirrored_gateway(mirror_percent)
    live, cand = gw.replicas["a"], gw.replicas["b"]
    client = gw.client()
    client.send(GROUP_GET)
    gw.loop.run_ready()
    assert live.received() == b"GET /v1/x HTTP/1.1\r\nHost: gw\r\n\r\n"
    assert len(cand.conns) == copies
    if copies:
        assert cand.received().startswith(b"GET /v1/x HTTP/1.1\r\n")
        assert b"X-OpenEAS-Mirror: 1\r\n" in cand.received()
        cand.answer(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom")
    assert client.received() == b""  # the copy's answer never reaches the client
    live.answer(OK)
    answer = client.received()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\nX-OpenEAS-Member: live\r\n") and answer.endswith(b"ok")
    assert gw.codes("live") == {200: 1}
    assert gw.in_flight("cand") == 0  # the copy is not the candidate's live traffic


def test_a_candidate_that_refuses_the_copy_fails_nothing_of_the_primary() -> None:
    gw = mirrored_gateway(100)
    live, cand = gw.replicas["a"], gw.replicas["b"]
    cand.refuse = True
    client = gw.client()
    client.send(GROUP_GET)
    gw.loop.run_ready()
    live.answer(OK)
    assert client.received().endswith(b"\r\n\r\nok")
    assert cand.conns == [] and gw.codes("live") == {200: 1}


# --- route timeouts: one lazy timer per connection ------------------------------------------------


@pytest.mark.parametrize(
    ("gaps", "expected", "timers"),
    [
        # 4 requests answered in 1.2 s: a timer at the first, one more when it fires at 1 s (for the
        # 4th request's due); one per request before.
        pytest.param([0.3, 0.3, 0.3, 0.3], [200, 200, 200, 200], 2, id="answered-in-time-share-a-timer"),
        # The last request is not answered: its own 1 s counts, from its head (not the first one's).
        pytest.param([0.6, 0.6, None], [200, 200, 408], 3, id="a-later-request-times-out-at-its-own-due"),
    ],
)
def test_route_timeouts_use_one_lazy_timer_per_connection(
    gaps: list[float | None], expected: list[int], timers: int
) -> None:
    gw = Gateway(route("a", timeout_s=1.0))
    a = gw.replicas["a"]
    client = gw.client()
    made = []
    call_later = gw.loop.call_later

    def counting(delay: float, callback: Any, *args: Any) -> Any:
        if getattr(callback, "__name__", "") == "_expire":
            made.append(gw.loop.now + delay)
        return call_later(delay, callback, *args)

    gw.loop.call_later = counting  # type: ignore[method-assign]
    codes = []
    for gap in gaps:
        client.send(GET)
        sent_at = gw.loop.now
        if gap is None:
            gw.loop.advance(0.99)
            assert client.received() == b""  # not 1 s after the first request's head
            gw.loop.advance(0.02)
            assert gw.loop.now - sent_at >= 1.0
        else:
            gw.loop.advance(gap)
            a.answer(OK)
        codes.append(int(client.received()[9:12]))
    assert codes == expected
    assert len(made) == timers

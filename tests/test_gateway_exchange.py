"""The gateway's hot-path choices, without sockets (tests/fakeloop.py) or on plain files: the
listen backlog, and the immediate ACK on replica connections (TCP_QUICKACK)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from openeas.gateway import pool
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

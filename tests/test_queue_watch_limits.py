"""Async watches are bounded (issue 18 §4): a server-sent-events or WebSocket watch holds its
connection's place under the gateway's ``max_connections`` until it ends, through a real gateway
process with a SQLite queue."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from openeas.kernel.queue import QueueSettings
from tests.conftest_gateway import free_port, route, table
from tests.test_gateway_process import wait_http

ROOT = Path(__file__).resolve().parent.parent
SSE_WATCH = b"GET /api/predict/aw/sink?_watch_=true HTTP/1.1\r\nHost: gw\r\n\r\n"


def _open_watch(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(SSE_WATCH)
    assert s.recv(4096).startswith(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream")
    return s


def _status_of_new_connection(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /api/predict/aw?_attrs_=true HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        return int(s.recv(4096)[9:12])


def test_watches_count_against_max_connections(tmp_path: Path) -> None:
    routing = tmp_path / "routing.json"
    routing.write_text(json.dumps(table(route("aw", [], queue=QueueSettings())).to_dict()))
    port = free_port()
    gw = subprocess.Popen(
        [sys.executable, "-m", "openeas.gateway", "--port", str(port), "--routing-file", str(routing),
         "--max-connections", "3", "--queue-url", f"sqlite:///{tmp_path / 'queue.db'}"],
        cwd=ROOT,
    )  # fmt: skip
    try:
        wait_http(port, "/healthz")
        watches = [_open_watch(port) for _ in range(3)]
        assert _status_of_new_connection(port) == 503  # three watches fill the cap of 3
        watches.pop().close()
        deadline = time.monotonic() + 5
        while _status_of_new_connection(port) != 200:  # the closed watch's place is free again
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for w in watches:
            w.close()
    finally:
        gw.terminate()
        gw.wait(10)

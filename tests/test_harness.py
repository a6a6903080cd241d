"""The test harness itself: a server that does not come up in time is stopped, not leaked (a
fixture that raises never reaches its teardown, and leaked servers slow every later test); a
server whose port was taken after it was picked starts again on other ports (3 xdist workers pick
free ports at once: CI once lost a test's setup to it)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.harness import new_server, recorded_gateway_pid, stop_and_reap


def test_a_server_that_does_not_start_in_time_is_stopped(tmp_path: Path) -> None:
    srv = new_server(tmp_path / "data")
    with pytest.raises(RuntimeError, match=r"server did not write server.json within 0.01 s"):
        srv.start(timeout_s=0.01)
    assert srv.proc is not None and srv.proc.poll() is not None
    assert recorded_gateway_pid(srv.data_dir) is None


def test_a_server_whose_port_was_taken_since_it_was_picked_starts_on_another(tmp_path: Path) -> None:
    srv = new_server(tmp_path / "data")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", srv.port))  # another process took the API port meanwhile
        taken.listen()
        picked = srv.port
        try:
            srv.start()
            assert srv.port != picked and srv.api_url.endswith(f":{srv.port}")
            assert "is not available (Address already in use)" in (srv.data_dir / "server.out").read_text()
            assert srv.client.list() == []
        finally:
            stop_and_reap(srv)

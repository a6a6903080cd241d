"""The test harness itself: a server that does not come up in time is stopped, not leaked (a
fixture that raises never reaches its teardown, and leaked servers slow every later test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import new_server, recorded_gateway_pid


def test_a_server_that_does_not_start_in_time_is_stopped(tmp_path: Path) -> None:
    srv = new_server(tmp_path / "data")
    with pytest.raises(RuntimeError, match=r"server did not write server.json within 0.01 s"):
        srv.start(timeout_s=0.01)
    assert srv.proc is not None and srv.proc.poll() is not None
    assert recorded_gateway_pid(srv.data_dir) is None

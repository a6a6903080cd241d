from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, kill_gateway, new_server, replica_processes


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = new_server(tmp_path / "data").start()
    yield srv
    _stop_and_reap(srv)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module whose tests each deploy services of their own names."""
    srv = new_server(tmp_path_factory.mktemp("shared") / "data").start()
    yield srv
    _stop_and_reap(srv)


def _stop_and_reap(srv: Server) -> None:
    srv.stop()
    kill_gateway(srv.data_dir)  # a gateway outlives a killed server: not the test, though
    # Whatever a test left behind, no replica process may outlive it.
    for pid in replica_processes(srv.data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

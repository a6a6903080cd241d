from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, new_server, stop_and_reap


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = new_server(tmp_path / "data").start()
    yield srv
    stop_and_reap(srv)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for a module whose tests each deploy services of their own names."""
    srv = new_server(tmp_path_factory.mktemp("shared") / "data").start()
    yield srv
    stop_and_reap(srv)

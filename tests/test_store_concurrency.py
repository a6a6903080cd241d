"""Concurrent writers of one store (SQLite and PostgreSQL) (API threads, supervisors, a second Store on the same
file) neither lose updates nor fail with "database is locked"."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from openeas.spec import parse_spec
from openeas.store import Store

THREADS = 6
BUMPS = 50


@pytest.mark.parametrize("stores", ["one-store", "one-store-per-thread"])
def test_concurrent_read_modify_write_loses_nothing(tmp_path: Path, stores: str, store_url: str | None) -> None:
    main = Store(tmp_path, url=store_url)
    main.create_service(
        parse_spec({"metadata": {"name": "svc", "instance": 1}, "containers": [{"command": "x", "port": 8000}]})
    )
    start = main.routing_version()
    errors: list[BaseException] = []

    def work() -> None:
        store = main if stores == "one-store" else Store(tmp_path, url=store_url)
        try:
            for _ in range(BUMPS):
                store.bump_routing()  # reads the version, writes version + 1
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    # Every increment counted: a read outside the write transaction would lose some.
    assert main.routing_version() == start + THREADS * BUMPS

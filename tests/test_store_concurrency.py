"""Concurrent writers of one store (SQLite and PostgreSQL) (API threads, supervisors, a second Store on the same
file) neither lose updates nor fail with "database is locked"."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from openeas.spec import parse_spec
from openeas.store import Store, stress_reports

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


# Reads a page or a loop makes often; each must answer while a writer holds the store's write lock.
# One table read in one test per backend: a Store per test costs its migrations (~0.3 s).
READS = {
    "routing_version": lambda st: st.routing_version(),
    "list_services": lambda st: [r.name for r in st.list_services()],
    "get_service": lambda st: st.get_service("svc").current_version,
    "stress_listing": lambda st: stress_reports.listing(st),
}


def test_a_reader_does_not_wait_for_a_writer(tmp_path: Path, store_url: str | None) -> None:
    main = Store(tmp_path, url=store_url)
    main.create_service(
        parse_spec({"metadata": {"name": "svc", "instance": 1}, "containers": [{"command": "x", "port": 8000}]})
    )
    before = {name: read(main) for name, read in READS.items()}
    holder, other = Store(tmp_path, url=store_url), Store(tmp_path, url=store_url)
    done: dict[str, object] = {}
    writer = threading.Thread(target=lambda: done.setdefault("bumped", other.bump_routing()))
    seen: dict[str, object] = {}

    def reads() -> None:
        for name, read in READS.items():
            seen[name] = read(main)

    reader = threading.Thread(target=reads)
    with holder.session() as s:
        holder._bump_routing(s)  # this transaction holds the write lock until the block ends
        writer.start()
        reader.start()
        reader.join(timeout=5)  # a reader that waits for the lock would wait until the block ends
        assert not reader.is_alive(), f"a read waited for the writer; answered: {sorted(seen)}"
        # The lock is really held: a second writer waits for it (busy_timeout: 10 s).
        writer.join(timeout=0.3)
        assert writer.is_alive()
    writer.join(timeout=10)
    assert "bumped" in done
    # The reads answered while the lock was held, with what was committed before the holder began.
    assert seen == before
    assert main.routing_version() == before["routing_version"] + 2  # type: ignore[operator]


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda st, s: st._set_meta(s, "k", "v"), id="add"),
        pytest.param(lambda st, s: setattr(st._service(s, "svc"), "desired_replicas", 3), id="change"),
    ],
)
def test_a_write_in_a_read_session_raises(tmp_path: Path, write) -> None:
    store = Store(tmp_path)
    store.create_service(
        parse_spec({"metadata": {"name": "svc", "instance": 1}, "containers": [{"command": "x", "port": 8000}]})
    )
    with pytest.raises(RuntimeError, match=r"Store\.read\(\) is read-only"), store.read() as s:
        write(store, s)
    assert store.get_service("svc").desired_replicas == 1

"""The store on a real SQLite file: versions, tokens at rest, migrations, routing publication."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from openeas.errors import Conflict, NotFound
from openeas.spec import parse_spec
from openeas.store import MIGRATIONS, Store, db_path, migrate
from openeas.store.routing import StoreRoutingSource


def spec(name: str = "svc", **meta: object) -> object:
    return parse_spec(
        {
            "metadata": {"name": name, "instance": 2, **meta},
            "containers": [{"command": "serve --port 8000", "port": 8000}],
            "token": "token-for-tests-123",
        }
    )


def test_versions_are_immutable_and_rollback_adds_one(tmp_path: Path):
    store = Store(tmp_path)
    store.create_service(spec())
    store.add_version(spec(instance=3))
    store.rollback("svc", 1)
    assert [v.version for v in store.versions("svc")] == [1, 2, 3]
    assert store.version_spec("svc", 1).metadata.instance == 2
    assert store.version_spec("svc", 2).metadata.instance == 3
    assert store.version_spec("svc", 3) == store.version_spec("svc", 1)
    assert store.get_service("svc").desired_replicas == 3  # rollback keeps the replica count


@pytest.mark.parametrize(
    "call,exc,message",
    [
        (lambda s: s.create_service(spec()), Conflict, "service 'svc' already exists"),
        (lambda s: s.get_service("nope"), NotFound, "service 'nope' not found"),
        (lambda s: s.version_spec("svc", 9), NotFound, "service 'svc' has no version 9"),
        (lambda s: s.rollback("svc", 7), NotFound, "service 'svc' has no version 7"),
    ],
    ids=["duplicate", "unknown-service", "unknown-version", "rollback-unknown"],
)
def test_errors_are_precise(tmp_path: Path, call, exc, message):
    store = Store(tmp_path)
    store.create_service(spec())
    with pytest.raises(exc, match=message):
        call(store)


def test_tokens_encrypted_at_rest_with_a_separate_private_key(tmp_path: Path):
    store = Store(tmp_path)
    store.create_service(spec())
    admin = store.admin_token()
    raw = db_path(tmp_path).read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("openeas.db-wal") if p.exists()
    )
    assert b"token-for-tests-123" not in raw and admin.encode() not in raw
    assert store.token("svc") == "token-for-tests-123"
    assert stat.S_IMODE((tmp_path / "secret.key").stat().st_mode) == 0o600
    # A second Store on the same dir (a restarted server) reads the same tokens.
    again = Store(tmp_path)
    assert again.token("svc") == "token-for-tests-123" and again.admin_token() == admin


def test_migrations_are_recorded_and_idempotent(tmp_path: Path):
    store = Store(tmp_path)
    assert migrate(store.engine) == len(MIGRATIONS)
    with sqlite3.connect(db_path(tmp_path)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(len(MIGRATIONS))
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_routing_source_publishes_only_ready_replicas(tmp_path: Path):
    store = Store(tmp_path)
    store.create_service(spec(rpc={"keepalive": 2500, "max_body_bytes": 1000}))
    source = StoreRoutingSource(tmp_path)
    table = source.poll()
    assert table is not None and table.routes["svc"].upstreams == ()
    assert table.routes["svc"].timeout_s == 2.5 and table.routes["svc"].max_body_bytes == 1000
    assert source.poll() is None  # nothing changed: nothing rebuilt
    a = store.add_replica("svc", 1, workdir_root=tmp_path)
    b = store.add_replica("svc", 1, workdir_root=tmp_path)
    store.update_replica(a.id, phase="Starting", port=1111)
    assert source.poll() is None  # not Ready: routing unchanged
    for phase in ("Warming", "Ready"):  # the legal way to Ready (openeas.states.TRANSITIONS)
        store.update_replica(a.id, phase=phase)
    for phase in ("Fetching", "Starting", "Warming"):
        store.update_replica(b.id, phase=phase)
    store.update_replica(b.id, phase="Ready", port=2222)
    table = source.poll()
    assert table is not None
    assert [u.port for u in table.routes["svc"].upstreams] == [1111, 2222]
    assert table.routes["svc"].token == "token-for-tests-123"
    store.update_replica(a.id, phase="Draining")
    table = source.poll()
    assert table is not None and [u.port for u in table.routes["svc"].upstreams] == [2222]
    store.update_service("svc", state="Deleting")
    table = source.poll()
    assert table is not None and "svc" not in table.routes


def test_replica_phase_times_are_stamped(tmp_path: Path):
    store = Store(tmp_path)
    store.create_service(spec())
    r = store.add_replica("svc", 1, workdir_root=tmp_path)
    for phase in ("Fetching", "Starting", "Warming", "Ready"):
        store.update_replica(r.id, phase=phase)
    row = store.get_replica(r.id)
    assert row is not None
    times = row.phase_times
    assert list(times) == ["Pending", "Fetching", "Starting", "Warming", "Ready"]
    assert times["Pending"] <= times["Fetching"] <= times["Ready"]

"""The store on a real SQLite file: versions, tokens at rest, migrations of released databases,\nrouting publication."""

from __future__ import annotations

import json
import shutil
import sqlite3
import stat
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from openeas.errors import Conflict, NotFound
from openeas.gateway.routing.source import StoreRoutingSource, routing_source
from openeas.spec import parse_spec
from openeas.store import MIGRATIONS, Store, db_path
from openeas.store import stress_reports as stress_store
from openeas.store.batch_jobs import BatchStore
from openeas.store.groups import GroupStore
from openeas.store.spec_secrets import unseal


def spec(name: str = "svc", **meta: object) -> object:
    return parse_spec(
        {
            "metadata": {"name": name, "instance": 2, **meta},
            "containers": [{"command": "serve --port 8000", "port": 8000}],
            "token": "token-for-tests-123",
        }
    )


def test_versions_are_immutable_and_rollback_adds_one(tmp_path: Path, store_url: str | None):
    store = Store(tmp_path, url=store_url)
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
def test_errors_are_precise(tmp_path: Path, store_url: str | None, call, exc, message):
    store = Store(tmp_path, url=store_url)
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


def _meta(data_dir: Path, key: str) -> str | None:
    with closing(sqlite3.connect(db_path(data_dir))) as db:
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def test_new_store_is_at_the_latest_schema_and_reopening_keeps_everything(tmp_path: Path):
    store = Store(tmp_path)
    store.create_service(spec())
    admin = store.admin_token()
    assert _meta(tmp_path, "schema_version") == str(len(MIGRATIONS))
    with closing(sqlite3.connect(db_path(tmp_path))) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.engine.dispose()
    again = Store(tmp_path)  # a restarted server: nothing to migrate, nothing lost
    assert _meta(tmp_path, "schema_version") == str(len(MIGRATIONS))
    assert again.token("svc") == "token-for-tests-123" and again.admin_token() == admin
    assert [v.version for v in again.versions("svc")] == [1]


# One data directory per released schema, made by that release's own code
# (tests/fixtures/make_store_fixture.py says how); never regenerated.
FIXTURES = Path(__file__).parent / "fixtures"
RELEASED = sorted(FIXTURES.glob("store_v*"), key=lambda p: int(p.name.removeprefix("store_v")))


# Every table a release can have, with the order its rows are compared in.
TABLES = {
    "services": "name",
    "versions": "service, version",
    "replicas": "created_at",
    "events": "id",
    "stress_reports": "id",  # v3
    "groups": "name",  # v4
    "group_members": '"group", service',
    "batch_jobs": "id",  # v5
    "batch_shards": "job_id, shard",
    "replica_usage": "replica",  # v7
    "cold_starts": "id",  # v8
    "eval_runs": "id",  # v12
    "request_usage": "service, hour",  # v13
    "gateways": "id",  # v14
}


def _rows(db: sqlite3.Connection, table: str, order: str) -> list[dict[str, object]]:
    cur = db.execute(f"SELECT * FROM {table} ORDER BY {order}")
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


def _decoded(value: object) -> object:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def test_every_released_schema_has_a_fixture():
    # One per migration: a new migration fails here until its release has a fixture.
    assert [p.name for p in RELEASED] == [f"store_v{i}" for i in range(1, len(MIGRATIONS) + 1)]
    for p in RELEASED:
        assert {"openeas.db", "secret.key", "expected.json"} <= {f.name for f in p.iterdir()}, p


@pytest.mark.parametrize("fixture", RELEASED, ids=[p.name for p in RELEASED])
def test_database_of_a_released_schema_is_upgraded_and_read_back(tmp_path: Path, fixture: Path):
    data = tmp_path / "data"
    shutil.copytree(fixture, data)  # the fixture itself is never written
    expected = json.loads((data / "expected.json").read_text())
    released = int(fixture.name.removeprefix("store_v"))
    assert _meta(data, "schema_version") == str(released) == str(expected["schema_version"])

    store = Store(data)  # opening migrates

    assert _meta(data, "schema_version") == str(len(MIGRATIONS))
    # Every row and every column the release wrote is still there, unchanged (new columns may
    # have been added next to them).
    with closing(sqlite3.connect(db_path(data))) as db:
        for table, order in TABLES.items():
            if table not in expected:
                continue  # not in that release
            got = _rows(db, table, order)
            assert len(got) == len(expected[table]), table
            for old, new in zip(expected[table], got, strict=True):
                now = {k: _decoded(new[k]) for k in old}
                if table == "versions" and released < 6:  # v6 sealed env values and dockerAuth
                    assert "fixture" not in json.dumps(now["spec"]["containers"][0]["env"])
                    now["spec"] = unseal(now["spec"], store.cipher)
                assert now == old, table
        for key, value in expected["meta"].items():
            assert _meta(data, key) == (str(len(MIGRATIONS)) if key == "schema_version" else value)
    # Tokens decrypt with the fixture's secret.key.
    assert store.admin_token() == expected["admin_token"]
    for name, token in expected["tokens"].items():
        assert store.token(name) == token
    # The current code reads it through its own API, and writes to it.
    for v in expected["versions"]:
        parsed = store.version_spec(v["service"], v["version"])
        # From v6 on the release itself wrote env values and dockerAuth sealed.
        assert parsed.to_dict() == (v["spec"] if released < 6 else unseal(v["spec"], store.cipher))
    assert {r.id: r.phase for r in store.replicas()} == {r["id"]: r["phase"] for r in expected["replicas"]}
    events = [e["reason"] for e in expected["events"] if e["service"] == "fixture_svc"]
    assert [e.reason for e in store.events("fixture_svc", 1000)] == events
    current = store.get_service("fixture_svc").current_version
    store.rollback("fixture_svc", 1)
    assert store.get_service("fixture_svc").current_version == current + 1
    # The gateway's routing source reads the upgraded database too: the Ready replica, the
    # service token and the route settings of the (rolled back to) version-1 spec.
    table = StoreRoutingSource(data).poll()
    assert table is not None
    route = table.routes["fixture_svc"]
    ready = [r for r in expected["replicas"] if r["phase"] == "Ready" and not r["stopping"]]
    assert [(u.replica_id, u.port) for u in route.upstreams] == [(r["id"], r["port"]) for r in ready]
    assert route.token == expected["tokens"]["fixture_svc"]
    v1_rpc = expected["versions"][0]["spec"]["metadata"]["rpc"]
    assert (route.timeout_s, route.max_body_bytes) == (v1_rpc["keepalive"] / 1000, v1_rpc["max_body_bytes"])
    if "group_tokens" in expected:
        assert table.groups["fixture_grp"].token == expected["group_tokens"]["fixture_grp"]
        assert [(m.service, m.weight) for m in table.groups["fixture_grp"].members] == [("fixture_svc", 1000)]
    _read_back_later_tables(store, expected)


def _read_back_later_tables(store: Store, expected: dict[str, Any]) -> None:
    """Stress reports (v3), groups (v4) and batch jobs (v5), through the current code's readers."""
    for report in expected.get("stress_reports", []):
        assert stress_store.get(store, report["id"]) == report["report"]
        assert [r["id"] for r in stress_store.listing(store, report["target"])] == [report["id"]]
    groups = GroupStore(store)
    for g in expected.get("groups", []):
        got = groups.get(g["name"])
        assert (got.traffic_mode, got.region_header, got.keep_old_hours) == (
            g["traffic_mode"],
            g["region_header"],
            g["keep_old_hours"],
        )
        members = [m for m in expected["group_members"] if m["group"] == g["name"]]
        assert [(m.service, m.weight, m.traffic_since) for m in got.members] == [
            (m["service"], m["weight"], m["traffic_since"]) for m in members
        ]
        assert groups.token(g["name"]) == expected["group_tokens"][g["name"]]
    batch = BatchStore(store)
    for job in expected.get("batch_jobs", []):
        row = batch.get(job["id"])
        assert (row.state, row.ok_lines, row.failed_lines, row.shards_done) == (
            job["state"],
            job["ok_lines"],
            job["failed_lines"],
            job["shards_done"],
        )
        pending = [s for s in expected["batch_shards"] if s["job_id"] == job["id"] and not s["done"]]
        assert [s.shard for s in batch.pending_shards(job["id"])] == [s["shard"] for s in pending]
    starts = expected.get("cold_starts", [])  # v8
    assert [(c.replica, c.spans) for c in store.cold_starts("fixture_svc")] == [
        (c["replica"], c["spans"]) for c in starts
    ]


def test_routing_source_publishes_only_ready_replicas(tmp_path: Path, store_url: str | None):
    store = Store(tmp_path, url=store_url)
    store.create_service(spec(rpc={"keepalive": 2500, "max_body_bytes": 1000}))
    source = routing_source(tmp_path, store_url)
    table = source.poll()
    assert table is not None and table.routes["svc"].upstreams == ()
    assert table.routes["svc"].timeout_s == 2.5 and table.routes["svc"].max_body_bytes == 1000
    assert source.poll() is None  # nothing changed: nothing rebuilt
    a = store.add_replica("svc", 1, workdir_root=tmp_path)
    b = store.add_replica("svc", 1, workdir_root=tmp_path)
    store.update_replica(a.id, phase="Starting", port=1111)
    assert source.poll() is None  # not Ready: routing unchanged
    for phase in ("Warming", "Ready"):  # the legal way to Ready (openeas.kernel.states.TRANSITIONS)
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


def test_replica_phase_times_are_stamped(tmp_path: Path, store_url: str | None):
    store = Store(tmp_path, url=store_url)
    store.create_service(spec())
    r = store.add_replica("svc", 1, workdir_root=tmp_path)
    for phase in ("Fetching", "Starting", "Warming", "Ready"):
        store.update_replica(r.id, phase=phase)
    row = store.get_replica(r.id)
    assert row is not None
    times = row.phase_times
    assert list(times) == ["Pending", "Fetching", "Starting", "Warming", "Ready"]
    assert times["Pending"] <= times["Fetching"] <= times["Ready"]


@pytest.mark.parametrize(
    ("node", "label"),
    [
        pytest.param("0f3a9c", "0f3a9c", id="ray-node"),
        pytest.param(None, "local", id="server-machine"),
    ],
)
def test_replica_node_is_stored_and_on_metrics(
    tmp_path: Path, store_url: str | None, node: str | None, label: str
) -> None:
    from openeas.telemetry.control import ControlMetrics

    store = Store(tmp_path, url=store_url)
    store.create_service(parse_spec({"metadata": {"name": "where"}, "containers": [{"command": "true"}]}))
    row = store.add_replica("where", 1, workdir_root=tmp_path)
    store.update_replica(row.id, node=node)
    got = store.get_replica(row.id)
    assert got is not None and got.node == node
    text = ControlMetrics(store).render().decode()
    assert f'openeas_replicas_by_node{{node="{label}",service="where"}} 1.0' in text


# A replica in each shape the reconciler decides on (store/replica_states.py).
REPLICA_SHAPES: list[dict[str, Any]] = [
    {},  # new: Pending
    {"phase": "Fetching", "pid": 4242, "stopping": True},  # started, then asked to stop
    {"standby": True},
]


def test_replica_states_match_the_rows(tmp_path: Path, store_url: str | None) -> None:
    # The reconciler's one-query snapshot says what the ORM rows say, oldest first.
    from dataclasses import fields as dc_fields

    from openeas.store.replica_states import ReplicaState, replica_states

    store = Store(tmp_path, url=store_url)
    store.create_service(spec())
    ids = [store.add_replica("svc", 1, workdir_root=tmp_path).id for _ in REPLICA_SHAPES]
    for rid, fields in zip(ids, REPLICA_SHAPES, strict=True):
        store.update_replica(rid, **fields)
    names = [f.name for f in dc_fields(ReplicaState)]
    rows = [tuple(getattr(r, n) for n in names) for r in store.replicas()]
    states = replica_states(store)
    assert [tuple(getattr(s, n) for n in names) for s in states] == rows
    assert [s.id for s in states] == ids
    assert [(s.phase, s.pid, s.stopping, s.standby) for s in states] == [
        ("Pending", None, 0, 0),
        ("Fetching", 4242, 1, 0),
        ("Pending", None, 0, 1),
    ]

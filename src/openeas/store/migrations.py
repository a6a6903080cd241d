"""The store's ordered schema migrations and the step that applies them.

``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1`` (the store's ``schema_version``
is the number applied). Append only; each is portable DDL (SQLite and PostgreSQL) and imports
nothing outside ``store/``. ``tests/fixtures/store_vN`` holds a database of each released schema,
and ``tests/test_store.py`` upgrades every one and reads it back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import Engine

from openeas.kernel.routing import RouteSettings
from openeas.kernel.states import ROUTABLE_SQL
from openeas.spec import parse_stored_spec
from openeas.store import archive as _archive
from openeas.store import cold_starts as _cold
from openeas.store import gateways as _gateways
from openeas.store import request_usage as _requests
from openeas.store import routing_log as _routing_log
from openeas.store import usage as _usage
from openeas.store.group_schema import GROUP_TABLES
from openeas.store.routing import route_settings
from openeas.store.schema import Base
from openeas.store.secrets import TokenCipher
from openeas.store.spec_secrets import seal_plain

log = logging.getLogger("openeas.store")


def _v1(conn: Connection) -> None:
    Base.metadata.create_all(conn)


def _v2_route_settings(conn: Connection) -> None:
    """``versions.route``: the route-settings record the gateway reads instead of the spec.

    A database made by v1 gets the column, and each of its versions the record computed from
    its spec. (A new database already has the column: v1 creates the tables as they are now.)
    """
    if "route" not in {c["name"] for c in inspect(conn).get_columns("versions")}:
        conn.execute(text("ALTER TABLE versions ADD COLUMN route JSON"))
    rows = conn.execute(text("SELECT service, version, spec FROM versions WHERE route IS NULL")).all()
    for service, version, spec in rows:
        try:
            record = route_settings(parse_stored_spec(json.loads(spec) if isinstance(spec, str) else spec))
        except Exception as exc:  # a spec today's models reject must not stop the server's start
            log.warning("%s version %s: unreadable spec (%s); default route settings", service, version, exc)
            record = RouteSettings()
        conn.execute(
            text("UPDATE versions SET route = :route WHERE service = :service AND version = :version"),
            {"route": json.dumps(record.to_dict()), "service": service, "version": version},
        )


def _v3_stress_reports(conn: Connection) -> None:
    """``stress_reports``: one row per stress test (``openeas.store.stress_reports`` reads and
    writes it; ``summary`` is what ``openeas stress ls`` lists, ``report`` the whole JSON report)."""
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS stress_reports ("
            " id VARCHAR(64) PRIMARY KEY,"
            " target VARCHAR(255) NOT NULL,"
            " created_at FLOAT NOT NULL,"
            " status VARCHAR(32) NOT NULL,"
            " summary JSON NOT NULL,"
            " report JSON)"
        )
    )
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_stress_reports_target ON stress_reports (target)"))


def _v4_groups(conn: Connection) -> None:
    """Service groups, their members and staged rollouts (store/group_schema.py): new tables only
    (a new database has them already: v1 creates every table as it is now)."""
    Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in GROUP_TABLES])


def _v5_batch_jobs(conn: Connection) -> None:
    """``batch_jobs`` and ``batch_shards``: batch jobs and their checkpointed shards."""
    from openeas.store.batch_schema import create_tables

    create_tables(conn)


def _v9_standby(conn: Connection) -> None:
    """``replicas.standby``: the replica is kept warmed out of routing (metadata.standby). A new
    database has it already (v1 creates the tables as they are now)."""
    if "standby" not in {c["name"] for c in inspect(conn).get_columns("replicas")}:
        conn.execute(text("ALTER TABLE replicas ADD COLUMN standby INTEGER NOT NULL DEFAULT 0"))


def _v11_node(conn: Connection) -> None:
    """``replicas.node``: the runtime's node a replica runs on (a Ray node id), NULL where the
    replica runs on the server's machine. A new database has it already."""
    if "node" not in {c["name"] for c in inspect(conn).get_columns("replicas")}:
        conn.execute(text("ALTER TABLE replicas ADD COLUMN node VARCHAR(128)"))


def _v16_routable_index(conn: Connection) -> None:
    """``ix_replicas_routable``: the routable replicas in the gateway's order (by service, then as
    made), with the columns it reads (a partial index on the SQL twin of
    ``openeas.kernel.states.routable``). A gateway's whole-table read, and its read of the services
    a change names, is then an index-only scan, not a scan of every replica row (phase times,
    cold-start breakdown and all) and a sort (bench/cluster.py's routing part, 10,000 replicas).
    Portable DDL (SQLite and PostgreSQL both have partial indexes); the gateway's query must keep
    ROUTABLE_SQL's very text for a planner to use it."""
    conn.execute(
        text(
            "CREATE INDEX IF NOT EXISTS ix_replicas_routable ON replicas "
            f"(service, created_at, id, host, port) WHERE {ROUTABLE_SQL}"
        )
    )


# Connection.info key: the store's cipher, for migrations that encrypt what was stored in clear.
_CIPHER = "openeas.cipher"


def _v6_sealed_secrets(conn: Connection) -> None:
    """Env values and dockerAuth of stored specs (versions, batch jobs) sealed with the token key
    (store/spec_secrets.py); the columns stay as they are."""
    cipher: TokenCipher = conn.info[_CIPHER]
    rows = conn.execute(text("SELECT service, version, spec FROM versions")).all()
    for service, version, spec in rows:
        doc = json.loads(spec) if isinstance(spec, str) else spec
        if isinstance(doc, dict) and (sealed := seal_plain(doc, cipher)) != doc:
            conn.execute(
                text("UPDATE versions SET spec = :spec WHERE service = :service AND version = :version"),
                {"spec": json.dumps(sealed), "service": service, "version": version},
            )
    for job_id, spec in conn.execute(text("SELECT id, spec FROM batch_jobs WHERE spec IS NOT NULL")).all():
        doc = json.loads(spec)
        if isinstance(doc, dict) and (sealed := seal_plain(doc, cipher)) != doc:
            conn.execute(
                text("UPDATE batch_jobs SET spec = :spec WHERE id = :id"),
                {"spec": json.dumps(sealed), "id": job_id},
            )


def _v12_eval_runs(conn: Connection) -> None:
    """``eval_runs``: one row per eval-set run (``openeas.store.eval_runs`` reads and writes it)."""
    conn.execute(
        text(
            "CREATE TABLE IF NOT EXISTS eval_runs ("
            " id VARCHAR(64) PRIMARY KEY,"
            " target VARCHAR(255) NOT NULL,"
            " service VARCHAR(255) NOT NULL,"
            " created_at FLOAT NOT NULL,"
            " pass_rate FLOAT NOT NULL,"
            " report JSON NOT NULL)"
        )
    )
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_eval_runs_service ON eval_runs (service)"))


# Ordered schema migrations; the store's `schema_version` is the number applied. Append only.
MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1,
    _v2_route_settings,
    _v3_stress_reports,
    _v4_groups,
    _v5_batch_jobs,
    _v6_sealed_secrets,
    _usage.create_table,  # v7: replica_usage, the meter's record (store/usage.py)
    _cold.create_table,  # v8: cold_starts, recent starts per service (store/cold_starts.py)
    _v9_standby,  # v9: replicas.standby
    _archive.create_tables,  # v10: service_dormancy, archived_services (store/archive.py)
    _v11_node,  # v11: replicas.node
    _v12_eval_runs,  # v12: eval_runs, eval-set runs (store/eval_runs.py)
    _requests.create_table,  # v13: request_usage, requests by service and UTC hour (store/request_usage.py)
    _gateways.create_table,  # v14: gateways, the gateway registry (store/gateways.py)
    _routing_log.create_table,  # v15: routing_changes, what routing versions changed (store/routing_log.py)
    _v16_routable_index,  # v16: ix_replicas_routable, the gateway's whole read index-only
]


def migrate(engine: Engine, cipher: TokenCipher) -> int:
    """Apply the migrations not applied yet; ``cipher``: the store's key (secrets sealed by v6)."""
    with engine.begin() as conn:
        conn.info[_CIPHER] = cipher
        conn.execute(text("CREATE TABLE IF NOT EXISTS meta (key VARCHAR(64) PRIMARY KEY, value TEXT)"))
        row = conn.execute(text("SELECT value FROM meta WHERE key='schema_version'")).first()
        current = int(row[0]) if row else 0
        for i, step in enumerate(MIGRATIONS[current:], start=current + 1):
            step(conn)
            conn.execute(
                text(
                    "INSERT INTO meta(key, value) VALUES ('schema_version', :v) "
                    "ON CONFLICT(key) DO UPDATE SET value=:v"
                ),
                {"v": str(i)},
            )
        conn.info.pop(_CIPHER, None)
    if current < len(MIGRATIONS) and engine.dialect.name == "sqlite":
        raw = engine.raw_connection()  # no transaction: old pages (secrets in clear) leave the WAL too
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    return len(MIGRATIONS)

"""The gateway's row in the store's gateway registry (schema v14; values in openeas.kernel.fleet).

A gateway that follows a store (``--data-dir``, with or without ``--store postgresql://…``)
registers itself: id, the URL it advertises, host, pid, start time; then a heartbeat every
:data:`~openeas.kernel.fleet.HEARTBEAT_S` and, each time it applies a routing table, the version
it applied. That row is the acknowledgement the control plane waits for when an API call changes
routing, whichever machine the gateway runs on; on PostgreSQL the same statement notifies
:data:`~openeas.kernel.fleet.ACK_CHANNEL`, so the wait wakes at once rather than at its poll.
Each heartbeat also reads where the active control plane receives counters (UDP) and the key
that signs them (openeas.telemetry.signed_stats).

Times are written with the database's clock. Writes run on a thread of their own (the gateway's
event loop never waits on the database) with a connection of their own: SQLite's read-write
one beside the routing source's read-only one, or psycopg's. Errors are logged and retried at
the next heartbeat: the data plane serves on without the registry.

Standard library (and psycopg for a PostgreSQL store, imported lazily): no SQLAlchemy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from openeas.gateway.routing.source import DB_FILE, KEY_FILE
from openeas.kernel.fleet import ACK_CHANNEL, FORGET_S, GATEWAYS_TABLE, NOW_SQL, STATS_ADDR_KEY, STATS_KEY_KEY
from openeas.tokens import TokenCipher

log = logging.getLogger("openeas.gateway.registry")

CONNECT_TIMEOUT_S = 5  # seconds a connection (or SQLite's write lock) may take


def new_gateway_id(host: str | None = None) -> str:
    """Unique per process start: ``<host>-<pid>-<random>``."""
    return f"{host or socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass(frozen=True)
class StatsTarget:
    """Where this gateway's counters go when it is not beside the control plane."""

    host: str
    port: int
    key: bytes  # HMAC-SHA256 key (openeas.telemetry.signed_stats)


def parse_addr(addr: str) -> tuple[str, int] | None:
    """``"host:port"`` (``[v6]:port`` too) → (host, port); None for anything else."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


class Registration:
    """Writes one gateway's row. Used from one thread at a time (the gateway's registry thread)."""

    def __init__(self, data_dir: Path, store_url: str | None, gateway_id: str, url: str = "") -> None:
        self.data_dir = Path(data_dir)
        self.postgres = store_url is not None and not store_url.startswith("sqlite")
        self.store_url = store_url
        self.id = gateway_id
        self.url = url  # set once the gateway listens (its port is known then)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._cipher = TokenCipher(self.data_dir / KEY_FILE)
        self._conn: Any = None
        self._pruned = False
        self._failing = False
        mark = "%s" if self.postgres else "?"
        now = NOW_SQL["postgresql" if self.postgres else "sqlite"]
        upsert = (
            f"INSERT INTO {GATEWAYS_TABLE} (id, url, host, pid, started_at, heartbeat_at, applied_version) "
            f"VALUES ({mark}, {mark}, {mark}, {mark}, {now}, {now}, {mark}) ON CONFLICT (id) DO UPDATE SET "
            "url = excluded.url, heartbeat_at = excluded.heartbeat_at, applied_version = "
            f"CASE WHEN excluded.applied_version > {GATEWAYS_TABLE}.applied_version "
            f"THEN excluded.applied_version ELSE {GATEWAYS_TABLE}.applied_version END"
        )
        self._upsert = upsert
        # PostgreSQL: the notification leaves at COMMIT of the very statement that wrote the row.
        # Its payload, "<id> <applied version>", lets the waiting control plane count the
        # acknowledgement without reading the table again.
        self._ack = (
            f"WITH u AS ({upsert} RETURNING id, applied_version) "
            f"SELECT pg_notify('{ACK_CHANNEL}', u.id || ' ' || CAST(u.applied_version AS TEXT)) FROM u"
            if self.postgres
            else upsert
        )
        self._prune = f"DELETE FROM {GATEWAYS_TABLE} WHERE heartbeat_at < {now} - {FORGET_S}"
        self._leave = f"DELETE FROM {GATEWAYS_TABLE} WHERE id = {mark}"
        self._meta = f"SELECT key, value FROM meta WHERE key IN ('{STATS_ADDR_KEY}', '{STATS_KEY_KEY}')"

    def _errors(self) -> tuple[type[Exception], ...]:
        if self.postgres:
            import psycopg

            return (psycopg.Error,)
        return (sqlite3.Error,)

    def _db(self) -> Any:
        if self._conn is None:
            if self.postgres:
                import psycopg

                from openeas.gateway.routing.pg_source import libpq_url

                assert self.store_url is not None
                self._conn = psycopg.connect(
                    libpq_url(self.store_url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
                )
            else:
                self._conn = sqlite3.connect(
                    self.data_dir / DB_FILE,
                    timeout=CONNECT_TIMEOUT_S,
                    isolation_level=None,
                    check_same_thread=False,
                )
        return self._conn

    def _row(self, applied: int) -> tuple[object, ...]:
        return (self.id, self.url, self.host, self.pid, applied)

    def _run(self, what: str, sql: str, args: tuple[object, ...] = ()) -> list[Any] | None:
        """Run one statement (autocommit); its rows, or None when the database failed (logged
        once per streak of failures; the connection is opened again next time)."""
        try:
            cur = self._db().execute(sql, args)
            rows = cur.fetchall() if cur.description else []
        except self._errors() as exc:
            if not self._failing:
                log.warning("gateway registry: %s failed (%s); retrying at the next heartbeat", what, exc)
            self._failing = True
            self.close()
            return None
        self._failing = False
        return list(rows)

    def beat(self, applied: int) -> StatsTarget | None:
        """The heartbeat: write the row (applied ``applied``); where counters go, if advertised."""
        if not self._pruned:
            self._pruned = self._run("forgetting silent gateways", self._prune) is not None
        if self._run("heartbeat", self._upsert, self._row(applied)) is None:
            return None
        meta = dict(self._run("reading the counters' address", self._meta) or ())
        addr = parse_addr(str(meta.get(STATS_ADDR_KEY, "")))
        if addr is None or STATS_KEY_KEY not in meta:
            return None
        try:
            key = bytes.fromhex(self._cipher.decrypt(str(meta[STATS_KEY_KEY])))
        except ValueError as exc:
            log.warning("gateway registry: the counters' key cannot be read (%s)", exc)
            return None
        return StatsTarget(addr[0], addr[1], key)

    def applied(self, version: int) -> bool:
        """This gateway applied routing ``version``: write it (and, on PostgreSQL, notify)."""
        return self._run("acknowledging a routing version", self._ack, self._row(version)) is not None

    def leave(self) -> None:
        """A graceful stop: the row goes (a gateway that is gone is not waited for)."""
        self._run("leaving the registry", self._leave, (self.id,))
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing left to do
                pass
            self._conn = None

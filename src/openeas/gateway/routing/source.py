"""The gateway's routing source over the store: the `RoutingTable` read with plain sqlite3.

It reads only what the control plane publishes for routing: the routable replicas (the SQL twin
of ``openeas.kernel.states.routable``), each service's encrypted token and the route-settings record
stored with its current version (``versions.route``, computed by the control plane from the typed
spec; this module never looks into a spec). It rebuilds the table only when the store's
``routing_version`` moved, so a poll is one indexed read.

Standard library, ``cryptography`` (tokens) and ``openeas.kernel.states`` only: the gateway process
never imports SQLAlchemy or pydantic. A store on PostgreSQL is read by the subclass in
:mod:`openeas.gateway.routing.pg_source` (``routing_source`` picks).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from openeas.gateway.groups.group_table import load_groups
from openeas.kernel.routing import Route, RouteSettings, RoutingTable, Upstream
from openeas.kernel.states import ROUTABLE_SQL, ServiceState
from openeas.tokens import TokenCipher

# The store's database file in the data dir: the same file as ``openeas.store.db.db_path``
# (tests/test_routing_push.py checks that they agree).
DB_FILE = "openeas.db"
KEY_FILE = "secret.key"

_REPLICAS = f"SELECT id, service, host, port FROM replicas WHERE {ROUTABLE_SQL} ORDER BY created_at, id"
_SERVICES = (
    "SELECT s.name, s.state, s.token_enc, v.route FROM services s "
    "JOIN versions v ON v.service = s.name AND v.version = s.current_version"
)


def routing_source(data_dir: Path, store_url: str | None = None) -> StoreRoutingSource:
    """The routing source of the store: SQLite in ``data_dir`` (``store_url`` None), or the
    PostgreSQL database ``store_url`` (tokens decrypted with ``data_dir``'s secret.key)."""
    if store_url is None or store_url.startswith("sqlite"):
        return StoreRoutingSource(data_dir)
    from openeas.gateway.routing.pg_source import PgRoutingSource  # the driver only where it is used

    return PgRoutingSource(store_url, data_dir)


class StoreRoutingSource:
    """Reads the routing table of the store in ``data_dir`` (read-only)."""

    # What poll() runs first: one snapshot for the version and the rows. (Overridden for PostgreSQL.)
    BEGIN = "BEGIN"
    HAS_GROUPS_SQL = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='group_members'"
    ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._cipher = TokenCipher(self.data_dir / KEY_FILE)
        self._conn: Any = None  # a DB-API connection: sqlite3's here, psycopg's in the subclass
        self._version: int | None = None
        # ciphertext → plaintext: a table rebuild does not decrypt tokens that did not change.
        self._tokens: dict[str, str] = {}

    def _db(self) -> Any:
        if self._conn is None:
            # Autocommit mode: poll() opens its own read transaction so the version it reads and
            # the rows it loads are one snapshot. Used by one thread at a time (the routing thread).
            self._conn = sqlite3.connect(
                f"file:{self.data_dir / DB_FILE}?mode=ro",
                uri=True,
                timeout=5,
                isolation_level=None,
                check_same_thread=False,
            )
        return self._conn

    def poll(self) -> RoutingTable | None:
        """The table when ``routing_version`` moved since the last call, else None."""
        try:
            db = self._db()
            db.execute(self.BEGIN)
            try:
                row = db.execute("SELECT value FROM meta WHERE key='routing_version'").fetchone()
                version = int(row[0]) if row else 0
                if version == self._version:
                    return None
                table = self._load(db, version)
            finally:
                db.execute("COMMIT")
        except self.ERRORS:
            # No database yet, or one being migrated: drop the connection and try again at the
            # next poll or notification (the table in use stays).
            self.close()
            return None
        self._version = version
        return table

    def _token(self, blob: str) -> str:
        token = self._tokens.get(blob)
        if token is None:
            token = self._tokens[blob] = self._cipher.decrypt(blob)
        return token

    def _load(self, db: Any, version: int) -> RoutingTable:
        ready: dict[str, list[Upstream]] = {}
        for rid, service, host, port in db.execute(_REPLICAS):
            ready.setdefault(service, []).append(Upstream(replica_id=rid, host=host, port=int(port)))
        routes = {}
        used: dict[str, str] = {}
        for name, state, token_enc, route_json in db.execute(_SERVICES):
            if state == ServiceState.DELETING:
                continue
            # sqlite3 hands JSON columns back as text, psycopg as decoded values
            route = json.loads(route_json) if isinstance(route_json, str) else route_json
            settings = RouteSettings.from_dict(route or None)
            token = self._token(token_enc)
            used[token_enc] = token
            stopped = state == ServiceState.STOPPED
            routes[name] = Route.of(name, token, tuple(ready.get(name, ())), settings, stopped=stopped)
        groups = load_groups(db, lambda blob: used.setdefault(blob, self._token(blob)), self.HAS_GROUPS_SQL)
        self._tokens = used  # forget the tokens no service or group has any more
        return RoutingTable(version=version, routes=routes, groups=groups)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

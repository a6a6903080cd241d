"""The gateway's routing source over the store: the `RoutingTable` read with plain sqlite3.

It reads only what the control plane publishes for routing: the routable replicas (the SQL twin
of ``openeas.kernel.states.routable``), each service's encrypted token and the route-settings record
stored with its current version (``versions.route``, computed by the control plane from the typed
spec; this module never looks into a spec). It reads the store only when its ``routing_version`` moved, so a
poll is one indexed read, and then re-reads only the services and groups the versions since its
own changed (the store's routing change log, :mod:`openeas.gateway.routing.changes`): the routes
of the others are the very objects of the table before, which the gateway's apply keeps as they
are (:func:`openeas.gateway.routing.routes.build_routes`). The whole table is read on the first
poll and whenever the log cannot say what changed.

Standard library, ``cryptography`` (tokens) and ``openeas.kernel.states`` only: the gateway process
never imports SQLAlchemy or pydantic. A store on PostgreSQL is read by the subclass in
:mod:`openeas.gateway.routing.pg_source` (``routing_source`` picks).
"""

from __future__ import annotations

import json
import sqlite3
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from openeas.gateway.groups.group_table import load_groups
from openeas.gateway.routing.changes import Changes, changes_since
from openeas.gateway.routing.table import gc_paused
from openeas.kernel.groups import GroupDef
from openeas.kernel.routing import ROUTING_LOG_TABLE, Route, RouteSettings, RoutingTable, Upstream
from openeas.kernel.states import ROUTABLE_SQL, ServiceState
from openeas.tokens import TokenCipher

# The store's database file in the data dir: the same file as ``openeas.store.db.db_path``
# (tests/test_routing_push.py checks that they agree).
DB_FILE = "openeas.db"
KEY_FILE = "secret.key"

# ``{where}``: nothing (every service), or the services of an IN list. A service's replicas in
# the order they were made, services one after another: the order of the store's partial index
# ix_replicas_routable (schema v16), read index-only, without a sort.
_REPLICAS = (
    f"SELECT id, service, host, port FROM replicas WHERE {ROUTABLE_SQL}{{where}} "
    "ORDER BY service, created_at, id"
)
# The route of the current version by its key, one indexed lookup a service (a join let
# PostgreSQL scan every version, specs and all, to find the few a change names). As its JSON
# text on both databases (psycopg would decode it): services that share settings, most of them,
# share one parse.
_SERVICES = (
    "SELECT s.name, s.state, s.token_enc, (SELECT CAST(v.route AS TEXT) FROM versions v "
    "WHERE v.service = s.name AND v.version = s.current_version) FROM services s{where}"
)
# Decrypted tokens kept beyond those in use (services and groups of the table) before the next
# read is a whole one, which forgets the others: tokens changed by versions read as changes stay
# cached until then.
TOKEN_SLACK = 1024


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
    HAS_LOG_SQL = f"SELECT 1 FROM sqlite_master WHERE type='table' AND name='{ROUTING_LOG_TABLE}'"
    PARAM = "?"  # the driver's placeholder
    ERRORS: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._cipher = TokenCipher(self.data_dir / KEY_FILE)
        self._conn: Any = None  # a DB-API connection: sqlite3's here, psycopg's in the subclass
        self._version: int | None = None
        self._table: RoutingTable | None = None  # the table of self._version
        # ciphertext → plaintext: a table rebuild does not decrypt tokens that did not change.
        self._tokens: dict[str, str] = {}
        self._old_tokens: dict[str, str] = {}  # the cache before a whole read, while it runs
        self._has_log = False  # the store has the change log (schema v15; never dropped once there)
        # The query that finds the groups' table, until it is found (then one that costs nothing:
        # PostgreSQL's information_schema takes milliseconds, more than a whole change's read).
        self._has_groups_sql = self.HAS_GROUPS_SQL
        # Reads of the store so far: "full" (the whole table) and "changes" (what changed only).
        self.reads: dict[str, int] = {"full": 0, "changes": 0}

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
                table = self._read(db, version)
            finally:
                db.execute("COMMIT")
        except self.ERRORS:
            # No database yet, or one being migrated: drop the connection and try again at the
            # next poll or notification (the table in use stays).
            self.close()
            return None
        self._version, self._table = version, table
        return table

    def _read(self, db: Any, version: int) -> RoutingTable:
        """The table of ``version``: the one held patched with what changed, or read whole."""
        changes = None
        old = self._table
        if old is not None and len(self._tokens) <= len(old.routes) + len(old.groups) + TOKEN_SLACK:
            if not self._has_log:
                self._has_log = db.execute(self.HAS_LOG_SQL).fetchone() is not None
            if self._has_log:
                changes = changes_since(db, self._version, version, self.PARAM)
        if old is None or changes is None:
            self.reads["full"] += 1
            return self._load(db, version)
        self.reads["changes"] += 1
        return self._patch(db, old, version, changes)

    def _token(self, blob: str) -> str:
        token = self._tokens.get(blob)
        if token is None:
            token = self._old_tokens.pop(blob, None) or self._cipher.decrypt(blob)
            self._tokens[blob] = token
        return token

    def _routes(self, db: Any, names: tuple[str, ...] | None) -> dict[str, Route]:
        """The routes of the services ``names`` (every one when None) that are routed: not one
        of a service that is absent or being deleted."""
        where, args = "", names or ()
        if names is not None:
            where = f" AND service IN ({', '.join([self.PARAM] * len(names))})"
        ready: dict[str, tuple[Upstream, ...]] = {}
        new = tuple.__new__  # Upstream's own constructor without its Python-level __new__
        rows = db.execute(_REPLICAS.format(where=where), args).fetchall()
        for service, of_service in groupby(rows, itemgetter(1)):  # rows ordered by service
            ready[service] = tuple([new(Upstream, (rid, host, port)) for rid, _, host, port in of_service])
        if names is not None:
            where = f" WHERE s.name IN ({', '.join([self.PARAM] * len(names))})"
        routes = {}
        parsed: dict[str | None, RouteSettings] = {}  # route JSON text → its settings (immutable)
        for name, state, token_enc, route_json in db.execute(_SERVICES.format(where=where), args):
            if state == ServiceState.DELETING:
                continue
            settings = parsed.get(route_json)
            if settings is None:
                settings = parsed[route_json] = RouteSettings.from_dict(json.loads(route_json or "null"))
            stopped = state == ServiceState.STOPPED
            token = self._token(token_enc)
            routes[name] = Route.of(name, token, ready.get(name, ()), settings, stopped=stopped)
        return routes

    def _groups(self, db: Any, names: frozenset[str] | None) -> dict[str, GroupDef]:
        """The groups ``names`` (every one when None) that exist."""
        groups = load_groups(db, self._token, self._has_groups_sql, names, self.PARAM)
        if groups:
            self._has_groups_sql = "SELECT 1"  # the table is there (tables are never dropped)
        return groups

    def _load(self, db: Any, version: int) -> RoutingTable:
        # The cache starts again with the tokens in use (taken from the old one, not decrypted).
        self._old_tokens, self._tokens = self._tokens, {}
        with gc_paused():
            routes = self._routes(db, None)
            groups = self._groups(db, None)
        self._old_tokens = {}  # forget the tokens no service or group has any more
        return RoutingTable(version=version, routes=routes, groups=groups)

    def _patch(self, db: Any, old: RoutingTable, version: int, changes: Changes) -> RoutingTable:
        """``old`` with the services and groups in ``changes`` read again: the routes of the
        others are ``old``'s own objects."""
        routes = dict(old.routes)
        if changes.services:
            names = tuple(sorted(changes.services))
            fresh = self._routes(db, names)
            for name in names:
                route = fresh.get(name)
                if route is None:  # deleted, being deleted, or purged
                    routes.pop(name, None)
                elif route != routes.get(name):  # the same route stays the same object
                    routes[name] = route
        groups = old.groups
        if changes.groups:
            groups = dict(old.groups)
            fresh_groups = self._groups(db, changes.groups)
            for name in changes.groups:
                if name in fresh_groups:
                    groups[name] = fresh_groups[name]
                else:
                    groups.pop(name, None)
        return RoutingTable(version=version, routes=routes, groups=groups)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

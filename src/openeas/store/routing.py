"""Publishes the store's view of Ready replicas as a gateway `RoutingTable`.

The gateway runs in its own process; it polls `routing_version` (one indexed read) and rebuilds
the table only when the control plane bumped it. Plain sqlite3 keeps the poll cheap.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from openeas.gateway.table import DEFAULT_MAX_BODY_BYTES, Route, RoutingTable, Upstream
from openeas.store.db import db_path
from openeas.store.secrets import TokenCipher


class StoreRoutingSource:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self._cipher = TokenCipher(self.data_dir / "secret.key")
        self._conn: sqlite3.Connection | None = None
        self._version: int | None = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = sqlite3.connect(f"file:{db_path(self.data_dir)}?mode=ro", uri=True, timeout=5)
        return self._conn

    def poll(self) -> RoutingTable | None:
        try:
            db = self._db()
            row = db.execute("SELECT value FROM meta WHERE key='routing_version'").fetchone()
        except sqlite3.Error:
            self._conn = None
            return None
        version = int(row[0]) if row else 0
        if version == self._version:
            return None
        table = self._load(db, version)
        self._version = version
        return table

    def _load(self, db: sqlite3.Connection, version: int) -> RoutingTable:
        ready: dict[str, list[Upstream]] = {}
        for rid, service, host, port in db.execute(
            "SELECT id, service, host, port FROM replicas WHERE phase='Ready' AND stopping=0 "
            "AND port IS NOT NULL ORDER BY created_at"
        ):
            ready.setdefault(service, []).append(Upstream(replica_id=rid, host=host, port=int(port)))
        routes = {}
        for name, state, token_enc, spec_json in db.execute(
            "SELECT s.name, s.state, s.token_enc, v.spec FROM services s "
            "JOIN versions v ON v.service = s.name AND v.version = s.current_version"
        ):
            if state == "Deleting":
                continue
            spec = json.loads(spec_json)
            rpc = spec.get("metadata", {}).get("rpc", {})
            keepalive_ms = rpc.get("keepalive")
            routes[name] = Route(
                service=name,
                token=self._cipher.decrypt(token_enc),
                upstreams=tuple(ready.get(name, ())),
                timeout_s=keepalive_ms / 1000.0 if keepalive_ms else None,
                max_body_bytes=int(rpc.get("max_body_bytes") or DEFAULT_MAX_BODY_BYTES),
            )
        return RoutingTable(version=version, routes=routes)

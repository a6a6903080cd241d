"""What changed in the routing table between the version a gateway holds and the store's: read
from the store's routing change log (written by ``openeas.store.routing_log`` in the transaction
of each routing version).

The answer is the names of the services and groups to re-read, or None when only a whole
rebuild is right: the gateway holds no table yet, the log is missing (a store before schema
v15), a version in the range has no row (pruned, or bumped before the log existed), a writer
did not say what it changed, the store's version went back (another database), or so much
changed that reading everything is as cheap. Read in the same snapshot as the version, so the
rows and the version agree (the store's writers commit one at a time).

Standard library only, on a DB-API connection (sqlite3's or psycopg's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from openeas.kernel.routing import CHANGED_GROUP, CHANGED_SERVICE, ROUTING_LOG_TABLE

# Changed names above which a gateway rebuilds its whole table: re-reading that many services one
# by one costs about what reading every one does (and keeps each IN list short).
MAX_CHANGED = 500


@dataclass(frozen=True)
class Changes:
    """What the versions after a gateway's changed, by name."""

    services: frozenset[str]
    groups: frozenset[str]


def changes_since(db: Any, have: int | None, now: int, param: str) -> Changes | None:
    """The services and groups changed by versions ``have + 1 .. now``, or None: rebuild whole.

    ``param``: the driver's placeholder (``?`` for sqlite3, ``%s`` for psycopg). The caller
    checks that the log table exists."""
    if have is None or now < have:
        return None
    sql = (
        f"SELECT version, kind, name FROM {ROUTING_LOG_TABLE} "
        f"WHERE version > {param} AND version <= {param} LIMIT {MAX_CHANGED + 1}"
    )
    rows = db.execute(sql, (have, now)).fetchall()
    if len(rows) > MAX_CHANGED or len({v for v, _, _ in rows}) != now - have:
        return None  # too much, or a version the log does not cover
    services: set[str] = set()
    groups: set[str] = set()
    for _, kind, name in rows:
        if kind == CHANGED_SERVICE:
            services.add(name)
        elif kind == CHANGED_GROUP:
            groups.add(name)
        else:  # CHANGED_ALL, or a kind of a newer release: everything may have changed
            return None
    return Changes(frozenset(services), frozenset(groups))

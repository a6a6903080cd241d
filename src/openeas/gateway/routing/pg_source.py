"""The gateway's routing source over a store on PostgreSQL: the same tables and queries as
:mod:`openeas.gateway.routing.source` (SQLite), read with the psycopg driver, and a push.

The store notifies :data:`openeas.kernel.routing.ROUTING_CHANNEL` in the very transaction that
bumps the routing version (``pg_notify``, delivered at COMMIT). ``watch`` LISTENs on it on a thread
of its own and calls back on each notification; the gateway then reads the source at once. The
routing version in ``meta`` stays the truth (a notification only says "read now"), and the
gateway's poll is the safety net for a notification lost with a dropped connection: a reconnected
listener also calls back once, for whatever changed while it was away.

psycopg is imported here only, lazily (``routing_source`` imports this module for a
``postgresql://`` store): a gateway on SQLite never loads it, and no gateway loads SQLAlchemy.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openeas.gateway.routing.source import StoreRoutingSource
from openeas.kernel.routing import ROUTING_CHANNEL, ROUTING_LOG_TABLE

log = logging.getLogger("openeas.gateway.routing.pg_source")

# Seconds a connection attempt may take; seconds between a lost listener and its next try.
CONNECT_TIMEOUT_S = 5
RELISTEN_DELAY_S = 1.0
# Seconds the listener waits for a notification before it checks whether it was stopped.
LISTEN_WAKE_S = 0.5


def libpq_url(url: str) -> str:
    """The libpq connection URI of a store URL (SQLAlchemy's ``postgresql+psycopg://`` too)."""
    for scheme in ("postgresql+psycopg://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql://" + url[len(scheme) :]
    return url


def listen(
    url: str,
    channel: str,
    stopped: threading.Event,
    on_note: Callable[[str], object],
    on_listening: Callable[[], object],
    what: str,
) -> None:
    """LISTEN on ``channel`` of the PostgreSQL database ``url`` until ``stopped`` is set (checked
    every LISTEN_WAKE_S): ``on_listening()`` each time LISTEN runs, the first time and again after
    a lost connection (a notification sent meanwhile is gone: the caller reads what it missed);
    ``on_note(payload)`` for each notification. A lost connection is logged as ``what`` lost and
    opened again RELISTEN_DELAY_S later. Runs on the caller's thread."""
    import psycopg

    while not stopped.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                conn.execute(f"LISTEN {channel}")
                on_listening()
                while not stopped.is_set():
                    for note in conn.notifies(timeout=LISTEN_WAKE_S, stop_after=1):
                        on_note(note.payload)
        except psycopg.Error as exc:
            log.warning("%s from PostgreSQL lost (%s); listening again in %s s", what, exc, RELISTEN_DELAY_S)
            stopped.wait(RELISTEN_DELAY_S)


class PgRoutingSource(StoreRoutingSource):
    """Reads the routing table of the store in the PostgreSQL database ``url`` (read-only)."""

    BEGIN = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    HAS_GROUPS_SQL = (
        "SELECT 1 FROM information_schema.tables WHERE table_name = 'group_members' "
        "AND table_schema = current_schema()"
    )
    HAS_LOG_SQL = (
        f"SELECT 1 FROM information_schema.tables WHERE table_name = '{ROUTING_LOG_TABLE}' "
        "AND table_schema = current_schema()"
    )
    PARAM = "%s"

    def __init__(self, url: str, data_dir: Path) -> None:
        import psycopg

        super().__init__(data_dir)
        self.url = libpq_url(url)
        self.ERRORS = (psycopg.Error,)
        self._stopped = threading.Event()

    def _db(self) -> Any:
        if self._conn is None:
            import psycopg

            # Autocommit: poll() opens its own read-only snapshot (BEGIN) and ends it (COMMIT).
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        return self._conn

    def watch(self, on_change: Callable[[], object]) -> Callable[[], None]:
        """Call ``on_change()`` (from a thread of its own) after each routing change committed;
        returns the function that stops listening."""
        self._stopped.clear()
        thread = threading.Thread(
            target=self._listen, args=(on_change,), name="openeas-pg-listen", daemon=True
        )
        thread.start()
        return self._stopped.set

    def _listen(self, on_change: Callable[[], object]) -> None:
        # on_listening too: what changed before LISTEN (or while reconnecting) is read at once
        listen(self.url, ROUTING_CHANNEL, self._stopped, lambda _payload: on_change(), on_change,
               "routing notifications")  # fmt: skip

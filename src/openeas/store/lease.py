"""The control plane's lease on a PostgreSQL store: one server acts, the others stand by.

Two or more ``openeas server`` processes may share one PostgreSQL store (docs/cluster.md,
"A standby control plane"). Exactly one of them acts (reconciler, autoscaler, rollouts, batch,
the API that writes); it holds a PostgreSQL session-level advisory lock (``LEASE_KEY``) on a
connection of its own. The others try to take the lock every ``poll_s`` and meanwhile answer
their API with 503 "standby; active is <url>".

Why an advisory lock and not a lease row with an expiry: the lock belongs to the holder's
database session, and PostgreSQL ends a session as soon as its connection closes. A ``kill -9``
closes the holder's sockets at once, so the lock is free within a poll of the standby: no expiry
to wait out, no clock to trust across machines. A holder whose machine vanishes (no FIN) is
found dead by PostgreSQL's TCP keepalives on the lease session (``SERVER_KEEPALIVE``, set by
the holder for its own session: the session ends within idle + interval x count seconds). The
holder checks its own session every ``check_s``; a lost session means another server may act,
so the holder stops (fail-stop; never two acting servers).

The holder names itself in its session's ``application_name`` (``openeas-server <api url>``),
so a standby finds the active's URL in ``pg_stat_activity`` without a table of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("openeas.lease")

# The advisory lock's key (one per database): "OpEA" as a 32-bit number, any constant will do.
LEASE_KEY = 0x4F704541
APP_PREFIX = "openeas-server "
# How often a standby tries to take the lease (seconds): the takeover's resolution.
POLL_S = 0.2
# How often the holder checks that its session (and so its lock) is still there (seconds).
CHECK_S = 1.0
# libpq TCP keepalives on the lease connection: a silent peer is dropped within 5 + 1 x 3 s.
KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
}
# The same probe on PostgreSQL's side of the lease session (its tcp_keepalives_* settings, set for
# this session only): what frees the lock when the *holder's* machine vanishes. The libpq options
# above only make the holder notice a vanished PostgreSQL; a server with the default settings
# (the system's: 2 hours idle) would keep a vanished holder's lock for hours.
SERVER_KEEPALIVE: dict[str, int] = {
    "tcp_keepalives_idle": KEEPALIVE["keepalives_idle"],
    "tcp_keepalives_interval": KEEPALIVE["keepalives_interval"],
    "tcp_keepalives_count": KEEPALIVE["keepalives_count"],
}
# A connection attempt's bound (seconds).
CONNECT_TIMEOUT_S = 5

_HOLDER_SQL = (
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s "
    "AND l.objsubid = 1 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def holder_url(application_name: str | None) -> str | None:
    """The active server's API URL from its lease session's ``application_name`` (pure)."""
    if application_name is None or not application_name.startswith(APP_PREFIX):
        return None
    return application_name[len(APP_PREFIX) :].strip() or None


def standby_message(active_url: str | None) -> str:
    """What a standby's API answers (503), naming the active server when it is known (pure)."""
    return f"standby; active is {active_url}" if active_url else "standby; no active server found"


def libpq_url(url: str) -> str:
    """psycopg's URL for a store URL (SQLAlchemy's ``postgresql+psycopg://`` spelling removed)."""
    return "postgresql://" + url.split("://", 1)[1]


@dataclass
class Lease:
    """This server's try at the lease of ``url``'s database; ``me`` is its API URL."""

    url: str
    me: str
    _conn: Any = None

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            libpq_url(self.url),
            autocommit=True,
            application_name=(APP_PREFIX + self.me)[:63],  # PostgreSQL keeps 63 bytes
            connect_timeout=CONNECT_TIMEOUT_S,
            options=" ".join(f"-c {k}={v}" for k, v in SERVER_KEEPALIVE.items()),
            **KEEPALIVE,
        )

    def try_acquire(self) -> bool:
        """Take the lease if it is free (the lock is kept by this object's connection)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (LEASE_KEY,)).fetchone()
        return bool(row and row[0])

    def active_url(self) -> str | None:
        """The holder's API URL (None: nobody holds it, or the holder is not an OpenEAS server)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        row = self._conn.execute(_HOLDER_SQL, (LEASE_KEY,)).fetchone()
        return holder_url(row[0] if row else None)

    def still_held(self) -> bool:
        """Whether this holder's session (and so its lock) is alive."""
        try:
            self._conn.execute("SELECT 1").fetchone()
        except Exception:  # psycopg.Error or a closed connection: the lock is gone with it
            return False
        return True

    def release(self) -> None:
        """Give the lease back (closing the session frees the lock)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def acquire(self, stop: asyncio.Event, on_wait: Any = None) -> bool:
        """Wait until this server holds the lease (True) or ``stop`` is set (False).

        ``on_wait(active_url)`` is called whenever the known active server changes."""
        last: object = object()
        started = time.monotonic()
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self.try_acquire):
                    log.info("holding the control-plane lease (waited %.1f s)", time.monotonic() - started)
                    return True
                active = await asyncio.to_thread(self.active_url)
            except Exception as exc:  # PostgreSQL unreachable: keep trying, say so once
                self.release()
                active = None
                if last != "error":
                    log.warning("cannot reach the store for the lease: %s", exc)
                last = "error"
            else:
                if active != last:
                    log.info("%s", standby_message(active))
                    if on_wait is not None:
                        on_wait(active)
                last = active
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)
        return False

    async def keep(self, stop: asyncio.Event) -> None:
        """Run while this server holds the lease; return when ``stop`` is set or it was lost."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_S)
            if not stop.is_set() and not await asyncio.to_thread(self.still_held):
                log.error("lost the control-plane lease (store session ended): stopping")
                raise LeaseLost("the control-plane lease was lost (store session ended)")


class LeaseLost(RuntimeError):
    """The holder's store session ended: another server may be acting now."""

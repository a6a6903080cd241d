"""The store: desired state and observed replica state, in SQLite (WAL) under the data dir, or
in PostgreSQL (``Store(data_dir, url="postgresql://…")``): the same models and migrations.

Everything the control plane knows lives here, so a kill -9 of the server loses nothing: on
restart the reconciler re-reads it and adopts what still runs. Methods open a short session
each; returned rows are detached snapshots (``expire_on_commit=False``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Unpack

from sqlalchemy import Connection, create_engine, delete, event, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from openeas.errors import Conflict, NotFound
from openeas.kernel.fleet import GatewayRecord
from openeas.kernel.routing import ROUTING_CHANNEL
from openeas.kernel.states import ReplicaPhase, ServiceState, check_transition, routable
from openeas.spec import ServiceSpec, parse_stored_spec
from openeas.store import cold_starts as _cold
from openeas.store import gateways as _gateways
from openeas.store import request_usage as _requests
from openeas.store import routing_log as _routing_log
from openeas.store import usage as _usage
from openeas.store.group_schema import GroupMemberRow, GroupRow
from openeas.store.migrations import migrate
from openeas.store.routing import route_settings
from openeas.store.schema import (
    REPLICA_FIELDS,
    EventRow,
    Meta,
    ReplicaFields,
    ReplicaRow,
    ServiceRow,
    VersionRow,
)
from openeas.store.secrets import TokenCipher, new_token
from openeas.store.spec_secrets import seal, unseal

log = logging.getLogger("openeas.store")


# Session.info key: the routing version this transaction bumped to (see Store.session).
_ROUTING_BUMPED = "openeas.routing_bumped"


# The execution option that marks a read-only transaction (Store.read): on SQLite it begins
# DEFERRED, without the write lock (in WAL mode readers run beside the one writer); on PostgreSQL
# it reads one snapshot (REPEATABLE READ, READ ONLY) without the advisory lock below.
READ_ONLY = "openeas_read_only"

# The PostgreSQL advisory lock every store write transaction takes first (see make_engine): an arbitrary
# number, the same in every OpenEAS process that shares the database.
PG_TRANSACTION_LOCK = 0x0E_A5_0001

POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def is_postgres(url: str | None) -> bool:
    return url is not None and url.startswith(POSTGRES_SCHEMES)


def engine_url(url: str) -> str:
    """SQLAlchemy's URL for ``url``: ``postgresql://`` and ``postgres://`` use the psycopg (3) driver."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def make_engine(url: str) -> Engine:
    if is_postgres(url):
        return _postgres_engine(engine_url(url))
    engine = create_engine(url, future=True)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # We issue BEGIN ourselves (below); the driver must not open transactions on its own.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA foreign_keys=ON")
            # What is deleted or replaced (a secret stored in clear by an older release) is
            # overwritten with zeros, not left in free pages.
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            # Write transactions read, then write (the routing version, a replica's phase). A
            # deferred transaction that upgrades to a writer after another one committed fails at
            # once with "database is locked" whatever busy_timeout says; taking the write lock at
            # BEGIN makes concurrent writers (API threads, supervisors) wait their turn instead.
            # Read-only transactions never upgrade: they begin deferred and never wait for a writer.
            read_only = conn.get_execution_options().get(READ_ONLY, False)
            conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: str) -> Engine:
    engine = create_engine(url, future=True, pool_pre_ping=True)

    @event.listens_for(engine, "begin")
    def _serialize(conn: Connection) -> None:
        # As SQLite's BEGIN IMMEDIATE above: write transactions read, then write (the routing
        # version, a replica's phase), and under READ COMMITTED two of them could both read
        # version N and both write N+1. One transaction-scoped advisory lock taken first makes
        # store writes run one at a time, as on SQLite; it is released at COMMIT or ROLLBACK.
        # Read-only transactions (and readers outside the store: the gateways) do not take it;
        # they read one snapshot of what was committed, as SQLite's WAL readers do.
        if conn.get_execution_options().get(READ_ONLY, False):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        else:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_TRANSACTION_LOCK})")

    return engine


def db_path(data_dir: Path) -> Path:
    return data_dir / "openeas.db"


class Store:
    def __init__(self, data_dir: Path, *, url: str | None = None) -> None:
        """``url``: None for SQLite in ``data_dir`` (the default), or ``postgresql://…``. The
        secret key stays in ``data_dir`` whichever the backend."""
        self.data_dir = data_dir
        self.url = url
        data_dir.mkdir(parents=True, exist_ok=True)
        if url is None:  # private from the start: SQLite gives -wal and -shm the main file's mode
            os.close(os.open(db_path(data_dir), os.O_RDWR | os.O_CREAT, 0o600))
        self.engine = make_engine(url or f"sqlite:///{db_path(data_dir)}")
        self.cipher = TokenCipher(data_dir / "secret.key")
        migrate(self.engine, self.cipher)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self._reads = sessionmaker(self.read_engine, expire_on_commit=False)
        event.listen(self._reads, "before_flush", _no_writes)
        self._notify = self.engine.dialect.name == "postgresql"
        self._routing_listeners: list[Callable[[int], object]] = []

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s
        # Committed. Only now may readers be told: told earlier, they could read the old state.
        version = s.info.get(_ROUTING_BUMPED)
        if version is not None:
            self._routing_changed(version)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session: it does not wait for a writer, nor make writers wait (see
        make_engine). Writing in it raises (on PostgreSQL the server refuses it too)."""
        with self._reads.begin() as s:
            yield s

    # ---- meta -------------------------------------------------------------------------------
    def _get_meta(self, s: Session, key: str) -> str | None:
        row = s.get(Meta, key)
        return row.value if row else None

    def _set_meta(self, s: Session, key: str, value: str) -> None:
        row = s.get(Meta, key)
        if row:
            row.value = value
        else:
            s.add(Meta(key=key, value=value))

    def admin_token(self) -> str:
        """The control plane's admin token, created on first use, stored encrypted."""
        with self.session() as s:
            blob = self._get_meta(s, "admin_token")
            if blob:
                return self.cipher.decrypt(blob)
            token = new_token()
            self._set_meta(s, "admin_token", self.cipher.encrypt(token))
            return token

    def routing_version(self) -> int:
        with self.read() as s:
            return int(self._get_meta(s, "routing_version") or 0)

    def _bump_routing(self, s: Session, *, services: Iterable[str] = (), groups: Iterable[str] = ()) -> None:
        """The next routing version, in ``s``'s transaction, and what it changed: ``services`` and
        ``groups`` by name (gateways re-read only those: store/routing_log.py); name none and
        every gateway rebuilds its whole table, so a writer that cannot say stays correct."""
        version = int(self._get_meta(s, "routing_version") or 0) + 1
        self._set_meta(s, "routing_version", str(version))
        _routing_log.record(s, version, services, groups)
        if self._notify:  # delivered at COMMIT, to every gateway LISTENing (gateway/routing/pg_source.py)
            s.execute(text("SELECT pg_notify(:ch, :v)"), {"ch": ROUTING_CHANNEL, "v": str(version)})
        s.info[_ROUTING_BUMPED] = version  # session() calls the routing listeners after the commit

    def bump_routing(self) -> None:
        with self.session() as s:
            self._bump_routing(s)

    def add_routing_listener(self, listener: Callable[[int], object]) -> None:
        """Call ``listener(routing_version)`` after each commit that changed what is routed.

        Listeners run on the committing thread, so they must be quick and must not block (the
        server's is a non-blocking datagram to the gateway). Errors are logged, never raised:
        the commit has happened, and the gateway's poll will see it anyway.
        """
        self._routing_listeners.append(listener)

    def _routing_changed(self, version: int) -> None:
        for listener in self._routing_listeners:
            try:
                listener(version)
            except Exception:
                log.exception("routing listener %r failed", listener)

    # ---- gateways (store/gateways.py) -------------------------------------------------------------
    def gateways(self) -> tuple[list[GatewayRecord], float, int]:
        """Every registered gateway, the database's clock now (epoch seconds) and the routing
        version, read in one transaction."""
        with self.session() as s:
            version = int(self._get_meta(s, "routing_version") or 0)
            return _gateways.records(s), _gateways.db_now(s), version

    def advertise_gateway_stats(self, addr: str) -> bytes:
        """Remote gateways send their counters to ``addr`` (UDP "host:port"); returns the key
        that signs them."""
        with self.session() as s:
            return _gateways.advertise_stats(s, addr, self.cipher)

    # ---- services and versions ----------------------------------------------------------------
    def create_service(self, spec: ServiceSpec) -> ServiceRow:
        now = time.time()
        with self.session() as s:
            existing = s.get(ServiceRow, spec.name)
            if existing is not None:
                what = "is being deleted" if existing.state == ServiceState.DELETING else "already exists"
                raise Conflict(f"service '{spec.name}' {what}")
            if s.get(GroupRow, spec.name) is not None:
                raise Conflict(
                    f"'{spec.name}' is the name of a service group; services and groups share one namespace"
                )
            row = ServiceRow(
                name=spec.name,
                state=ServiceState.RUNNING.value,
                current_version=1,
                desired_replicas=_initial_replicas(spec),
                token_enc=self.cipher.encrypt(spec.token or new_token()),
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            s.flush()
            s.add(
                VersionRow(
                    service=spec.name,
                    version=1,
                    spec=_stored(spec, self.cipher),
                    route=route_settings(spec).to_dict(),
                    created_at=now,
                )
            )
            self._event(s, spec.name, "Created", "service created at version 1")
            self._bump_routing(s, services=(spec.name,))
            return row

    def add_version(self, spec: ServiceSpec, *, reason: str = "Updated", scale: bool = True) -> ServiceRow:
        """Store `spec` as the next immutable version and make it current."""
        now = time.time()
        with self.session() as s:
            row = self._service(s, spec.name)
            if row.state == ServiceState.DELETING:
                raise Conflict(f"service '{spec.name}' is being deleted")
            last = (
                s.scalar(
                    select(VersionRow.version)
                    .where(VersionRow.service == spec.name)
                    .order_by(VersionRow.version.desc())
                    .limit(1)
                )
                or 0
            )
            row.current_version = last + 1
            policy = spec.autoscaling_policy()
            if scale and policy is None:
                row.desired_replicas = spec.metadata.instance
            elif scale and policy is not None:  # autoscaled: an update keeps the count, within the new bounds
                row.desired_replicas = policy.clamp(row.desired_replicas)
            if spec.token:
                row.token_enc = self.cipher.encrypt(spec.token)
            row.updated_at = now
            s.add(
                VersionRow(
                    service=spec.name,
                    version=last + 1,
                    spec=_stored(spec, self.cipher),
                    route=route_settings(spec).to_dict(),
                    created_at=now,
                )
            )
            self._event(s, spec.name, reason, f"version {last + 1} is now current")
            self._bump_routing(s, services=(spec.name,))
            return row

    def rollback(self, name: str, version: int) -> ServiceRow:
        spec = self.version_spec(name, version)
        return self.add_version(spec, reason="RolledBack", scale=False)

    def _service(self, s: Session, name: str) -> ServiceRow:
        row = s.get(ServiceRow, name)
        if row is None:
            raise NotFound(f"service '{name}' not found")
        return row

    def get_service(self, name: str) -> ServiceRow:
        with self.read() as s:
            return self._service(s, name)

    def list_services(self) -> list[ServiceRow]:
        with self.read() as s:
            return list(s.scalars(select(ServiceRow).order_by(ServiceRow.name)))

    def version_spec(self, name: str, version: int) -> ServiceSpec:
        with self.read() as s:
            self._service(s, name)
            row = s.get(VersionRow, (name, version))
            if row is None:
                raise NotFound(f"service '{name}' has no version {version}")
            # it may have been stored by an older release: today's limits on new specs do not apply
            return parse_stored_spec(unseal(row.spec, self.cipher))

    def versions(self, name: str) -> list[VersionRow]:
        with self.read() as s:
            self._service(s, name)
            return list(
                s.scalars(select(VersionRow).where(VersionRow.service == name).order_by(VersionRow.version))
            )

    def token(self, name: str) -> str:
        return self.cipher.decrypt(self.get_service(name).token_enc)

    def update_service(self, name: str, *, event: tuple[str, str] | None = None, **fields: Any) -> ServiceRow:
        """Set desired-state fields; `event` = (reason, message) is recorded in the same transaction."""
        with self.session() as s:
            row = self._service(s, name)
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = time.time()
            if event is not None:
                self._event(s, name, *event)
            self._bump_routing(s, services=(name,))
            return row

    def purge_service(self, name: str) -> None:
        """Remove a deleted service's rows once no replica is left (its group memberships too:
        a new service of the same name joins no group by itself). Events are kept."""
        with self.session() as s:
            groups = s.scalars(select(GroupMemberRow.group).where(GroupMemberRow.service == name)).all()
            s.execute(delete(GroupMemberRow).where(GroupMemberRow.service == name))
            s.execute(delete(VersionRow).where(VersionRow.service == name))
            s.execute(delete(ServiceRow).where(ServiceRow.name == name))
            self._bump_routing(s, services=(name,), groups=groups)

    # ---- replicas -------------------------------------------------------------------------------
    def add_replica(
        self, service: str, version: int, *, workdir_root: Path, standby: bool = False
    ) -> ReplicaRow:
        """A new Pending replica; ``standby``: it is kept warmed out of routing once started."""
        now = time.time()
        rid = f"{service}-{uuid.uuid4().hex[:8]}"
        workdir = workdir_root / rid
        row = ReplicaRow(
            id=rid,
            service=service,
            version=version,
            standby=int(standby),
            phase=ReplicaPhase.PENDING.value,
            phase_times={ReplicaPhase.PENDING.value: now},
            cold_start={},
            workdir=str(workdir),
            log_path=str(workdir / "replica.log"),
            created_at=now,
            updated_at=now,
        )
        with self.session() as s:
            s.add(row)
            spec = s.get(VersionRow, (service, version))
            _usage.opened(s, row, spec.spec if spec is not None else {})
            what = "standby replica" if standby else "replica"
            msg = f"{what} {rid} created for version {version}"
            self._event(s, service, "ReplicaCreated", msg, replica=rid)
        return row

    def replicas(self, service: str | None = None) -> list[ReplicaRow]:
        with self.read() as s:
            q = select(ReplicaRow).order_by(ReplicaRow.created_at)
            if service is not None:
                q = q.where(ReplicaRow.service == service)
            return list(s.scalars(q))

    def get_replica(self, rid: str) -> ReplicaRow | None:
        with self.read() as s:
            return s.get(ReplicaRow, rid)

    def update_replica(self, rid: str, **fields: Unpack[ReplicaFields]) -> ReplicaRow | None:
        """Update fields of a replica; None when the row is gone.

        Only the names of :class:`ReplicaFields` are accepted (a typo raises TypeError). A
        `phase` change must be allowed by :data:`openeas.kernel.states.TRANSITIONS` (else
        IllegalTransition) and is timestamped in `phase_times`; a change of whether the
        replica is routable (or of its address while routable) bumps the routing version.
        """
        unknown = set(fields) - REPLICA_FIELDS
        if unknown:
            raise TypeError(f"update_replica: unknown field(s) {sorted(unknown)}")
        now = time.time()
        with self.session() as s:
            row = s.get(ReplicaRow, rid)
            if row is None:
                return None
            old_phase = row.phase
            was_routable = routable(row.phase, row.stopping, row.port)
            old_address = (row.host, row.port)
            new_phase = check_transition(old_phase, fields.get("phase", old_phase))
            for k, v in fields.items():
                # `stopping` is an integer column (0 or 1): PostgreSQL takes no bool there
                setattr(row, k, int(bool(v)) if k in ("stopping", "standby") else v)
            if new_phase != old_phase:
                row.phase_times = {**(row.phase_times or {}), new_phase.value: now}
                _usage.on_phase(s, row, old_phase, new_phase, now)
            is_routable = routable(row.phase, row.stopping, row.port)
            if was_routable != is_routable or (is_routable and old_address != (row.host, row.port)):
                self._bump_routing(s, services=(row.service,))
            row.updated_at = now
            return row

    def delete_replica(self, rid: str) -> None:
        with self.session() as s:
            row = s.get(ReplicaRow, rid)
            if row is not None:
                if routable(row.phase, row.stopping, row.port):
                    self._bump_routing(s, services=(row.service,))
                s.delete(row)
            _usage.closed(s, rid, time.time())

    def usage(self, *, service: str | None = None, since: float | None = None) -> list[_usage.UsageRow]:
        """The meter's record: each replica's billed life (store/usage.py)."""
        with self.read() as s:
            return _usage.usage_rows(s, service=service, since=since)

    def add_requests(self, counts: dict[str, int], wall: float) -> None:
        """Requests received by each service, added to the UTC hour of ``wall`` (the meter)."""
        with self.session() as s:
            _requests.add(s, counts, wall)

    def request_usage(
        self, *, service: str | None = None, since: float | None = None
    ) -> list[_requests.RequestUsageRow]:
        """The meter's record of requests: by service and UTC hour (store/request_usage.py)."""
        with self.read() as s:
            return _requests.rows(s, service=service, since=since)

    def record_cold_start(self, service: str, version: int, replica: str, spans: dict[str, Any]) -> None:
        """One start that reached Ready (store/cold_starts.py keeps each service's last 100)."""
        with self.session() as s:
            _cold.record(s, service, version, replica, time.time(), spans)

    def cold_starts(self, service: str, limit: int = _cold.KEEP_PER_SERVICE) -> list[_cold.ColdStartRow]:
        with self.read() as s:
            return _cold.recent(s, service, limit)

    # ---- events ---------------------------------------------------------------------------------
    def _event(
        self,
        s: Session,
        service: str,
        reason: str,
        message: str,
        *,
        type: str = "Normal",
        replica: str | None = None,
    ) -> None:
        s.add(
            EventRow(
                service=service, time=time.time(), type=type, reason=reason, message=message, replica=replica
            )
        )

    def record_event(
        self, service: str, reason: str, message: str, *, type: str = "Normal", replica: str | None = None
    ) -> None:
        with self.session() as s:
            self._event(s, service, reason, message, type=type, replica=replica)

    def events(self, service: str, limit: int = 100) -> list[EventRow]:
        with self.read() as s:
            rows = list(
                s.scalars(
                    select(EventRow)
                    .where(EventRow.service == service)
                    .order_by(EventRow.id.desc())
                    .limit(limit)
                )
            )
        return rows[::-1]


def _no_writes(session: Session, _flush_context: Any, _instances: Any) -> None:
    raise RuntimeError("Store.read() is read-only: write in Store.session()")


def _initial_replicas(spec: ServiceSpec) -> int:
    """`metadata.instance`, within the autoscaling bounds when the spec has a policy."""
    policy = spec.autoscaling_policy()
    return policy.clamp(spec.metadata.instance) if policy is not None else spec.metadata.instance


def _stored(spec: ServiceSpec, cipher: TokenCipher) -> dict[str, Any]:
    """The spec as stored in a version: the token is kept encrypted on the service, not here;
    env values and dockerAuth are sealed (store/spec_secrets.py)."""
    data = spec.to_dict()
    data.pop("token", None)
    return seal(data, cipher)

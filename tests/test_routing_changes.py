"""The incremental routing table: a gateway re-reads only what the versions since its own changed.

A real store (SQLite, and PostgreSQL) and the gateway's own routing source. Each case makes one
change after a first read and checks that the source read only the change log's names (or the
whole table where the log cannot say), that its table equals a whole read by a fresh source, and
that the routes it did not re-read are the very objects it held. The cases share one store per
backend (a migration each would cost more than the cases); each has services of its own.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from openeas.gateway.http.pool import UpstreamState
from openeas.gateway.routing import changes as changes_mod
from openeas.gateway.routing import source as source_mod
from openeas.gateway.routing.routes import RouteState, UpstreamKey, build_routes
from openeas.gateway.routing.source import StoreRoutingSource, routing_source
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.kernel.routing import DEFAULT_BALANCER, RoutingTable
from openeas.kernel.states import ReplicaPhase
from openeas.spec import parse_spec
from openeas.spec.group import parse_group
from openeas.store import Store, routing_log
from openeas.store.groups import GroupStore
from openeas.store.schema import ReplicaRow
from tests.pg_fixtures import STORE_BACKENDS, drop_database, new_database, pg_server  # noqa: F401

_PORTS = itertools.count(21000)


@pytest.fixture(scope="module", params=STORE_BACKENDS)
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """One store per backend for the module's cases."""
    url = None
    if request.param == "postgresql":
        url = new_database(request.getfixturevalue("pg_server"))
    store = Store(tmp_path_factory.mktemp("routing-changes"), url=url)
    yield store
    store.engine.dispose()
    if url is not None:
        drop_database(url)


def _spec(name: str, token: str | None = None, balancer: str | None = None) -> dict:
    meta: dict = {"name": name, "instance": 1}
    if balancer:
        meta["balancer"] = balancer
    return {
        "metadata": meta,
        "containers": [{"command": "serve --port 8000", "port": 8000}],
        "token": token or f"token-{name}-0123456789",
    }


def _ready(store: Store, service: str) -> str:
    """A Ready replica of ``service``, in one transaction (one routing version)."""
    now, rid = time.time(), f"{service}-{uuid.uuid4().hex[:8]}"
    with store.session() as s:
        s.add(ReplicaRow(id=rid, service=service, version=1, port=next(_PORTS), phase=ReplicaPhase.READY.value,
                         phase_times={}, cold_start={}, created_at=now, updated_at=now))  # fmt: skip
        store._bump_routing(s, services=(service,))
    return rid


class World:
    """Services a, b and c with one Ready replica each, and group g = a:60, b:40 (names with a
    prefix of this case's own)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.groups = GroupStore(store)
        p = self.p = f"t{uuid.uuid4().hex[:6]}"
        self.replicas = {}
        for name in ("a", "b", "c"):
            store.create_service(parse_spec(_spec(p + name)))
            self.replicas[name] = _ready(store, p + name)
        routes = [{"service": p + "a", "weight": 60}, {"service": p + "b", "weight": 40}]
        self.groups.create(parse_group({"name": p + "g", "routes": routes, "token": "group-token-0123456789"}))

    def source(self) -> StoreRoutingSource:
        return routing_source(self.store.data_dir, self.store.url)


def _add_replica(w: World) -> None:
    _ready(w.store, w.p + "a")


def _remove_replica(w: World) -> None:
    w.store.update_replica(w.replicas["a"], phase="Draining", stopping=True)


def _delete_replica(w: World) -> None:
    w.store.delete_replica(w.replicas["b"])


def _weight(w: World) -> None:
    w.groups.change(w.p + "g", weights={w.p + "a": 10, w.p + "b": 90})


def _group_route(w: World) -> None:
    w.groups.join(w.p + "g", w.p + "c", 5)


def _group_deleted(w: World) -> None:
    w.groups.delete(w.p + "g")


def _new_service(w: World) -> None:
    w.store.create_service(parse_spec(_spec(w.p + "d")))
    _ready(w.store, w.p + "d")


def _new_token_and_balancer(w: World) -> None:
    w.store.add_version(parse_spec(_spec(w.p + "b", token="token-b-rotated-0123456789", balancer="round-robin")))


def _stopped(w: World) -> None:
    w.store.update_service(w.p + "c", state="Stopped")


def _service_deleted(w: World) -> None:
    w.store.update_service(w.p + "a", state="Deleting")


def _service_purged(w: World) -> None:
    # purge takes its group memberships with it: the group is re-read too
    w.store.update_service(w.p + "b", state="Deleting")
    w.store.delete_replica(w.replicas["b"])
    w.store.purge_service(w.p + "b")


def _unnamed_bump(w: World) -> None:
    w.store.bump_routing()  # a writer that does not say what it changed


def _gap(w: World) -> None:
    # Versions the log no longer covers (as pruned): the gateway cannot know what they changed.
    _ready(w.store, w.p + "a")
    with w.store.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {routing_log.RoutingChangeRow.__tablename__}")


def _many(w: World) -> None:
    # more names than MAX_CHANGED: reading everything is as cheap
    with w.store.session() as s:
        w.store._bump_routing(s, services=[f"ghost{i}" for i in range(changes_mod.MAX_CHANGED + 1)])


# (id, change, how the source reads it, services re-read (not the same objects as before))
CASES: list[tuple[str, Callable[[World], None], str, set[str]]] = [
    ("replica-ready", _add_replica, "changes", {"a"}),
    ("replica-leaves", _remove_replica, "changes", {"a"}),
    ("replica-deleted", _delete_replica, "changes", {"b"}),
    ("group-weight", _weight, "changes", set()),
    ("group-member-joins", _group_route, "changes", set()),
    ("group-deleted", _group_deleted, "changes", set()),
    ("service-created", _new_service, "changes", {"d"}),
    ("token-and-balancer", _new_token_and_balancer, "changes", {"b"}),
    ("service-stopped", _stopped, "changes", {"c"}),
    ("service-deleting", _service_deleted, "changes", {"a"}),
    ("service-purged", _service_purged, "changes", {"b"}),
    ("unnamed-bump", _unnamed_bump, "full", {"a", "b", "c"}),
    ("gap-in-log", _gap, "full", {"a", "b", "c"}),
    ("too-many-names", _many, "full", {"a", "b", "c"}),
]


def _whole(store: Store) -> RoutingTable:
    fresh = routing_source(store.data_dir, store.url)
    try:
        table = fresh.poll()
        assert table is not None
        return table
    finally:
        fresh.close()


@pytest.mark.parametrize(("change", "read", "reread"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_change_is_read_alone_and_the_table_equals_a_whole_read(
    shared: Store, change: Callable[[World], None], read: str, reread: set[str]
) -> None:
    w = World(shared)
    source = w.source()
    try:
        before = source.poll()
        assert before is not None and source.reads == {"full": 1, "changes": 0}
        change(w)
        after = source.poll()
        assert after is not None
        assert source.reads == {"full": 1 + (read == "full"), "changes": int(read == "changes")}
        assert after.version == shared.routing_version()
        assert after.to_dict() == _whole(shared).to_dict()
        kept = {name for name, route in after.routes.items() if before.routes.get(name) is route}
        if read == "changes":  # the others are the objects held before
            assert kept == set(after.routes) - {w.p + n for n in reread}
        assert source.poll() is None  # nothing new: one indexed read
    finally:
        source.close()


def test_a_gateway_further_behind_than_the_log_reads_the_whole_table(
    shared: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The log keeps KEEP_VERSIONS versions (pinned below); here 3, pruned at every even version:
    # after 5 versions the first one the gateway needs is gone.
    w = World(shared)
    source = w.source()
    assert source.poll() is not None
    monkeypatch.setattr(routing_log, "KEEP_VERSIONS", 3)
    monkeypatch.setattr(routing_log, "PRUNE_EVERY", 2)
    for _ in range(5):
        _ready(shared, w.p + "c")  # each Ready is one version
    after = source.poll()
    assert after is not None and source.reads == {"full": 2, "changes": 0}
    assert len(after.routes[w.p + "c"].upstreams) == 6
    source.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (routing_log.KEEP_VERSIONS, 1000),
        (routing_log.PRUNE_EVERY, 100),
        (changes_mod.MAX_CHANGED, 500),
        (source_mod.TOKEN_SLACK, 1024),
    ],
    ids=["keep-versions", "prune-every", "max-changed", "token-slack"],
)
def test_documented_defaults(value: int, expected: int) -> None:
    assert value == expected


def test_concurrent_changes_are_never_missed(shared: Store) -> None:
    # A writer thread changes replicas and weights while the source reads as fast as it can:
    # the last table equals a whole read, and reads after the first were of changes only.
    w = World(shared)
    source = w.source()
    assert source.poll() is not None
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(10):
                rid = _ready(shared, w.p + "abc"[i % 3])
                if i % 2:
                    shared.update_replica(rid, phase="Draining", stopping=True)
                w.groups.change(w.p + "g", weights={w.p + "a": i, w.p + "b": 100 - i})
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    last = None
    while not done.is_set():
        last = source.poll() or last
    writer.join()
    last = source.poll() or last
    source.close()
    assert last is not None and last.version == shared.routing_version()
    assert last.to_dict() == _whole(shared).to_dict()
    assert source.reads["full"] == 1 and source.reads["changes"] >= 2


def test_apply_builds_only_the_changed_routes_and_retires_what_left(shared: Store) -> None:
    w = World(shared)
    source = w.source()
    first = source.poll()
    assert first is not None
    upstreams: dict[UpstreamKey, UpstreamState] = {}
    metrics = GatewayMetrics()
    routes: dict[str, RouteState] = build_routes(first, {}, upstreams, metrics)
    a, b, c = (w.p + n for n in "abc")
    gone = routes[a].upstreams[0]
    _remove_replica(w)
    second = source.poll()
    assert second is not None
    again = build_routes(second, routes, upstreams, metrics)
    assert all(again[n] is routes[n] for n in routes if n != a)  # untouched: the same states
    assert again[a] is not routes[a] and again[a].upstreams == []
    assert gone not in upstreams.values()  # retired
    assert routes[b].upstreams[0] in upstreams.values() and routes[c].upstreams[0] in upstreams.values()
    source.close()


@pytest.mark.parametrize(
    "balancers",
    [
        # Services with the same route record share one parse of it (a whole read parses each
        # distinct record once); one with a record of its own still gets its own.
        pytest.param(("round-robin", None, "round-robin", "power-of-two", None), id="shared-and-own"),
    ],
)
def test_a_whole_read_gives_each_service_its_own_settings(shared: Store, balancers: tuple[str | None, ...]) -> None:
    p = f"t{uuid.uuid4().hex[:6]}"
    for i, balancer in enumerate(balancers):
        shared.create_service(parse_spec(_spec(f"{p}{i}", balancer=balancer)))
    source = routing_source(shared.data_dir, shared.url)
    try:
        table = source.poll()
    finally:
        source.close()
    assert table is not None
    got = [table.routes[f"{p}{i}"].balancer for i in range(len(balancers))]
    assert got == [b or DEFAULT_BALANCER for b in balancers]

"""Service groups in the store (real SQLite and PostgreSQL): create/apply/change/rollback/join/leave, the routing
publication the gateway reads, the traffic times behind the 48-hour rule, and the v3 migration."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from openeas.errors import Conflict, NotFound, SpecError
from openeas.gateway.routing.source import StoreRoutingSource, routing_source
from openeas.spec import parse_spec
from openeas.spec.group import parse_group
from openeas.store import MIGRATIONS, Store, db_path
from openeas.store.groups import GroupStore

HOUR = 3600.0


def spec(name: str, **meta: object) -> object:
    return parse_spec(
        {"metadata": {"name": name, "instance": 1, **meta}, "containers": [{"command": "serve", "port": 8000}]}
    )


@pytest.fixture
def gs(tmp_path: Path, store_url: str | None) -> GroupStore:
    store = Store(tmp_path, url=store_url)
    for name in ("blue", "green", "canary"):
        store.create_service(spec(name))  # type: ignore[arg-type]
    return GroupStore(store)


def group(**kw: object) -> object:
    return parse_group({"name": "shop", "routes": [{"service": "blue", "weight": 1000}, {"service": "green"}], **kw})


def test_create_publishes_the_group_to_the_gateways_source(gs: GroupStore) -> None:
    before = gs.store.routing_version()
    gs.create(group(token="group-token-123"))  # type: ignore[arg-type]
    assert gs.store.routing_version() == before + 1
    table = routing_source(gs.store.data_dir, gs.store.url).poll()
    assert table is not None
    g = table.groups["shop"]
    assert g.token == "group-token-123"
    assert [(m.service, m.weight) for m in g.members] == [("blue", 1000), ("green", 0)]
    assert [e.reason for e in gs.store.events("shop")] == ["GroupCreated"]


@pytest.mark.parametrize(
    ("setup", "make", "error", "message"),
    [
        (None, lambda: parse_group({"name": "shop", "routes": [{"service": "nope"}]}), SpecError, "routes[0].service: no service 'nope'"),
        (None, lambda: parse_group({"name": "blue"}), Conflict, "'blue' is the name of a service"),
        ("create", group, Conflict, "group 'shop' already exists"),
    ],
    ids=["unknown-member", "clash-with-service", "exists"],
)
def test_create_refuses(gs: GroupStore, setup: str | None, make: object, error: type, message: str) -> None:
    if setup:
        gs.create(group())  # type: ignore[arg-type]
    with pytest.raises(error) as e:
        gs.create(make())  # type: ignore[operator]
    assert message in str(e.value)


def test_a_service_cannot_take_a_groups_name(gs: GroupStore) -> None:
    gs.create(group())  # type: ignore[arg-type]
    with pytest.raises(Conflict, match="'shop' is the name of a service group"):
        gs.store.create_service(spec("shop"))  # type: ignore[arg-type]


def test_weights_change_validated_as_a_whole_and_roll_back_in_one_call(gs: GroupStore) -> None:
    gs.create(group())  # type: ignore[arg-type]
    gs.change("shop", weights={"blue": 900, "green": 100})
    g = gs.change("shop", weights={"blue": 0, "green": 1000})
    assert [(m.service, m.weight) for m in g.members] == [("blue", 0), ("green", 1000)]
    with pytest.raises(SpecError, match="nope: not a member of group 'shop'"):
        gs.change("shop", weights={"nope": 1})
    with pytest.raises(SpecError, match="would mirror to itself"):
        gs.change("shop", mirror_weights={"green": 5})  # green has weight 1000
    g = gs.rollback("shop")
    assert [(m.service, m.weight) for m in g.members] == [("blue", 900), ("green", 100)]
    reasons = [e.reason for e in gs.store.events("shop")]
    assert reasons == ["GroupCreated", "WeightsChanged", "WeightsChanged", "RolledBack"]


def test_join_leave_and_apply(gs: GroupStore) -> None:
    gs.create(group())  # type: ignore[arg-type]
    g = gs.join("shop", "canary")
    assert g.member("canary") is not None and g.member("canary").weight == 0  # type: ignore[union-attr]
    with pytest.raises(Conflict, match="already a member"):
        gs.join("shop", "canary")
    gs.leave("shop", "canary")
    with pytest.raises(NotFound):
        gs.leave("shop", "canary")
    g, created = gs.apply(parse_group({"name": "shop", "traffic_mode": "auto", "routes": [{"service": "green"}]}))
    assert not created and g.traffic_mode == "auto" and [m.service for m in g.members] == ["green"]


def test_metadata_group_creates_then_joins(gs: GroupStore) -> None:
    assert gs.join_from_spec("blue", "eas_group") == "group 'eas_group' created with blue as its only member"
    assert gs.join_from_spec("green", "eas_group") == "green joined group 'eas_group' with weight 0"
    assert gs.join_from_spec("green", "eas_group") is None  # a new version of a member: nothing to do
    assert [(m.service, m.weight) for m in gs.get("eas_group").members] == [("blue", 1000), ("green", 0)]


def test_the_48_hour_rule(gs: GroupStore) -> None:
    gs.create(group())  # type: ignore[arg-type]
    now = gs.get("shop").updated_at
    serving = gs.traffic_guard("blue", now)
    assert serving is not None and serving.serving
    assert gs.traffic_guard("green", now) is None  # never had traffic
    gs.change("shop", weights={"blue": 0, "green": 1000})
    left = gs.get("shop").member("blue").traffic_until  # type: ignore[union-attr]
    assert left is not None
    hold = gs.traffic_guard("blue", left + 47 * HOUR)
    assert hold is not None and not hold.serving
    assert "left the traffic of group 'shop' 47.0 h ago" in hold.message("blue", left + 47 * HOUR)
    assert "(1.0 h to go)" in hold.message("blue", left + 47 * HOUR)
    assert gs.traffic_guard("blue", left + 48 * HOUR) is None  # kept 48 h, not more
    gs.leave("shop", "blue")  # leaving the group does not end the protection
    assert gs.traffic_guard("blue", left + 1 * HOUR) is not None
    assert gs.get("shop").member("green").zero_since() is None  # type: ignore[union-attr]


def test_a_v2_database_is_migrated_to_groups(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.create_service(spec("blue"))  # type: ignore[arg-type]
    store.engine.dispose()
    with closing(sqlite3.connect(db_path(tmp_path))) as db:
        for t in ("group_members", "groups", "rollouts"):
            db.execute(f"DROP TABLE {t}")
        db.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
        db.commit()
    assert StoreRoutingSource(tmp_path).poll() is not None  # a gateway reads a v2 database: no groups
    store = Store(tmp_path)
    with closing(sqlite3.connect(db_path(tmp_path))) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(len(MIGRATIONS))
    GroupStore(store).create(parse_group({"name": "shop", "routes": [{"service": "blue", "weight": 1}]}))


def test_a_purged_service_leaves_its_groups(gs: GroupStore) -> None:
    gs.create(group())  # type: ignore[arg-type]
    gs.store.purge_service("green")
    assert [m.service for m in gs.get("shop").members] == ["blue"]
    gs.store.create_service(spec("green"))  # type: ignore[arg-type]
    assert [m.service for m in gs.get("shop").members] == ["blue"]  # a new "green" joins nothing by itself

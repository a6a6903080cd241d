"""The 180-day rule (docs/archive.md): the pure decision, the loop on a FakeClock over a real
store, archive → restore whole, and one e2e on a real server with the rule in seconds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from openeas.controller.archiver import Archiver, ArchiveRule
from openeas.kernel.clock import FakeClock
from openeas.kernel.dormancy import ARCHIVE_AFTER_DAYS, DAY_S, WARN_LEADS_S, Dormancy, dormant, judge
from openeas.kernel.states import ServiceState, ServiceStatus
from openeas.spec import parse_spec
from openeas.spec.group import parse_group
from openeas.store import Store
from openeas.store.archive import archived, dormancies, restore_service
from openeas.store.groups import GroupStore

T0 = 1_700_000_000.0
AFTER = 180 * DAY_S


def test_documented_defaults() -> None:
    assert ARCHIVE_AFTER_DAYS == 180
    assert WARN_LEADS_S == (30 * DAY_S, 7 * DAY_S, DAY_S)
    rule = ArchiveRule.from_env({})
    assert (rule.after_s, rule.leads_s, rule.interval_s) == (AFTER, WARN_LEADS_S, 60.0)
    assert ArchiveRule.from_env({"OPENEAS_ARCHIVE_AFTER_DAYS": "0"}).describe() == "never"
    # the test option: 3.6 s, the warnings at 30/180, 7/180, 1/180 of it, a look every 3.6/20 s
    fast = ArchiveRule.from_env({"OPENEAS_ARCHIVE_AFTER_S": "3.6"})
    assert fast.after_s == 3.6 and fast.leads_s == pytest.approx((0.6, 0.14, 0.02))
    assert fast.interval_s == pytest.approx(0.18)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        pytest.param(ServiceStatus.STOPPED, True, id="stopped"),
        pytest.param(ServiceStatus.FAILED, True, id="failed"),
        pytest.param(ServiceStatus.PENDING, True, id="pending"),
        pytest.param(ServiceStatus.RUNNING, False, id="running"),
        pytest.param(ServiceStatus.UPDATING, False, id="updating"),
        pytest.param(ServiceStatus.DEGRADED, False, id="degraded-serves"),
        pytest.param(ServiceStatus.DELETING, False, id="deleting"),
    ],
)
def test_which_statuses_are_dormant(status: ServiceStatus, expected: bool) -> None:
    assert dormant(status) is expected


@pytest.mark.parametrize(
    ("state", "is_dormant", "now", "after", "want_state", "warn", "archive"),
    [
        pytest.param(Dormancy(), True, T0, AFTER, Dormancy(T0), None, False, id="starts-the-count"),
        pytest.param(Dormancy(T0), False, T0 + 5, AFTER, Dormancy(), None, False, id="running-clears"),
        pytest.param(Dormancy(T0), True, T0 + AFTER, 0.0, Dormancy(), None, False, id="zero-is-never"),
        # 180 - 30 = 150 days in: the 30-day warning
        pytest.param(Dormancy(T0), True, T0 + 150 * DAY_S, AFTER, Dormancy(T0, 30 * DAY_S), 30 * DAY_S, False,
                     id="warn-30-days"),
        pytest.param(Dormancy(T0, 30 * DAY_S), True, T0 + 160 * DAY_S, AFTER, Dormancy(T0, 30 * DAY_S), None,
                     False, id="warned-once"),
        pytest.param(Dormancy(T0, 30 * DAY_S), True, T0 + 173 * DAY_S, AFTER, Dormancy(T0, 7 * DAY_S),
                     7 * DAY_S, False, id="warn-7-days"),
        # the server was down from day 100 to day 179.5: only the 1-day warning, not all three
        pytest.param(Dormancy(T0), True, T0 + 179.5 * DAY_S, AFTER, Dormancy(T0, DAY_S), DAY_S, False,
                     id="after-a-pause-only-the-latest"),
        pytest.param(Dormancy(T0, DAY_S), True, T0 + AFTER, AFTER, Dormancy(T0, DAY_S), None, True,
                     id="archive-at-the-deadline"),
        # a 20-day rule has no 30-day warning; 13 days in (7 before): the 7-day one
        pytest.param(Dormancy(T0), True, T0 + 5 * DAY_S, 20 * DAY_S, Dormancy(T0), None, False,
                     id="short-rule-no-30-day"),
        pytest.param(Dormancy(T0), True, T0 + 13 * DAY_S, 20 * DAY_S, Dormancy(T0, 7 * DAY_S), 7 * DAY_S,
                     False, id="short-rule-7-day"),
    ],
)  # fmt: skip
def test_judge(
    state: Dormancy, is_dormant: bool, now: float, after: float, want_state: Dormancy, warn: float | None,
    archive: bool,
) -> None:
    v = judge(state, is_dormant, now, after)
    assert (v.state, v.warn, v.archive) == (want_state, warn, archive)
    if warn is not None or archive:
        assert "not Running since" in v.message


SPEC = {
    "metadata": {"name": "sleepy", "instance": 1},
    "containers": [{"image": "x", "command": "python -m openeas.testserver --port 8000", "port": 8000}],
    "token": "sleepy-token-0123456789abcdef",
}


def _deploy(store: Store) -> None:
    store.create_service(parse_spec(SPEC))
    store.add_version(parse_spec({**SPEC, "metadata": {"name": "sleepy", "instance": 2}}))
    GroupStore(store).create(parse_group({"name": "shop", "routes": [{"service": "sleepy", "weight": 1}]}))


def test_a_stopped_service_is_warned_archived_and_restored_whole_on_a_fake_clock(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    _deploy(store)
    store.update_service("sleepy", state=ServiceState.STOPPED, event=("Stopped", "stopped"))
    before = [(e.reason, e.message) for e in store.events("sleepy")]
    clock = FakeClock()
    # a look every 6 h: the warnings fall on looks exactly (150, 173 and 179 days in)
    archiver = Archiver(store, clock, ArchiveRule(AFTER, WARN_LEADS_S, 6 * 3600.0))
    start = clock.wall()

    async def live() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(archiver.run(stop))
        await clock.advance(149 * DAY_S)
        assert dormancies(store)["sleepy"].since == start and not _warnings(store)
        await clock.advance(30 * DAY_S)  # day 179
        assert _warnings(store) == 3  # 30, 7, 1 days before
        assert store.get_service("sleepy").state == ServiceState.STOPPED
        await clock.advance(DAY_S)  # day 180: archived, marked Deleting
        assert store.get_service("sleepy").state == ServiceState.DELETING
        stop.set()
        await task

    asyncio.run(live())
    [row] = archived(store)
    assert row.dormant_since == start and row.archived_at == start + AFTER
    assert [v["version"] for v in row.document["versions"]] == [1, 2]
    assert [m["group"] for m in row.document["groups"]] == ["shop"]
    assert "sleepy" not in dormancies(store)
    store.purge_service("sleepy")  # what the reconciler does once no replica is left
    restored = restore_service(store, "sleepy", T0)
    assert (restored["versions"], restored["groups"], restored["state"]) == (2, ["shop"], "Stopped")
    svc = store.get_service("sleepy")
    assert (svc.state, svc.current_version, svc.desired_replicas) == ("Stopped", 2, 2)
    assert store.token("sleepy") == SPEC["token"]
    assert store.version_spec("sleepy", 2).metadata.instance == 2
    assert [m.service for m in GroupStore(store).get("shop").members] == ["sleepy"]
    events = [(e.reason, e.message) for e in store.events("sleepy", 1000)]
    assert events[: len(before)] == before  # the archived events back, in order
    assert [r for r, _ in events[len(before) :]] == ["ArchiveSoon"] * 3 + ["Archived", "Restored"]
    assert archived(store) == []


def _warnings(store: Store) -> int:
    return sum(e.reason == "ArchiveSoon" for e in store.events("sleepy", 1000))


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        pytest.param("none", "no archived service 'sleepy'", id="nothing-archived"),
        pytest.param("deleting", "a service of that name is still being deleted", id="not-purged-yet"),
        pytest.param("redeployed", "a service of that name exists", id="name-taken"),
    ],
)
def test_restore_refuses(tmp_path: Path, setup: str, error: str) -> None:
    from openeas.errors import OpenEASError
    from openeas.store.archive import archive_service

    store = Store(tmp_path / "data")
    store.create_service(parse_spec(SPEC))
    if setup != "none":
        archive_service(store, "sleepy", T0, "test")
    if setup == "redeployed":
        store.purge_service("sleepy")
        store.create_service(parse_spec(SPEC))
    with pytest.raises(OpenEASError, match=error):
        restore_service(store, "sleepy", T0)


def test_archive_then_restore_on_a_real_server(tmp_path: Path) -> None:
    """The rule at 4 s (the hidden test option): stop → warned → archived → gone → restored → started."""
    from typer.testing import CliRunner

    from openeas.cli.main import app
    from tests.harness import new_server, reasons, service_spec, stop_and_reap, wait_for

    srv = new_server(tmp_path / "data")
    srv.extra_args.extend(["--archive-after-s", "4"])
    srv.start()
    try:
        srv.client.deploy(service_spec("sleepy"))
        info = lambda: srv.client.request("GET", "/api/v1/services/sleepy/call-info")  # noqa: E731
        token = info()["token"]
        srv.client.stop("sleepy")
        names = lambda: [s["name"] for s in srv.client.list()]  # noqa: E731
        wait_for(lambda: "sleepy" not in names(), timeout_s=60, what="the archived service deleted")
        env = {"OPENEAS_DATA_DIR": str(srv.data_dir), "OPENEAS_SERVER": None, "OPENEAS_ADMIN_TOKEN": None}
        ls = CliRunner().invoke(app, ["archive", "ls"], env=env)
        assert ls.exit_code == 0 and "sleepy" in ls.output and "after 4s not Running" in ls.output, ls.output
        r = CliRunner().invoke(app, ["restore", "sleepy"], env=env)
        assert r.exit_code == 0 and "sleepy restored (Stopped): 1 version(s)" in r.output, r.output
        srv.client.start("sleepy")  # Running again before the 4 s rule could archive it anew
        assert info()["token"] == token
        assert {"Created", "Stopped", "ArchiveSoon", "Archived", "Restored"} <= set(reasons(srv, "sleepy"))
        again = CliRunner().invoke(app, ["restore", "sleepy"], env=env)
        assert again.exit_code == 1 and "no archived service 'sleepy'" in again.output
    finally:
        stop_and_reap(srv)

"""The meter (issue 24 §3): replica-seconds by instance type from the replica lifecycle, cold
starts x bytes fetched, by service, day or month; the store's record of it (store/usage.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from openeas.cost import parse_catalog
from openeas.cost.meter import Requests, Usage, meter, render_csv, render_text, split
from openeas.kernel.states import ReplicaPhase
from openeas.spec import parse_spec
from openeas.store import Store

CATALOG = parse_catalog(
    {
        "currency": "RMB",
        "per_request_fee": 0.0001,
        "storage_read_per_gb": 0.5,
        "instance_types": [
            {
                "name": "a10",
                "cpu": 8,
                "memory_gb": 30,
                "gpu": {"kind": "A10", "count": 1},
                "price_per_hour": 5.0,
                "spot_discount": 0.6,
            },
            {"name": "small", "cpu": 2, "memory_gb": 4, "price_per_hour": 0.5},
        ],
    },
    "test",
)
A10 = {"instance_type": "a10"}
SPOT = {"instances": [{"type": "a10", "spot": True}]}
SMALL = {"cpu": 1, "memory": 2000}
NONE: dict[str, Any] = {}


def ts(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


T0 = ts("2026-03-31T22:00:00")
H = 3600.0


def u(
    service: str, start: float, end: float | None, res: dict[str, Any], starts: int = 0, gb: float = 0
) -> Usage:
    return Usage(service, f"{service}-{start}", start, end, res, starts, int(gb * 10**9))


def brief(report: Any) -> list[tuple[Any, ...]]:
    return [
        (r["key"], r["instance_type"], r["replica_seconds"], r["compute"], r["reads"], r["total"])
        for r in report.rows
    ]


@pytest.mark.parametrize(
    ("usages", "by", "since", "now", "rows", "total"),
    [
        # 2 h x 5 RMB/h = 10
        pytest.param(
            [u("svc", T0, T0 + 2 * H, A10)],
            "service",
            None,
            T0 + 9 * H,
            [("svc", "a10", 7200, 10.0, 0.0, 10.0)],
            10.0,
            id="ended-replica",
        ),
        # still billed: counts up to now (3 h x 5 = 15)
        pytest.param(
            [u("svc", T0, None, A10)],
            "service",
            None,
            T0 + 3 * H,
            [("svc", "a10", 10800, 15.0, 0.0, 15.0)],
            15.0,
            id="running-until-now",
        ),
        # 22:00 → 01:00 crosses midnight and the month: 2 h on 03-31, 1 h on 04-01
        pytest.param(
            [u("svc", T0, T0 + 3 * H, A10)],
            "day",
            None,
            T0 + 9 * H,
            [("2026-03-31", "a10", 7200, 10.0, 0.0, 10.0), ("2026-04-01", "a10", 3600, 5.0, 0.0, 5.0)],
            15.0,
            id="by-day-split-at-midnight",
        ),
        pytest.param(
            [u("svc", T0, T0 + 3 * H, A10)],
            "month",
            None,
            T0 + 9 * H,
            [("2026-03", "a10", 7200, 10.0, 0.0, 10.0), ("2026-04", "a10", 3600, 5.0, 0.0, 5.0)],
            15.0,
            id="by-month-split",
        ),
        # the window starts 1 h in: 2 of the 3 hours
        pytest.param(
            [u("svc", T0, T0 + 3 * H, A10)],
            "service",
            T0 + H,
            T0 + 9 * H,
            [("svc", "a10", 7200, 10.0, 0.0, 10.0)],
            10.0,
            id="since-clips",
        ),
        # spot at 60% off: 1 h x 5 x 0.4 = 2
        pytest.param(
            [u("svc", T0, T0 + H, SPOT)],
            "service",
            None,
            T0 + 9 * H,
            [("svc", "a10", 3600, 2.0, 0.0, 2.0)],
            2.0,
            id="spot-price",
        ),
        # metadata cpu 1 / 2000 MB: the cheapest fit, small at 0.5/h; two replicas x 1 h = 1.0
        pytest.param(
            [u("a", T0, T0 + H, SMALL), u("a", T0, T0 + H, SMALL)],
            "service",
            None,
            T0 + 9 * H,
            [("a", "small", 7200, 1.0, 0.0, 1.0)],
            1.0,
            id="metadata-mapped",
        ),
        # 30 cold starts reading 14 GB in all at 0.5/GB = 7 (plus 1 h x 5)
        pytest.param(
            [u("svc", T0, T0 + H, A10, starts=30, gb=14)],
            "service",
            None,
            T0 + 9 * H,
            [("svc", "a10", 3600, 5.0, 7.0, 12.0)],
            12.0,
            id="cold-start-reads",
        ),
        # nothing to price: its seconds are shown, it adds nothing to the total
        pytest.param(
            [u("x", T0, T0 + H, NONE), u("y", T0, T0 + H, A10)],
            "service",
            None,
            T0 + 9 * H,
            [("x", None, 3600, None, 0.0, None), ("y", "a10", 3600, 5.0, 0.0, 5.0)],
            5.0,
            id="unpriced",
        ),
        pytest.param([], "day", None, T0, [], 0.0, id="nothing-metered"),
    ],
)
def test_meter(
    usages: list[Usage], by: Any, since: float | None, now: float, rows: list[Any], total: float
) -> None:
    report = meter(usages, CATALOG, now, by=by, since=since)
    assert brief(report) == rows
    assert report.total == pytest.approx(total)


def test_unpriced_is_named_never_priced_from_a_default() -> None:
    report = meter([u("x", T0, T0 + H, NONE)], CATALOG, T0 + H)
    assert report.unpriced_seconds == 3600
    assert report.notes == [
        "x: unpriced (no cloud.computing.instance_type, no cloud.computing.instances, "
        "no metadata.cpu/memory/gpu: nothing to price)"
    ]
    assert "unpriced" in render_text(report.as_dict())


def test_split_is_exact_across_days() -> None:
    parts = split("day", "svc", T0, T0 + 50 * H)  # 2 h + 24 h + 24 h
    assert [(k, s / H) for k, s in parts] == [("2026-03-31", 2), ("2026-04-01", 24), ("2026-04-02", 24)]


def test_csv_has_a_header_and_one_line_per_row() -> None:
    text = render_csv(meter([u("svc", T0, T0 + H, A10)], CATALOG, T0 + H).as_dict())
    assert text.splitlines() == [
        "key,instance_type,price_per_hour,replica_seconds,replica_hours,compute,cold_starts,bytes_fetched,reads,"
        "requests,fees,total,currency",
        "svc,a10,5.0,3600.0,1.0,5.0,0,0,0.0,0,0.0,5.0,RMB",
    ]


@pytest.mark.parametrize(
    ("by", "since", "rows", "total"),
    [
        # svc: 1 h of a10 (5.00) + 10,000 requests x 0.0001 (1.00); web: requests only (0.50)
        pytest.param(
            "service",
            None,
            [("svc", "a10", 10_000, 1.0, 6.0), ("web", None, 5_000, 0.5, 0.5)],
            6.5,
            id="by-service",
        ),
        # 22:00 on 03-31 holds the replica hour and 4,000 requests; 6,000 fall at 00:00 on 04-01
        pytest.param(
            "day",
            None,
            [("2026-03-31", "a10", 4_000, 0.4, 5.4), ("2026-04-01", None, 11_000, 1.1, 1.1)],
            6.5,
            id="by-day-across-midnight",
        ),
        # since 23:30: the 23:00 hour (it ends after) counts whole, the 22:00 hour does not
        pytest.param(
            "service",
            T0 + 1.5 * H,
            [("svc", None, 6_000, 0.6, 0.6), ("web", None, 5_000, 0.5, 0.5)],
            1.1,
            id="since-takes-whole-hours",
        ),
    ],
)
def test_requests_are_priced_by_the_per_request_fee(
    by: Any, since: float | None, rows: list[tuple[Any, ...]], total: float
) -> None:
    reqs = [
        Requests("svc", T0, 4_000),
        Requests("svc", T0 + 2 * H, 6_000),
        Requests("web", T0 + 2 * H, 5_000),
    ]
    report = meter([u("svc", T0, T0 + H, A10)], CATALOG, T0 + 3 * H, by=by, since=since, requests=reqs)
    got = [(r["key"], r["instance_type"], r["requests"], r["fees"], r["total"]) for r in report.rows]
    assert got == rows
    assert report.total == pytest.approx(total)
    assert report.notes == []  # a row of requests only is not "unpriced"
    assert "REQUESTS" in render_text(report.as_dict())


SPEC = {
    "metadata": {"name": "metered", "instance": 1, "cpu": 1, "memory": 2000},
    "containers": [{"image": "x", "command": "true", "port": 8000}],
}


def test_the_store_records_a_replicas_billed_life(tmp_path: Path) -> None:
    """Created → Starting (a cold start, with its fetch bytes) → Ready → restart → Stopped → deleted."""
    store = Store(tmp_path)
    store.create_service(parse_spec(SPEC))
    row = store.add_replica("metered", 1, workdir_root=tmp_path)
    P = ReplicaPhase
    store.update_replica(row.id, phase=P.FETCHING)
    store.update_replica(row.id, phase=P.STARTING, cold_start={"fetch": {"bytes": 1000}})
    store.update_replica(row.id, phase=P.WARMING)
    store.update_replica(row.id, phase=P.READY)
    store.update_replica(row.id, phase=P.FAILED)
    store.update_replica(row.id, phase=P.STARTING, cold_start={"fetch": {"bytes": 500}})
    [live] = store.usage()
    assert (live.ended_at, live.cold_starts, live.bytes_fetched) == (None, 2, 1500)
    assert live.resources == {"instance_type": None, "instances": None, "cpu": 1, "memory": 2000, "gpu": None}
    store.update_replica(row.id, phase=P.STOPPED)
    store.delete_replica(row.id)
    [done] = store.usage()
    assert done.ended_at is not None and done.ended_at >= done.started_at
    store.purge_service("metered")
    assert [x.replica for x in store.usage()] == [row.id]  # the record outlives the service


def test_a_real_replica_is_metered_in_the_api_the_cli_and_metrics(tmp_path: Path) -> None:
    """A real server, a real replica: its billed seconds grow, priced by the server's catalog."""
    import json

    import requests
    from typer.testing import CliRunner

    from openeas.cli.main import app
    from tests.harness import new_server, service_spec, stop_and_reap, wait_for

    srv = new_server(tmp_path / "data")
    (tmp_path / "catalog.yaml").write_text(json.dumps(CATALOG.model_dump(exclude={"source"})))
    srv.extra_args.extend(["--catalog", str(tmp_path / "catalog.yaml")])
    srv.extra_env["OPENEAS_REQUEST_METER_S"] = "0.5"
    srv.start()
    try:
        spec = service_spec("metered")
        spec["cloud"] = {"computing": {"instance_type": "a10"}}
        srv.client.deploy(spec)
        wait_for(
            lambda: any(r["phase"] == "Ready" for r in srv.client.describe("metered")["replicas"]),
            timeout_s=60,
            what="a Ready replica",
        )
        # 12 requests through the gateway: the request meter (every 0.5 s here) writes them
        token = srv.client.call_info("metered")["token"]
        for _ in range(12):
            r = requests.get(
                f"{srv.gateway_url}/api/predict/metered/health", headers={"Authorization": token}, timeout=10
            )
            assert r.status_code == 200
        wait_for(
            lambda: srv.client.request("GET", "/api/v1/cost/report")["rows"][0]["requests"] >= 12,
            timeout_s=15,
            what="12 requests metered",
        )
        report = srv.client.request("GET", "/api/v1/cost/report", params={"by": "service"})
        [row] = report["rows"]
        # 12 x 0.0001 RMB: 0.0012, rounded to 0.00 in the row; the total has it exactly
        assert (row["requests"], row["fees"]) == (12, 0.0)
        assert (row["key"], row["instance_type"], row["cold_starts"]) == ("metered", "a10", 1)
        assert row["replica_seconds"] > 0 and row["compute"] == pytest.approx(
            row["replica_seconds"] / 3600 * 5, abs=0.01
        )
        env = {"OPENEAS_DATA_DIR": str(srv.data_dir), "OPENEAS_SERVER": None, "OPENEAS_ADMIN_TOKEN": None}
        r = CliRunner().invoke(app, ["cost", "report", "--by", "day", "--csv"], env=env)
        assert r.exit_code == 0, r.output
        assert r.output.splitlines()[0].startswith("key,instance_type,") and ",a10,5.0," in r.output
        bad = CliRunner().invoke(app, ["cost", "report", "--by", "week"], env=env)
        assert bad.exit_code == 2 and "--by: 'week' is not one of service, day, month" in bad.output
        metrics = requests.get(
            f"{srv.api_url}/metrics",
            headers={"Authorization": f"Bearer {srv.client.admin_token}"},
            timeout=10,
        ).text
        assert 'openeas_cost_replica_seconds{instance_type="a10",service="metered"}' in metrics
        assert 'openeas_cost_spend{currency="RMB",service="metered"}' in metrics
        assert 'openeas_cost_requests{service="metered"} 12.0' in metrics
        assert "openeas_idle_replicas" in metrics  # the idle-spend watch runs in the server
        assert [s["idle"] for s in srv.client.list()] == [None]  # 1 replica for its load: not idle
    finally:
        stop_and_reap(srv)


def test_the_replicas_of_an_older_store_are_metered_from_their_creation(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(Path(__file__).parent / "fixtures" / "store_v6", tmp_path / "data")
    store = Store(tmp_path / "data")  # opening migrates to v7
    replicas = {r.id: r for r in store.replicas()}
    usage = store.usage()
    assert replicas and {x.replica for x in usage} == set(replicas)
    assert all(x.started_at == replicas[x.replica].created_at and x.resources["cpu"] == 2 for x in usage)

"""Cold-start statistics and the startup deadline (issue 23): p50/p90 per phase over recent
starts (pure, table-driven), the store's record of starts (SQLite and PostgreSQL), where the
startup deadline comes from, its progress line, the pre-scaling's lead, and a real server:
starts recorded, the API and `openeas coldstart`, a Starting replica's progress in describe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from openeas.api.coldstart import DEFAULT_WINDOW, RECENT_SHOWN, prescale_view
from openeas.cli.coldstart import prescale_line
from openeas.cli.main import app
from openeas.controller.checks import checks_of
from openeas.spec import parse_spec
from openeas.spec.autoscaling import Defaults
from openeas.store import Store
from openeas.store.cold_starts import KEEP_PER_SERVICE
from openeas.telemetry.coldstart import phase_stats, start_record, startup_progress
from tests.harness import Server, service_spec, wait_for


def starts(*totals: float | None, **other: list[float | None]) -> list[dict[str, Any]]:
    return [{"total_s": t, **{k: v[i] for k, v in other.items()}} for i, t in enumerate(totals)]


STATS = [
    # nearest rank: p50 of n values is the ceil(n/2)-th smallest, p90 the ceil(0.9 n)-th
    pytest.param([], 20, "total_s", {"n": 0, "p50": None, "p90": None}, id="no-start-no-data-not-zero"),
    pytest.param(starts(5.0), 20, "total_s", {"n": 1, "p50": 5.0, "p90": 5.0}, id="one-start"),
    # 10 values 1..10: p50 = 5th = 5, p90 = 9th = 9
    pytest.param(starts(*[float(i) for i in range(10, 0, -1)]), 20, "total_s",
                 {"n": 10, "p50": 5.0, "p90": 9.0}, id="ten-starts-unsorted"),
    # the window keeps the last 3 (oldest first): 7, 8, 9 → p50 = 2nd = 8, p90 = 3rd = 9
    pytest.param(starts(100.0, 200.0, 7.0, 8.0, 9.0), 3, "total_s", {"n": 3, "p50": 8.0, "p90": 9.0},
                 id="window-keeps-the-newest"),
    # a start that pulled no image does not count for pull: n = 1
    pytest.param(starts(1.0, 2.0, pull_s=[None, 30.0]), 20, "pull_s", {"n": 1, "p50": 30.0, "p90": 30.0},
                 id="phase-skipped-not-counted"),
    pytest.param(starts(1.0, 2.0, warm_s=[float("nan"), True]), 20, "warm_s", {"n": 0, "p50": None, "p90": None},
                 id="nan-and-bool-ignored"),
]  # fmt: skip


@pytest.mark.parametrize(("records", "window", "span", "expected"), STATS)
def test_phase_stats(records: list[dict[str, Any]], window: int, span: str, expected: dict[str, Any]):
    out = phase_stats(records, window)
    assert list(out) == ["pull_s", "fetch_s", "prepare_s", "start_s", "warm_s", "total_s"]
    assert out[span] == expected


def test_start_record_keeps_spans_and_where_image_and_mounts_came_from():
    cold = {"total_s": 3.0, "fetch_s": 1.0, "pull": {"image": "x", "cached": True, "seconds": 9},
            "fetch": {"cache_hit": False, "bytes": 42, "mounts": [{"key": "k"}]}}  # fmt: skip
    rec = start_record(cold)
    assert rec["total_s"] == 3.0 and rec["start_s"] is None
    assert rec["pull"] == {"cached": True} and rec["fetch"] == {"cache_hit": False, "bytes": 42}


def test_documented_defaults():
    assert DEFAULT_WINDOW == 20  # docs/cold-start.md: `openeas coldstart` covers the last 20 starts
    assert KEEP_PER_SERVICE == 100  # ... and the store keeps the last 100 of each service
    assert RECENT_SHOWN == 5  # ... listing the last 5 one by one
    assert checks_of(parse_spec(service_spec("d")).main).startup_timeout_s == 600.0  # the default deadline


def test_store_keeps_the_last_starts_of_each_service(tmp_path: Path, store_url: str | None):
    store = Store(tmp_path, url=store_url)
    for i in range(KEEP_PER_SERVICE + 5):
        store.record_cold_start("a", 1, f"a-{i}", {"total_s": float(i)})
    store.record_cold_start("b", 1, "b-0", {"total_s": 1.0})
    kept = store.cold_starts("a")
    assert len(kept) == KEEP_PER_SERVICE and kept[0].replica == "a-5" and kept[-1].replica == "a-104"
    assert [r.replica for r in store.cold_starts("a", 2)] == ["a-103", "a-104"]  # newest two, oldest first
    assert [r.spans for r in store.cold_starts("b")] == [{"total_s": 1.0}]


H = {"http_get": {"path": "/health"}}
DEADLINES = [
    pytest.param({}, 600.0, "the default; set health_check.startup_timeout_seconds", id="default"),
    pytest.param({"health_check": {**H, "startup_timeout_seconds": 1800}}, 1800.0,
                 "health_check.startup_timeout_seconds", id="health-check-field"),
    pytest.param({"readiness_check": {**H, "startup_timeout_seconds": 900}}, 900.0,
                 "readiness_check.startup_timeout_seconds", id="readiness-check-field"),
    # Kubernetes: initial delay + threshold x period = 10 + 30 x 2 = 70 s
    pytest.param({"startup_check": {**H, "initial_delay_seconds": 10, "period_seconds": 2, "failure_threshold": 30}},
                 70.0, "startup_check: initial_delay_seconds + failure_threshold x period_seconds",
                 id="startup-check-kubernetes"),
    pytest.param({"startup_check": {**H, "startup_timeout_seconds": 3600}}, 3600.0,
                 "startup_check.startup_timeout_seconds", id="startup-check-field"),
]  # fmt: skip


@pytest.mark.parametrize(("checks", "deadline", "source"), DEADLINES)
def test_startup_deadline_and_where_it_comes_from(checks: dict[str, Any], deadline: float, source: str):
    doc = {"name": "svc", "containers": [{"command": "serve --port 8000", "port": 8000, **checks}]}
    c = checks_of(parse_spec(doc).main)
    assert (c.startup_timeout_s, c.startup_timeout_from) == (deadline, source)


PROGRESS = [
    pytest.param("Starting", {"Starting": 100.0}, 600.0, 142.4, "Starting for 42 s of 600 s", id="starting"),
    pytest.param("Starting", {"Starting": 100.0}, 0.5, 99.0, "Starting for 0 s of 0.5 s", id="clock-skew-is-0"),
    pytest.param("Ready", {"Starting": 100.0}, 600.0, 142.0, None, id="not-starting"),
    pytest.param("Starting", {}, 600.0, 142.0, None, id="not-stamped"),
    pytest.param("Starting", {"Starting": 100.0}, None, 142.0, None, id="deadline-unknown"),
]  # fmt: skip


@pytest.mark.parametrize(("phase", "times", "deadline", "now", "text"), PROGRESS)
def test_startup_progress(phase: str, times: dict[str, float], deadline: float | None, now: float, text: str | None):
    p = startup_progress(phase, times, deadline, now)
    assert (p or {}).get("text") == text


def policy(**autoscaling: Any) -> Any:
    doc = service_spec("p", autoscaling={"metric": "qps", "target": 10, "max_replicas": 3, **autoscaling})
    return parse_spec(doc).autoscaling_policy()


PRESCALE = [
    pytest.param(None, None, {"used": False}, "cron pre-scaling: not used (the service has no autoscaling policy)",
                 id="no-policy"),
    pytest.param("policy", None, {"lead_s": Defaults.PRESCALE_FALLBACK_S},
                 "cron pre-scaling: lead 30.00 s (fallback: no start measured since the server started), "
                 "no cron rule", id="fallback-before-any-start"),
    # 12.4 s p90 + 1 s margin = 13.4 s lead
    pytest.param("policy", {"cold_start_p90_s": 12.4}, {"lead_s": 13.4, "cold_start_p90_s": 12.4},
                 "cron pre-scaling: lead 13.40 s (p90 cold start + 1 s margin; autoscaler's p90 cold start "
                 "12.40 s), no cron rule", id="measured-p90-plus-margin"),
]  # fmt: skip


@pytest.mark.parametrize(("pol", "status", "expected", "line"), PRESCALE)
def test_prescale_view(pol: str | None, status: dict[str, Any] | None, expected: dict[str, Any], line: str):
    view = prescale_view(policy() if pol else None, status, 1.0)
    assert {k: view[k] for k in expected} == pytest.approx(expected)
    assert prescale_line(view) == line


def test_real_starts_are_recorded_and_shown(shared_server: Server):
    srv, c = shared_server, shared_server.client
    c.deploy(service_spec("cold_stats", replicas=2))
    c.wait_ready("cold_stats", 2, timeout_s=90)
    view = wait_for(
        lambda: (v := c.request("GET", "/api/v1/services/cold_stats/coldstart")) and v["starts"] == 2 and v,
        30,
        what="two recorded starts",
    )
    assert view["window"] == DEFAULT_WINDOW and len(view["recent"]) == 2
    total = view["phases"]["total_s"]
    assert total["n"] == 2 and 0 < total["p50"] <= total["p90"]
    assert view["phases"]["pull_s"]["n"] == 0  # process replicas pull no image
    assert view["prescale"] == {"used": False, "reason": "the service has no autoscaling policy"}
    one = c.request("GET", "/api/v1/services/cold_stats/coldstart?window=1")
    assert one["starts"] == 1 and one["phases"]["total_s"]["n"] == 1
    r = CliRunner().invoke(app, ["coldstart", "cold_stats", "--data-dir", str(srv.data_dir)])
    assert r.exit_code == 0, r.output
    assert "2 recent starts (window 20)" in r.output and "total" in r.output and "cron pre-scaling" in r.output
    r = CliRunner().invoke(app, ["coldstart", "cold_stats", "--json", "--data-dir", str(srv.data_dir)])
    assert json.loads(r.output)["starts"] == 2


def test_starting_replica_shows_its_progress_against_the_deadline(shared_server: Server):
    c = shared_server.client
    spec = service_spec("slow_start")
    # /nope answers 404: the replica stays in Starting for its 300 s deadline
    spec["containers"][0]["health_check"] = {"http_get": {"path": "/nope"}, "startup_timeout_seconds": 300}
    c.deploy(spec)
    rep = wait_for(
        lambda: (d := c.describe("slow_start")["replicas"]) and d[0]["startup"] and d[0],
        30,
        what="a Starting replica with progress",
    )
    assert rep["phase"] == "Starting" and rep["startup"]["deadline_s"] == 300
    assert rep["startup"]["text"].startswith("Starting for ") and rep["startup"]["text"].endswith(" s of 300 s")
    c.request("DELETE", "/api/v1/services/slow_start")

"""Reports: kept in the store, rendered as a table and as one HTML page; --apply's spec change."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from openeas.errors import NotFound
from openeas.kernel.clock import FakeClock
from openeas.kernel.states import IllegalTransition
from openeas.store import Store
from openeas.store import stress_reports as reports
from openeas.stress.apply import with_autoscaling
from openeas.stress.fake import SimulatedService
from openeas.stress.generator import Generator
from openeas.stress.observe import Sample, StaticObserver, window_mean
from openeas.stress.plan import make_plan
from openeas.stress.report import steps_table, summary_lines, to_html
from openeas.stress.runner import run_steps


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    clock = FakeClock(drive=True)
    svc = SimulatedService(clock, servers=8, service_s=0.05)
    plan = make_plan({"target": "<svc>", "step_s": 2.0, "duration_s": 60.0})
    return asyncio.run(run_steps(plan, Generator(svc, clock, 1), StaticObserver(ready=1), clock))


def test_store_keeps_lists_and_replaces(tmp_path: Path, store_url: str | None, report: dict[str, Any]) -> None:
    store = Store(tmp_path, url=store_url)
    older = {**report, "id": "a-1", "started_at": 1.0, "status": "running"}
    reports.save(store, older)
    reports.save(store, {**report, "id": "b-2", "started_at": 2.0, "target": "other"})
    assert [r["id"] for r in reports.listing(store)] == ["b-2", "a-1"]  # newest first
    assert [r["id"] for r in reports.listing(store, target="other")] == ["b-2"]
    assert reports.get(store, "a-1")["steps"] == report["steps"]
    reports.save(store, {**older, "status": "interrupted"})  # same id: replaced, not duplicated
    assert [r["status"] for r in reports.listing(store, target="<svc>")] == ["interrupted"]
    with pytest.raises(NotFound, match="no stress report 'zzz'"):
        reports.get(store, "zzz")
    with pytest.raises(ValueError, match=r"report\.id: .*; report\.status: 'done' is not one of"):
        reports.save(store, {"target": "x", "status": "done"})  # every bad field at once


@pytest.mark.parametrize(
    ("first", "then", "legal"),
    [
        pytest.param("running", "completed", True, id="running-completes"),
        pytest.param("running", "failed", True, id="running-fails"),
        pytest.param("completed", "completed", True, id="upload-retried"),
        pytest.param("completed", "running", False, id="a-finished-report-is-final"),
        pytest.param("interrupted", "completed", False, id="interrupted-stays-interrupted"),
    ],
)
def test_a_stored_runs_state_changes_only_as_the_table_allows(
    tmp_path: Path, first: str, then: str, legal: bool
) -> None:
    store = Store(tmp_path)
    reports.save(store, {"id": "r-1", "target": "s", "status": first, "steps": []})
    if legal:
        reports.save(store, {"id": "r-1", "target": "s", "status": then, "steps": []})
        assert reports.get(store, "r-1")["status"] == then
    else:
        with pytest.raises(IllegalTransition, match=f"stress run state {first} → {then}"):
            reports.save(store, {"id": "r-1", "target": "s", "status": then, "steps": []})
        assert reports.get(store, "r-1")["status"] == first


def test_a_test_cut_by_a_server_restart_is_interrupted(tmp_path: Path, store_url: str | None) -> None:
    store = Store(tmp_path, url=store_url)
    reports.save(store, {"id": "r-1", "target": "s", "status": "running", "steps": []})
    reports.save(store, {"id": "r-2", "target": "s", "status": "completed", "steps": []})
    assert reports.mark_abandoned(store) == 1
    assert {r["id"]: r["status"] for r in reports.listing(store)} == {"r-1": "interrupted", "r-2": "completed"}


def test_summary_names_the_saturation(report: dict[str, Any]) -> None:
    s = reports.summary(report)
    assert s["saturation_found"] and s["qps_per_replica"] == pytest.approx(160, rel=0.1)
    assert s["recommended_metric"] == "concurrent_requests"


def test_terminal_table_and_summary(report: dict[str, Any]) -> None:
    buf = io.StringIO()
    Console(file=buf, width=200).print(steps_table(report))
    text = buf.getvalue()
    assert "knee" in text and "p99 ms" in text
    lines = summary_lines(report)
    assert lines[1].startswith("saturation: 16")  # ~160 req/s per replica
    assert any(line.startswith("recommendation: autoscaling metric concurrent_requests") for line in lines)


def test_html_is_self_contained_with_charts_and_escaped(report: dict[str, Any]) -> None:
    page = to_html(report)
    assert page.count("<svg") == 2  # latency, throughput (replicas and in flight: not observed here)
    assert page.count("(no data)") == 2
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<svc>" not in page and "&lt;svc&gt;" in page


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([Sample(1, 1, 1, 2.0), Sample(2, 3, 3, 4.0)], 2.0),  # mean of ready 1 and 3
        ([Sample(0.5, 5, 5, None)], 5.0),  # none inside: the latest before the window
        ([Sample(0.5, None, None, None)], None),  # no data is not zero
    ],
    ids=["mean", "latest-before", "no-data"],
)
def test_window_mean(samples: list[Sample], expected: float | None) -> None:
    assert window_mean(samples, 1.0, 2.0, "ready") == expected


def test_apply_sets_autoscaling_and_keeps_the_rest() -> None:
    spec = {"metadata": {"name": "s", "instance": 1, "x": {"y": 1}}, "containers": [{"port": 8000}]}
    auto = {"metric": "concurrent_requests", "target": 5.6, "min_replicas": 1, "max_replicas": 3}
    out = with_autoscaling(spec, auto, replicas=2)
    assert out["autoscaling"] == auto
    assert out["metadata"] == {"name": "s", "instance": 2, "x": {"y": 1}}  # scaled count kept
    assert "autoscaling" not in spec and spec["metadata"]["instance"] == 1  # the input is untouched

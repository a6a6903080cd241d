"""``openeas simulate`` and ``openeas trace`` (cli/simulate.py) and the trace reader's errors
(autoscaler/trace.py): a bad trace is named by line and column, a missing input by its flag."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from openeas.autoscaler.trace import MAX_SPAN_S, Trace, read_trace, write_trace
from openeas.cli.main import app
from openeas.cli.simulate import resolve_inputs
from openeas.errors import SpecError

HEADER = "timestamp,count,duration_s\n"


def _spec(tmp_path: Path, name: str, **autoscaling: Any) -> str:
    doc = {
        "metadata": {"name": name, "instance": 2, "cpu": 4, "memory": 16000},
        "containers": [{"image": "x", "command": "x", "port": 8000}],
        "autoscaling": autoscaling,
    }
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(doc))
    return str(p)


def _trace(tmp_path: Path) -> str:
    # 2 hours: 1 req/s for an hour, then 20 req/s (0.1 s each)
    a = np.concatenate([np.ones(3600), np.full(3600, 20.0)])
    p = tmp_path / "t.csv"
    with p.open("w") as f:
        write_trace(Trace(1_700_438_400.0, a, a * 0.1), f)
    return str(p)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("", "empty (the header is timestamp,count,duration_s)", id="empty"),
        pytest.param("timestamp,count\n1,2\n", "line 1: one of 'duration_s' or 'tokens' (each request's size), not 0", id="no-duration"),
        pytest.param("timestamp,n,duration_s\n", "line 1, column 2: unknown column 'n'", id="unknown-column"),
        pytest.param(HEADER, "no request rows after the header", id="no-rows"),
        pytest.param(
            HEADER + "1,1,0.1\n2,x,0.1\n", "line 3, column 2 (count): 'x' is not a number", id="count"
        ),
        pytest.param(
            HEADER + "1,1,-1\n", "line 2, column 3 (duration_s): '-1'; must be a finite", id="negative"
        ),
        pytest.param(HEADER + "nan,1,1\n", "line 2, column 1 (timestamp): 'nan'; must be a finite", id="nan"),
        pytest.param(HEADER + "1,1\n", "line 2: 2 fields, the header has 3", id="short-row"),
        pytest.param(HEADER + f"0,1,1\n{MAX_SPAN_S + 5},1,1\n", "at most 34560000 s (400 days)", id="span"),
    ],
)
def test_a_bad_trace_is_named_by_line_and_column(text: str, error: str) -> None:
    with pytest.raises(SpecError) as exc:
        read_trace(io.StringIO(text), "t.csv")
    assert any(error in e for e in exc.value.errors), exc.value.errors


def test_token_counts_become_durations_at_the_replicas_speed() -> None:
    text = "timestamp,count,tokens\n0,2,100\n1,1,50\n"
    with pytest.raises(SpecError, match="a 'tokens' column needs the replicas' tokens/s"):
        read_trace(io.StringIO(text))
    t = read_trace(io.StringIO(text), tokens_per_s=50.0)
    # 2 requests of 100 tokens at 50 tokens/s: 2 x 2 s; then 1 of 50 tokens: 1 s
    assert (t.arrivals.tolist(), t.busy.tolist()) == ([2.0, 1.0], [4.0, 1.0])
    with pytest.raises(SpecError, match=r"one of 'duration_s' or 'tokens' .*not 2"):
        read_trace(io.StringIO("timestamp,duration_s,tokens\n0,1,1\n"), tokens_per_s=1.0)


def test_a_trace_without_count_counts_one_per_row_and_sums_a_second() -> None:
    t = read_trace(io.StringIO("duration_s,timestamp\n0.5,10.2\n1.5,10.9\n2,12\n"))
    # rows at 10.2 and 10.9 fall in second 0 (start = floor(10.2) = 10): 2 requests, 0.5 + 1.5 s
    assert (t.start, t.arrivals.tolist(), t.busy.tolist()) == (10.0, [2.0, 0.0, 1.0], [2.0, 0.0, 2.0])


def test_simulate_compares_two_specs_side_by_side(tmp_path: Path) -> None:
    a = _spec(tmp_path, "a", metric="qps", target=10, min_replicas=2, max_replicas=4)
    b = _spec(tmp_path, "b", metric="qps", target=10, min_replicas=1, max_replicas=4)
    args = [
        "simulate",
        "-f",
        a,
        "--trace",
        _trace(tmp_path),
        "--compare",
        b,
        "--cold-start",
        "30",
        "--capacity",
        "12",
    ]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "trace " in r.output and "7,200 s (0.08 days)" in r.output
    assert "cheapest fitting type is ecs.g7.xlarge" in r.output
    for label in (
        "replica-hours",
        "cost (RMB)",
        "scale events",
        "cold starts",
        "requests held",
        "p99 estimate",
    ):
        assert label in r.output
    assert "queue wait" not in r.output  # no async service: no queue rows
    j = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    one, two = j["runs"]
    # the first hour at 1 req/s needs 1 replica: min 1 runs one fewer (less the down window), the
    # second hour at 20 req/s needs 2 for both
    assert one["replica_hours"] > two["replica_hours"] >= 3.0
    assert one["cost"] == pytest.approx(one["replica_hours"] * 1.3, abs=0.02)  # ecs.g7.xlarge, 1.3 RMB/h
    assert j["inputs"] == {
        "cold_starts_s": [30.0],
        "cold_starts_from": "--cold-start",
        "capacity_qps": 12.0,
        "capacity_from": "--capacity",
        "decide_every_s": 15.0,
    }


@pytest.mark.parametrize(
    ("extra", "errors"),
    [
        pytest.param(
            [], ["cold starts: give --cold-start", "capacity: give --capacity"], id="nothing-defaulted"
        ),
        pytest.param(
            ["--cold-start", "x", "--capacity", "1"], ["--cold-start: 'x' is not a number"], id="bad-cold"
        ),
        pytest.param(
            ["--cold-start", "1", "--capacity", "0"], ["--capacity: 0 requests/s per replica"], id="bad-cap"
        ),
    ],
)
def test_simulate_names_each_missing_or_bad_input(
    tmp_path: Path, extra: list[str], errors: list[str]
) -> None:
    a = _spec(tmp_path, "a", metric="qps", target=10, min_replicas=1, max_replicas=4)
    r = CliRunner().invoke(app, ["simulate", "-f", a, "--trace", _trace(tmp_path), *extra])
    assert r.exit_code == 2
    for e in errors:
        assert e in r.output, r.output


def test_simulate_names_the_bad_trace_line_and_an_unreplayable_metric(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "1,1,0.1\n2,1,slow\n")
    a = _spec(tmp_path, "a", metric="qps", target=10, min_replicas=1, max_replicas=4)
    r = CliRunner().invoke(
        app, ["simulate", "-f", a, "--trace", str(bad), "--cold-start", "1", "--capacity", "1"]
    )
    assert r.exit_code == 2 and "bad.csv line 3, column 3 (duration_s): 'slow' is not a number" in r.output
    cpu = _spec(tmp_path, "c", metric="cpu", target=50, min_replicas=1, max_replicas=4)
    r = CliRunner().invoke(
        app, ["simulate", "-f", cpu, "--trace", _trace(tmp_path), "--cold-start", "1", "--capacity", "1"]
    )
    assert r.exit_code == 2 and "autoscaling metric cpu: not replayable from a trace" in r.output


def test_trace_writes_a_field_guide_shape_the_simulator_reads(tmp_path: Path) -> None:
    out = tmp_path / "bh.csv"
    args = [
        "trace",
        "--shape",
        "business-hours",
        "--days",
        "1",
        "--peak-qps",
        "2",
        "--base-qps",
        "0",
        "--duration-s",
        "0.5",
    ]
    r = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert r.exit_code == 0, r.output
    t = read_trace(out.open(), str(out))
    # Monday 09:00-18:00 at 2 req/s (Poisson), nothing else: ~64,800 requests, each 0.5 s
    assert 63_000 < t.requests < 66_600 and t.busy.sum() == pytest.approx(t.requests * 0.5)
    assert t.start == 1_700_438_400.0 + 9 * 3600
    r = CliRunner().invoke(
        app,
        [
            "trace",
            "--shape",
            "lunch",
            "--days",
            "1",
            "--peak-qps",
            "1",
            "--base-qps",
            "0",
            "--duration-s",
            "1",
        ],
    )
    assert r.exit_code == 2 and "shape: 'lunch' is not one of business-hours" in r.output


def test_trace_names_the_missing_shape_flags() -> None:
    r = CliRunner().invoke(app, ["trace", "--shape", "3pm-peak", "--days", "1"])
    assert r.exit_code == 2
    assert "--peak-qps, --base-qps, --duration-s: needed for a shape (or give --service NAME)" in r.output


def test_simulate_shows_the_queue_of_an_async_spec(tmp_path: Path) -> None:
    sync = _spec(tmp_path, "a", metric="qps", target=10, min_replicas=1, max_replicas=4)
    doc = json.loads(Path(sync).read_text())
    doc["metadata"]["type"] = "Async"
    doc["autoscaling"] = {"metric": "backlog", "target": 5, "min_replicas": 1, "max_replicas": 4}
    queued = tmp_path / "async.json"
    queued.write_text(json.dumps(doc))
    args = ["simulate", "-f", sync, "--trace", _trace(tmp_path), "--compare", str(queued), "--cold-start", "30"]
    r = CliRunner().invoke(app, [*args, "--capacity", "12"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    [mean] = [ln for ln in r.output.splitlines() if ln.startswith("queue wait mean (s, async)")]
    assert mean.split()[5] == "-"  # the sync spec has no queue; the async one has a figure
    assert float(mean.split()[6]) >= 0


@pytest.mark.parametrize(
    ("flags", "server", "expected"),
    [
        pytest.param(
            (None, None), ([20.0, 40.0], 8.0, "stress report r1"),
            ([20.0, 40.0], "svc's last 2 cold starts on the server", 8.0, "svc's stress report r1"), id="server",
        ),
        pytest.param(
            ("5", 3.0), ([20.0], 8.0, "stress report r1"), ([5.0], "--cold-start", 3.0, "--capacity"), id="flags-win",
        ),
        pytest.param(
            ("5", None), ([], 8.0, "stress report r1"), ([5.0], "--cold-start", 8.0, "svc's stress report r1"),
            id="mixed",
        ),
    ],
)  # fmt: skip
def test_inputs_come_from_flags_else_from_the_servers_measurements(
    flags: tuple[str | None, float | None], server: tuple[list[float], float | None, str], expected: tuple[Any, ...]
) -> None:
    seen: list[str] = []

    def measure(name: str) -> tuple[list[float], float | None, str]:
        seen.append(name)
        return server

    got = resolve_inputs(flags[0], flags[1], "svc", measure)
    assert (got.cold_starts_s, got.cold_source, got.capacity_qps, got.capacity_source) == expected
    assert seen == ([] if None not in flags else ["svc"])  # the server is asked only for what is missing


def test_a_service_without_measurements_is_named() -> None:
    with pytest.raises(SpecError) as exc:
        resolve_inputs(None, None, "svc", lambda name: ([], None, ""))
    assert exc.value.errors == [
        "cold starts: give --cold-start SECONDS[,SECONDS…] or --service NAME; svc has no measured start yet",
        "capacity: give --capacity REQ_PER_S (per replica) or --service NAME; svc has no stress report with a "
        "saturation point",
    ]

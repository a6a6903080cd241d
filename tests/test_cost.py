"""Economics: the instance catalog, the mapping of a spec to a price, the monthly estimate and its
traps (openeas.cost), `openeas cost estimate`, and the server's estimate (dry-run, API, deploy).

The acceptance case is the field guide's worked example: 2 x A10 at 5 RMB/h over 720 h = 7,200;
3 burst replicas x 5 x 9 h x 22 days = 2,970; 5 QPS x 86,400 s x 22 days x 0.0001 = 950.4;
14 GB x 30 cold starts x 0.5 = 210; total 11,330.4 RMB/month.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from openeas.cli.main import app
from openeas.cost import (
    SHIPPED_CATALOG,
    estimate,
    load_catalog,
    map_spec,
    parse_catalog,
    parse_traffic,
    traps,
)
from openeas.cost.estimate import HOURS_PER_MONTH
from openeas.errors import SpecError
from openeas.spec import parse_spec
from tests.harness import Server, new_server, service_spec, stop_and_reap

CATALOG: dict[str, Any] = {
    "currency": "RMB",
    "per_request_fee": 0.0001,
    "storage_read_per_gb": 0.5,
    "instance_types": [
        {"name": "small", "cpu": 2, "memory_gb": 4, "price_per_hour": 0.5, "spot_discount": 0.7},
        {"name": "big", "cpu": 8, "memory_gb": 32, "price_per_hour": 2.0},
        {"name": "a10", "cpu": 8, "memory_gb": 30, "gpu": {"kind": "A10", "count": 1}, "price_per_hour": 5},
        {"name": "a10x2", "cpu": 32, "memory_gb": 120, "gpu": {"kind": "A10", "count": 2}, "price_per_hour": 10},
    ],
}
TRAFFIC = {
    "burst": {"replicas": 3, "hours_per_day": 9, "days_per_month": 22},
    "requests": {"qps": 5, "hours_per_day": 24, "days_per_month": 22},
    "cold_starts": {"per_month": 30, "model_gb": 14},
}


def spec(**kw: Any) -> dict[str, Any]:
    meta = {"name": "svc", "instance": kw.pop("instance", 2), **kw.pop("metadata", {})}
    return {"metadata": meta, "containers": [{"command": kw.pop("command", "serve"), "port": 8000}], **kw}


def field_guide_spec(**autoscaling: Any) -> dict[str, Any]:
    a = {"metric": "concurrent_requests", "target": 4, "min_replicas": 2, "max_replicas": 5, **autoscaling}
    return spec(cloud={"computing": {"instance_type": "a10"}}, autoscaling=a)


def test_the_field_guides_worked_example() -> None:
    est = estimate(parse_spec(field_guide_spec()), parse_catalog(CATALOG), parse_traffic(TRAFFIC))
    assert [(ln.name, ln.arithmetic, round(ln.amount, 2)) for ln in est.lines] == [
        ("min-replica baseline", "2 replicas x 5 RMB/h x 720 h", 7200.0),
        ("burst replicas", "3 replicas x 5 RMB/h x 9 h x 22 days", 2970.0),
        ("per-request fees", "5 QPS x 86,400 s x 22 days x 0.0001 RMB", 950.4),
        ("cold-start reads", "14 GB x 30 cold starts x 0.5 RMB/GB", 210.0),
    ]
    assert est.total is not None and round(est.total, 2) == 11330.4
    assert est.as_dict()["monthly_total"] == 11330.4 and est.warnings == [] and est.notes == []


@pytest.mark.parametrize(
    ("written", "instance", "per_hour", "how"),
    [
        pytest.param({"cloud": {"computing": {"instance_type": "big"}}}, "big", 2.0,
                     "cloud.computing.instance_type: big (8 cores, 32 GiB), on demand", id="instance_type"),
        pytest.param({"cloud": {"computing": {"instance_type": "nope"}}}, None, None,
                     "cloud.computing.instance_type 'nope' is not in the catalog", id="unknown-type"),
        # spot: 0.5 x (1 - 0.7) = 0.15 per hour
        pytest.param({"cloud": {"computing": {"instances": [{"type": "gone"}, {"type": "small", "spot_price_limit": 1}]}}},
                     "small", 0.15, "cloud.computing.instances[1]: small (2 cores, 4 GiB), spot, 70% off (gone not in the catalog)",
                     id="instances-spot-first-known"),
        pytest.param({"cloud": {"computing": {"instances": [{"type": "big", "spot": False}]}}}, "big", 2.0,
                     "cloud.computing.instances[0]: big (8 cores, 32 GiB), on demand", id="instances-on-demand"),
        pytest.param({"cloud": {"computing": {"instances": [{"type": "x"}, {"type": "y"}]}}}, None, None,
                     "cloud.computing.instances lists x, y: none is in the catalog", id="instances-none-known"),
        pytest.param({"metadata": {"cpu": 4, "memory": 8000}}, "big", 2.0,
                     "metadata asks cpu 4, memory 8000 MB: the cheapest fitting type is big", id="metadata-cheapest-fit"),
        pytest.param({"metadata": {"cpu": 1}}, "small", 0.5,
                     "metadata asks cpu 1: the cheapest fitting type is small", id="metadata-cpu-only"),
        pytest.param({"metadata": {"gpu": 2}}, "a10x2", 10.0,
                     "metadata asks gpu 2: the cheapest fitting type is a10x2", id="metadata-two-gpus"),
        pytest.param({"metadata": {"gpu": 4}}, None, None,
                     "metadata asks gpu 4: no type in the catalog", id="metadata-no-fit"),
        pytest.param({}, None, None, "no cloud.computing.instance_type, no cloud.computing.instances, "
                     "no metadata.cpu/memory/gpu: nothing to price", id="nothing-to-price"),
    ],
)
def test_a_spec_maps_to_a_price_and_says_how(
    written: dict[str, Any], instance: str | None, per_hour: float | None, how: str
) -> None:
    p = map_spec(parse_spec(spec(**written)), parse_catalog(CATALOG))
    assert (p.instance.name if p.instance else None) == instance
    assert p.per_hour == pytest.approx(per_hour) if per_hour is not None else p.per_hour is None
    assert p.how.startswith(how)


def test_an_unpriced_spec_has_no_total_and_says_why() -> None:
    est = estimate(parse_spec(spec()), parse_catalog(CATALOG))
    assert est.total is None and est.lines == []
    assert est.notes == ["no estimate: " + est.pricing.how]


def test_without_a_traffic_profile_the_baseline_alone_at_720_hours() -> None:
    est = estimate(parse_spec(field_guide_spec()), parse_catalog(CATALOG))
    assert HOURS_PER_MONTH == 720  # docs/cost.md: 30 days x 24 h
    assert [ln.arithmetic for ln in est.lines] == ["2 replicas x 5 RMB/h x 720 h"]
    assert est.notes[0] == "no traffic profile (--traffic): the baseline alone, at 720 h a month"


def test_burst_beyond_max_is_capped_and_said() -> None:
    # max 3 - min 2 leaves 1 burst replica: 1 x 5 x 9 x 22 = 990
    est = estimate(parse_spec(field_guide_spec(max_replicas=3)), parse_catalog(CATALOG), parse_traffic(TRAFFIC))
    assert est.lines[1].amount == 990
    assert any(w.startswith("traffic.burst.replicas: 3 burst replicas, but max_replicas 3") for w in est.warnings)


@pytest.mark.parametrize(
    ("written", "traffic", "expected"),
    [
        # 0.5 QPS at 1 QPS per replica needs 1; min 10 is 9 replicas paid to idle
        pytest.param(spec(cloud={"computing": {"instance_type": "small"}},
                          autoscaling={"metric": "qps", "target": 1, "min_replicas": 10, "max_replicas": 12}),
                     {"requests": {"qps": 0.5, "days_per_month": 30}},
                     ["autoscaling: min_replicas 10 is far above what 0.5 QPS needs at 1 QPS per replica (1): 9 replicas paid to idle"],
                     id="min-far-above-need"),
        pytest.param(spec(cloud={"computing": {"instance_type": "small"}},
                          autoscaling={"metric": "qps", "target": 10, "min_replicas": 1, "max_replicas": 50}),
                     {"peak_qps": 40},
                     ["autoscaling: max_replicas 50 is far above what the peak of 40 QPS needs at 10 QPS per replica (4)"],
                     id="max-far-above-peak"),
        pytest.param(spec(cloud={"computing": {"instance_type": "small"}},
                          autoscaling={"metric": "qps", "target": 10, "min_replicas": 1, "max_replicas": 8}),
                     {"peak_qps": 40, "requests": {"qps": 5, "days_per_month": 30}}, [], id="sized-right"),
        pytest.param(spec(command="vllm serve model", autoscaling={"metric": "qps", "target": 2, "min_replicas": 1, "max_replicas": 2}),
                     None, ["autoscaling: qps is the scaling metric of an LLM server"], id="qps-on-llm"),
        pytest.param(spec(metadata={"gpu": 1}, autoscaling={"metric": "cpu", "target": 70, "min_replicas": 1, "max_replicas": 2}),
                     None, ["autoscaling: cpu is the scaling metric of a GPU server"], id="cpu-on-gpu-metadata"),
        pytest.param(spec(cloud={"computing": {"instance_type": "a10"}},
                          autoscaler={"min": 1, "max": 2, "scaleStrategies": [{"metricName": "cpu", "threshold": 70}]}),
                     None, ["autoscaler: cpu is the scaling metric of a GPU server"], id="cpu-on-gpu-instance-type"),
        pytest.param(spec(metadata={"cpu": 2}, autoscaling={"metric": "cpu", "target": 70, "min_replicas": 1, "max_replicas": 2}),
                     None, [], id="cpu-on-cpu-server"),
    ],
)
def test_the_field_guides_traps(written: dict[str, Any], traffic: dict[str, Any] | None, expected: list[str]) -> None:
    s = parse_spec(written)
    got = traps(s, map_spec(s, parse_catalog(CATALOG)), parse_traffic(traffic) if traffic is not None else None)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.startswith(e)


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        pytest.param({"instance_types": []}, ["currency", "instance_types"], id="all-errors-at-once"),
        pytest.param({**CATALOG, "instance_types": [CATALOG["instance_types"][0]] * 2},
                     ["instance_types: small listed more than once"], id="duplicate-name"),
        pytest.param({**CATALOG, "instance_types": [{"name": "x", "cpu": 0, "memory_gb": 1, "price_per_hour": -1}]},
                     ["instance_types[0].cpu", "instance_types[0].price_per_hour"], id="bad-numbers"),
        pytest.param([1], ["must be a YAML mapping"], id="not-a-mapping"),
    ],
)
def test_a_bad_catalog_names_every_field(data: Any, errors: list[str]) -> None:
    with pytest.raises(SpecError) as exc:
        parse_catalog(data, "c.yaml")
    text = "\n".join(exc.value.errors)
    for e in errors:
        assert e in text


def test_a_bad_traffic_profile_names_every_field() -> None:
    with pytest.raises(SpecError) as exc:
        parse_traffic({"burst": {"replicas": -1}, "requests": {"qps": 1, "hours_per_day": 25}})
    text = "\n".join(exc.value.errors)
    for f in ("burst.replicas", "burst.hours_per_day", "requests.hours_per_day", "requests.days_per_month"):
        assert f in text


def test_the_shipped_catalog_loads_and_prices_an_a10() -> None:
    c = load_catalog()
    assert c.source == str(SHIPPED_CATALOG) and c.currency == "RMB"
    a10 = [t for t in c.instance_types if t.gpu and t.gpu.kind == "A10" and t.gpu.count == 1]
    assert a10 and a10[0].price_per_hour == 5  # the field guide's 5 RMB/h


def _write(tmp: Path, name: str, data: Any) -> str:
    p = tmp / name
    p.write_text(json.dumps(data))
    return str(p)


def test_cli_cost_estimate_prints_each_line_with_its_arithmetic(tmp_path: Path) -> None:
    args = ["cost", "estimate", "-f", _write(tmp_path, "s.json", field_guide_spec()),
            "--traffic", _write(tmp_path, "t.yaml", TRAFFIC), "--catalog", _write(tmp_path, "c.yaml", CATALOG)]
    r = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for line in ("2 replicas x 5 RMB/h x 720 h = 7,200.00 RMB", "3 replicas x 5 RMB/h x 9 h x 22 days = 2,970.00 RMB",
                 "5 QPS x 86,400 s x 22 days x 0.0001 RMB = 950.40 RMB", "14 GB x 30 cold starts x 0.5 RMB/GB = 210.00 RMB",
                 "monthly total         11,330.40 RMB/month"):
        assert line in r.output
    j = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(j.output)["monthly_total"] == 11330.4


def test_cli_cost_estimate_names_every_bad_input_at_once(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["cost", "estimate", "-f", _write(tmp_path, "s.json", field_guide_spec()),
                                 "--traffic", _write(tmp_path, "t.yaml", {"burst": {"replicas": -1}}),
                                 "--catalog", _write(tmp_path, "c.yaml", {"currency": "RMB"})])
    assert r.exit_code == 2
    assert "instance_types" in r.output and "burst.replicas" in r.output


@pytest.fixture
def priced_server(tmp_path: Path) -> Any:
    srv = new_server(tmp_path / "data")
    srv.extra_args.extend(["--catalog", _write(tmp_path, "catalog.yaml", CATALOG)])
    yield srv.start()
    stop_and_reap(srv)


def test_the_server_prices_by_its_catalog_in_the_api_dry_run_and_deploy(priced_server: Server, tmp_path: Path) -> None:
    client = priced_server.client
    body = {"spec": field_guide_spec(), "traffic": TRAFFIC}
    assert client.request("POST", "/api/v1/cost/estimate", json_body=body)["monthly_total"] == 11330.4
    bad = {"spec": {"metadata": {}}, "traffic": {"burst": {"replicas": -1}}}
    with pytest.raises(Exception) as exc:  # one 400 naming the spec's and the traffic's fields
        client.request("POST", "/api/v1/cost/estimate", json_body=bad)
    assert "burst.replicas" in str(getattr(exc.value, "errors", "")) and "metadata.name" in str(getattr(exc.value, "errors", ""))
    s = service_spec("priced", replicas=0)
    s["cloud"] = {"computing": {"instance_type": "big"}}
    plan = client.dry_run(s)
    assert plan["cost"]["monthly_total"] == 0  # 0 replicas x 2 x 720
    env = {"OPENEAS_DATA_DIR": str(priced_server.data_dir), "OPENEAS_SERVER": None, "OPENEAS_ADMIN_TOKEN": None}
    s["metadata"]["instance"] = 0
    r = CliRunner().invoke(app, ["deploy", "-f", _write(tmp_path, "p.json", s), "--no-wait"], env=env)
    # no terminal: the estimate is printed and the deploy proceeds
    assert r.exit_code == 0, r.output
    assert "cost: cloud.computing.instance_type: big" in r.output and "created service priced" in r.output
    got = client.request("GET", "/api/v1/services/priced/cost")
    assert got["pricing"]["instance_type"] == "big" and got["currency"] == "RMB"

"""End to end: service groups through a real server, its gateway process and test-server replicas
(real HTTP on 127.0.0.1). A 90/10 split over 5,000 requests passes a chi-square test; header,
user-agent and region rules send the right requests to the right member; a weight change (and
its rollback) under load is acknowledged by the gateway before the API call returns, and no
request sent after the return follows the old weights, with no failed request; bad input gets clear errors; the CLI applies a group spec and gives its endpoint; the
48-hour rule guards a service that left the traffic."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas.sdk.client import ApiError
from tests import behaviour
from tests.behaviour import call, member
from tests.harness import Server, new_server, service_spec, stop_and_reap

pytestmark = pytest.mark.slow

CHI2_1DF_P001 = 10.828  # chi-square critical value, 1 degree of freedom, p = 0.001
MEMBERS = ("blue", "green", "canary", "eu")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = new_server(tmp_path_factory.mktemp("groups") / "data").start()
    try:
        c = server.client
        for name in MEMBERS:
            # Each replica answers /v1/models with its own model name: the member that served.
            c.deploy(service_spec(name, args=f"--model-name {name}"))
        for name in MEMBERS:
            c.wait_ready(name, 1, timeout_s=90)
        yield server
    finally:
        stop_and_reap(server)


def test_a_90_10_split_over_5000_requests_passes_a_chi_square_test(srv: Server) -> None:
    c = srv.client
    c.group_create({"name": "split", "routes": [{"service": "blue", "weight": 900}, {"service": "green", "weight": 100}]})
    info = c.group_call_info("split")
    n = 5000
    counts = {"blue": 0, "green": 0}
    with requests.Session() as s:
        for _ in range(n):
            counts[member(call(s, info))] += 1
    expected = {"blue": 0.9 * n, "green": 0.1 * n}
    chi2 = sum((counts[k] - e) ** 2 / e for k, e in expected.items())
    assert chi2 < CHI2_1DF_P001, counts
    stats = c.group("split")["stats"]  # the gateway counted the same
    assert stats["blue"]["live"]["requests"] == counts["blue"]
    assert stats["green"]["live"]["requests"] == counts["green"]
    assert stats["green"]["live"]["success"] == 1.0


def test_match_rules_send_each_request_to_its_member_and_the_rest_by_weight(srv: Server) -> None:
    c = srv.client
    c.group_create(
        {
            "name": "rules",
            "region_header": "X-Region",
            "routes": [
                {"service": "blue", "weight": 1000},
                {"service": "green", "match": {"headers": {"X-Tester": "internal"}}},
                {"service": "canary", "match": {"user_agent": "^acme-app/2\\."}},
                {"service": "eu", "match": {"region": ["eu-west", "eu-north"]}},
            ],
        }
    )
    info = c.group_call_info("rules")
    cases = [
        ({"X-Tester": "internal"}, "green"),
        ({"x-tester": "internal", "User-Agent": "acme-app/2.3"}, "green"),  # the first rule that matches
        ({"X-Tester": "someone-else"}, "blue"),
        ({"User-Agent": "acme-app/2.3 (ios)"}, "canary"),
        ({"User-Agent": "acme-app/1.9"}, "blue"),
        ({"X-Region": "eu-north"}, "eu"),
        ({"X-Region": "us-east"}, "blue"),
        ({}, "blue"),
    ]
    with requests.Session() as s:
        for headers, expected in cases:
            for _ in range(20):
                assert member(call(s, info, headers)) == expected, headers
        # One member directly, through the group: /api/predict/<group>.<service>.
        direct = {"endpoint": info["endpoint"] + ".canary", "token": info["token"]}
        assert member(call(s, direct)) == "canary"
        svc_token = c.call_info("canary")["token"]  # the member's own token opens it too
        assert member(call(s, {"endpoint": direct["endpoint"], "token": svc_token})) == "canary"
        assert call(s, {"endpoint": info["endpoint"], "token": svc_token}).status_code == 401
        missing = call(s, {"endpoint": info["endpoint"] + ".nope", "token": info["token"]})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "member_not_found"


def test_a_weight_change_under_load_is_in_effect_when_the_call_returns_and_fails_nothing(srv: Server) -> None:
    behaviour.group_weight_change_under_load(srv.client, "swap", "blue", "green")


@pytest.mark.parametrize(
    ("call_api", "status", "message"),
    [
        (lambda c: c.group_create({"name": "bad1", "routes": [{"service": "nope", "weight": 1}]}), 400, "routes[0].service: no service 'nope'"),
        (lambda c: c.group_create({"name": "bad2", "routes": [{"service": "blue", "weight": 5000}]}), 400, "routes[0].weight: must be 0..1000, got 5000"),
        (lambda c: c.group_create({"name": "bad3", "routes": [{"service": "blue", "mirror_weight": 150}]}), 400, "routes[0].mirror_weight: must be a percentage 0..100, got 150"),
        (lambda c: c.group_create({"name": "bad4", "routes": [{"service": "blue", "weight": 1000, "mirror_weight": 5}]}), 400, "service 'blue' would mirror to itself"),
        (lambda c: c.group_create({"name": "blue", "routes": []}), 409, "'blue' is the name of a service"),
        (lambda c: c.group_weights("split", {"nope": 1}), 400, "nope: not a member of group 'split'"),
        (lambda c: c.group_weights("split", {"blue": 1001}), 400, "weights.blue: must be 0..1000, got 1001"),
        (lambda c: c.group_weights("split", None, {"green": 101}), 400, "mirror_weights.green: must be a percentage 0..100, got 101"),
        (lambda c: c.group_weights("nogroup", {"blue": 1}), 404, "group 'nogroup' not found"),
    ],
    ids=["unknown-member", "weight-range", "mirror-over-100", "mirror-to-itself", "name-clash", "weights-unknown", "weights-range", "mirror-range", "no-group"],
)
def test_bad_input_gets_a_clear_error(srv: Server, call_api: Any, status: int, message: str) -> None:
    with pytest.raises(ApiError) as e:
        call_api(srv.client)
    assert e.value.status == status
    assert message in str(e.value), str(e.value)


def cli(srv: Server, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli", *args],
        env=srv.env(),
        capture_output=True,
        text=True,
        input=input_text,
        timeout=60,
    )


def test_cli_applies_a_group_spec_and_gives_its_endpoint(srv: Server, tmp_path: Path) -> None:
    f = tmp_path / "group.yaml"
    f.write_text(
        "kind: ServiceGroup\nname: cli_group\ntraffic_mode: customized\n"
        "routes:\n  - service: blue\n    weight: 700\n  - service: green\n    weight: 300\n"
    )
    r = cli(srv, "deploy", "-f", str(f))
    assert r.returncode == 0, r.stderr
    assert "created group cli_group: blue 70%, green 30%" in r.stdout
    info = json.loads(cli(srv, "call-info", "cli_group", "--json").stdout)
    assert info["endpoint"].endswith("/api/predict/cli_group") and len(info["token"]) >= 8
    with requests.Session() as s:
        assert member(call(s, info)) in ("blue", "green")
    r = cli(srv, "group", "set-weight", "cli_group", "blue=0", "green=1000")
    assert r.returncode == 0 and "green 1000 (100%)" in r.stdout, r.stdout + r.stderr
    d = json.loads(cli(srv, "group", "describe", "cli_group", "--json").stdout)
    assert [m["share_percent"] for m in d["members"]] == [0.0, 100.0]
    assert d["members"][0]["at_zero_s"] is not None  # blue has been at 0 since the change
    r = cli(srv, "group", "set-weight", "cli_group", "blue=lots")
    assert r.returncode == 2 and "expected SERVICE=INTEGER, got 'blue=lots'" in r.stderr
    f.write_text(f.read_text().replace("weight: 700", "weight: 7000"))
    r = cli(srv, "deploy", "-f", str(f))
    assert r.returncode == 2 and "routes[0].weight: must be 0..1000, got 7000" in r.stderr


def test_metadata_group_joins_and_the_48_hour_rule_guards_the_old_version(srv: Server) -> None:
    c = srv.client
    c.deploy(service_spec("v1", args="--model-name v1", metadata={"name": "v1", "instance": 1, "group": "app"}))
    c.deploy(service_spec("v2", args="--model-name v2", metadata={"name": "v2", "instance": 1, "group": "app"}))
    g = c.group("app", stats=False)
    assert [(m["service"], m["weight"]) for m in g["members"]] == [("v1", 1000), ("v2", 0)]  # EAS: first one serves
    c.group_weights("app", {"v1": 0, "v2": 1000})  # the swap
    with pytest.raises(ApiError) as e:
        c.delete("v1")
    assert e.value.status == 409 and e.value.code == "in_group_traffic"
    assert "left the traffic of group 'app' 0.0 h ago" in e.value.message and "--force" in e.value.message
    with pytest.raises(ApiError, match="carries traffic of group 'app'"):
        c.stop("v2")
    r = cli(srv, "delete", "v1")
    assert r.returncode == 1 and "keep_old_hours" in r.stderr
    assert cli(srv, "delete", "v1", "--force").returncode == 0

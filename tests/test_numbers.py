"""Issue 18 §6: numbers are finite and never booleans (specs, group specs, scale and rollback
bodies), a rollback to a version SQLite cannot hold is a 400, and the gateway's /metrics drops
the series of a service that left the routing table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from openeas.errors import SpecError
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.spec import parse_spec
from openeas.spec.group import parse_group
from openeas.spec.load import parse_json
from tests.harness import service_spec
from tests.test_api_hardening import Api


def _spec(**metadata: Any) -> str:
    s = service_spec("num")
    s["metadata"].update(metadata)
    return json.dumps(s)


SPECS = [
    pytest.param(_spec(cpu=float("inf")), ["metadata.cpu: must be a finite number, got inf"], id="cpu-Infinity"),
    pytest.param(_spec().replace('"instance": 1', '"cpu": 1e999, "instance": 1'),
                 ["metadata.cpu: must be a finite number, got inf"], id="cpu-1e999"),
    pytest.param(_spec(cpu=float("nan")), ["metadata.cpu: must be a finite number, got nan"], id="cpu-NaN"),
    pytest.param(_spec(cpu=True, memory=False, instance=True),
                 ["metadata.instance: must be a number, not a boolean (true)",
                  "metadata.cpu: must be a number, not a boolean (true)",
                  "metadata.memory: must be a number, not a boolean (false)"], id="booleans-all-at-once"),
    pytest.param(_spec(eas={"termination_grace_period": float("-inf")}),
                 ["metadata.eas.termination_grace_period: must be a finite number, got -inf"], id="grace-minus-inf"),
    pytest.param(_spec(rpc={"keepalive": True}), ["metadata.rpc.keepalive: must be a number, not a boolean (true)"],
                 id="keepalive-true"),
    pytest.param(json.dumps({**json.loads(_spec()), "autoscaler": {"min": 1, "max": 2, "strategies": {"qps": True}}}),
                 ["autoscaler.strategies: qps: must be a number, not a boolean (true)"], id="strategy-true"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "errors"), SPECS)
def test_spec_numbers_are_finite_and_not_booleans(text: str, errors: list[str]) -> None:
    with pytest.raises(SpecError) as exc:
        parse_spec(parse_json(text))
    assert exc.value.errors == errors


@pytest.mark.parametrize(
    ("route", "error"),
    [
        pytest.param({"service": "a", "weight": True}, "routes[0].weight: must be a number, not a boolean (true)",
                     id="weight-true"),
        pytest.param({"service": "a", "weight": float("inf")}, "routes[0].weight: must be a finite number, got inf",
                     id="weight-inf"),
    ],
)  # fmt: skip
def test_group_spec_weight_is_a_number(route: dict[str, Any], error: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_group({"name": "g", "routes": [route]})
    assert error in exc.value.errors


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with Api(tmp_path_factory.mktemp("numbers") / "data") as a:
        assert a.call("POST", "/api/v1/services", json=service_spec("svc", replicas=0)).status_code == 201
        assert a.call("POST", "/api/v1/groups", json={"name": "grp", "routes": [{"service": "svc"}]}).ok
        yield a


BODIES = [
    pytest.param("/api/v1/services/svc/rollback", '{"version": 9223372036854775808}', 400,
                 "version: input should be less than or equal to 9223372036854775807", id="rollback-2^63"),
    pytest.param("/api/v1/services/svc/rollback", '{"version": 99999999999999999999999}', 400,
                 "version: input should be less than or equal to 9223372036854775807", id="rollback-huge"),
    pytest.param("/api/v1/services/svc/rollback", '{"version": 9223372036854775807}', 404,
                 "service 'svc' has no version 9223372036854775807", id="rollback-2^63-1-not-found"),
    pytest.param("/api/v1/services/svc/rollback", '{"version": true}', 400,
                 "version: must be a number, not a boolean (true)", id="rollback-true"),
    pytest.param("/api/v1/services/svc/scale", '{"replicas": true}', 400,
                 "replicas: must be a number, not a boolean (true)", id="scale-true"),
    pytest.param("/api/v1/services/svc/scale", '{"replicas": 1e999}', 400,
                 "replicas: must be a finite number, got inf", id="scale-1e999"),
    pytest.param("/api/v1/services/svc/scale", '{"replicas": NaN}', 400,
                 "replicas: must be a finite number, got nan", id="scale-NaN"),
    pytest.param("/api/v1/services/svc/scale", '{"replicas": 1e3}', 200, None, id="scale-1e3-is-1000"),
    pytest.param("/api/v1/groups/grp/weights", '{"weights": {"svc": true}}', 400,
                 "weights: svc: must be a number, not a boolean (true)", id="group-weights-true"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "message"), BODIES)
def test_api_bodies(api: Api, path: str, body: str, status: int, message: str | None) -> None:
    r = api.call("POST", path, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    if message is not None:
        assert r.json()["error"]["message"] == message


@pytest.mark.parametrize(
    ("routed", "groups", "kept", "kept_groups"),
    [
        pytest.param({"a", "b"}, {"g"}, {"a", "b", "busy"}, {("g", "a")}, id="nothing-routed-left"),
        pytest.param({"a"}, {"g"}, {"a", "busy"}, {("g", "a")}, id="b-deleted-busy-kept-in-flight"),
        pytest.param(set(), set(), {"busy"}, set(), id="all-deleted"),
    ],
)
def test_gateway_metrics_forget_services_that_left_the_table(
    routed: set[str], groups: set[str], kept: set[str], kept_groups: set[tuple[str, str]]
) -> None:
    m = GatewayMetrics()
    for name in ("a", "b", "busy"):
        m.service(name).in_flight += 1
        m.service(name).finish(200, 0.01)
    m.service("busy").in_flight += 1  # a request still in flight: its counters stay until it ends
    m.group_member("g", "a")
    m.retain(routed, groups)
    assert set(m.services) == kept
    assert set(m.groups) == kept_groups
    text = m.render().decode()
    for name in {"a", "b"} - kept:
        assert f'service="{name}"' not in text

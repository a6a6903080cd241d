"""SDK: server discovery (real files, real env mappings), and the client against the real control
plane (a real `openeas server` with real replicas, shared by this module's tests; each test uses
services of its own names). The wait logic is also driven by scripted answers (ScriptedClient)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from openeas.sdk import ApiError, Client, ConnectionFailed, ServerInfo, ServerNotFound, WaitTimeout, discover
from openeas.sdk.discovery import NOT_FOUND_HINT
from tests.conftest_gateway import refusing_port
from tests.harness import Server, service_spec, wait_for


def spec(name: str, instance: int = 0, token: str | None = None, **extra: Any) -> dict[str, Any]:
    """A spec of the built-in test server; 0 replicas unless asked (no process to wait for)."""
    s = service_spec(name, replicas=instance, **extra)
    if token:
        s["token"] = token
    return s


@pytest.fixture
def client(shared_server: Server) -> Iterator[Client]:
    with Client(shared_server.api_url, shared_server.info["admin_token"], timeout_s=10,
                gateway_url=shared_server.gateway_url) as c:  # fmt: skip
        yield c


@pytest.fixture
def dead_url() -> Iterator[str]:
    with refusing_port() as s:  # nothing answers there while the test runs
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


# -- discovery ------------------------------------------------------------------------------------

SERVER_JSON = {
    "gateway_url": "http://127.0.0.1:8081/",
    "api_url": "http://127.0.0.1:8080/",
    "admin_token": "t0k",
}


@pytest.mark.parametrize(
    ("where", "env_keys", "expected_api"),
    [
        pytest.param("explicit", {}, "http://127.0.0.1:8080", id="explicit-data-dir"),
        pytest.param("env-dir", {"OPENEAS_DATA_DIR"}, "http://127.0.0.1:8080", id="OPENEAS_DATA_DIR"),
        pytest.param("cwd", {}, "http://127.0.0.1:8080", id="default-./.data"),
        pytest.param(
            "none", {"OPENEAS_SERVER", "OPENEAS_ADMIN_TOKEN"}, "http://remote:9000", id="OPENEAS_SERVER"
        ),
        # an explicit directory wins over every environment variable
        pytest.param(
            "explicit",
            {"OPENEAS_SERVER", "OPENEAS_ADMIN_TOKEN", "OPENEAS_DATA_DIR"},
            "http://127.0.0.1:8080",
            id="explicit-beats-env",
        ),
        # OPENEAS_SERVER names a server more precisely than a data directory does
        pytest.param(
            "env-dir",
            {"OPENEAS_SERVER", "OPENEAS_ADMIN_TOKEN", "OPENEAS_DATA_DIR"},
            "http://remote:9000",
            id="server-env-beats-data-dir-env",
        ),
    ],
)
def test_discover_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, env_keys: set[str], expected_api: str
) -> None:
    data = tmp_path / ("data" if where != "cwd" else ".data")
    data.mkdir()
    (data / "server.json").write_text(json.dumps({**SERVER_JSON, "pid": 42}))
    monkeypatch.chdir(tmp_path)
    all_env = {
        "OPENEAS_DATA_DIR": str(data),
        "OPENEAS_SERVER": "http://remote:9000/",
        "OPENEAS_ADMIN_TOKEN": "env-token",
    }
    env = {k: v for k, v in all_env.items() if k in env_keys}
    info = discover(str(data) if where == "explicit" else None, env=env)
    assert info.api_url == expected_api
    if expected_api.startswith("http://remote"):
        assert info == ServerInfo("http://remote:9000", "env-token", None, None, "OPENEAS_SERVER")
    else:
        assert info.admin_token == "t0k"
        assert info.gateway_url == "http://127.0.0.1:8081"
        assert info.pid == 42
        assert info.source.endswith("server.json")


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        pytest.param(None, {}, NOT_FOUND_HINT, id="nothing"),
        pytest.param(
            None, {"OPENEAS_SERVER": "http://x:1"}, "OPENEAS_ADMIN_TOKEN is not", id="server-no-token"
        ),
        pytest.param("{not json", {"OPENEAS_DATA_DIR": "."}, "cannot read", id="bad-json"),
        pytest.param(
            '{"api_url": "http://x:1"}',
            {"OPENEAS_DATA_DIR": "."},
            "'admin_token' are required",
            id="missing-token",
        ),
        pytest.param(
            None, {"OPENEAS_DATA_DIR": "nowhere"}, NOT_FOUND_HINT, id="data-dir-without-server-json"
        ),
    ],
)
def test_discover_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, env: dict[str, str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if content is not None:
        (tmp_path / "server.json").write_text(content)
    with pytest.raises(ServerNotFound) as exc:
        discover(None, env=env)
    assert message in str(exc.value)


def test_from_env_reads_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "server.json").write_text(json.dumps(SERVER_JSON))
    monkeypatch.delenv("OPENEAS_SERVER", raising=False)
    monkeypatch.setenv("OPENEAS_DATA_DIR", str(tmp_path))
    c = Client.from_env()
    assert (c.api_url, c.admin_token, c.gateway_url) == (
        "http://127.0.0.1:8080",
        "t0k",
        "http://127.0.0.1:8081",
    )


# -- client against the real control plane ------------------------------------------------------


def test_deploy_then_describe_gives_the_spec_as_written(client: Client) -> None:
    written = spec("sdk_deploy", token="sdk-token-0123456789")
    written["metadata"]["labels"] = {"team": "nlp", "owner": None}  # unknown fields, a null too
    detail = client.deploy(written)
    assert (detail["name"], detail["version"], detail["status"]) == ("sdk_deploy", 1, "Running")
    # The real API answers the spec as written, without its token (kept encrypted apart) and
    # without defaults filled in.
    assert client.describe("sdk_deploy")["spec"] == {k: v for k, v in written.items() if k != "token"}
    assert client.call_info("sdk_deploy")["token"] == "sdk-token-0123456789"


def test_apply_creates_then_updates(client: Client) -> None:
    d1, created1 = client.apply(spec("sdk_apply"))
    d2, created2 = client.apply(spec("sdk_apply", args="--model-name second"))
    assert (created1, d1["version"]) == (True, 1)
    assert (created2, d2["version"]) == (False, 2)
    assert "--model-name second" in client.describe("sdk_apply")["spec"]["containers"][0]["command"]


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        pytest.param(
            {"port": 70000, "instance": 5000},
            [
                "metadata.instance: input should be less than or equal to 1000",
                "containers[0].port: must be 1..65535",
            ],
            id="two-fields",
        ),
        pytest.param(
            {"runtime": "ray"},
            ["runtime: 'ray': EAS's runtime block is an object ({\"enable_crash_block\": ...}); as a string "
             "it is the older spelling of metadata.replica_runtime: 'auto', 'process' or 'container'"],
            id="unknown-runtime",
        ),
    ],
)
def test_invalid_spec_becomes_an_api_error_with_field_lines(
    client: Client, change: dict[str, Any], errors: list[str]
) -> None:
    bad = spec("sdk_bad")
    if "port" in change:
        bad["containers"][0]["port"] = change["port"]
    if "instance" in change:
        bad["metadata"]["instance"] = change["instance"]
    if "runtime" in change:
        bad["runtime"] = change["runtime"]
    with pytest.raises(ApiError) as exc:
        client.deploy(bad)
    e = exc.value
    assert (e.status, e.code) == (400, "invalid_spec")
    assert e.errors == errors
    assert str(e) == f"{e.message} (HTTP 400, invalid_spec)\n" + "\n".join(f"  {line}" for line in e.errors)


@pytest.mark.parametrize(
    ("call", "status", "code", "message"),
    [
        pytest.param(lambda c: c.describe("ghost"), 404, "not_found", "service 'ghost' not found", id="unknown-service"),
        pytest.param(lambda c: c.rollback("sdk_errors", 9), 404, "not_found", "service 'sdk_errors' has no version 9",
                     id="unknown-version"),
        pytest.param(lambda c: c.logs("sdk_errors", replica="nope"), 404, "not_found",
                     "service 'sdk_errors' has no replica 'nope'", id="unknown-replica"),
        pytest.param(lambda c: c.deploy(spec("sdk_errors")), 409, "conflict", "service 'sdk_errors' already exists",
                     id="exists"),
        pytest.param(lambda c: c.scale("sdk_errors", 1001), 400, "invalid_request",
                     "replicas: input should be less than or equal to 1000", id="scale-too-large"),
    ],
)  # fmt: skip
def test_api_errors(client: Client, call: Any, status: int, code: str, message: str) -> None:
    if not any(s["name"] == "sdk_errors" for s in client.list()):
        client.deploy(spec("sdk_errors"))
    with pytest.raises(ApiError) as exc:
        call(client)
    assert (exc.value.status, exc.value.code, exc.value.message) == (status, code, message)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        pytest.param("wrong", "wrong admin token", id="wrong"),
        pytest.param("", "missing admin token: send 'Authorization: Bearer <admin_token>'", id="missing"),
    ],
)
def test_admin_token_is_required(shared_server: Server, token: str, message: str) -> None:
    with pytest.raises(ApiError) as exc, Client(shared_server.api_url, token) as bad:
        bad.list()
    assert (exc.value.status, exc.value.code, exc.value.message) == (401, "unauthorized", message)


def test_unreachable_server_names_the_source(tmp_path: Path, dead_url: str) -> None:
    (tmp_path / "server.json").write_text(json.dumps({**SERVER_JSON, "api_url": dead_url}))
    c = Client.from_env(tmp_path, timeout_s=2)
    with pytest.raises(ConnectionFailed) as exc:
        c.list()
    assert exc.value.status == 0
    assert f"cannot reach OpenEAS server at {dead_url}" in str(exc.value)
    assert str(tmp_path / "server.json") in str(exc.value)


def test_operations_change_the_desired_state(client: Client) -> None:
    name = "sdk_ops"
    client.deploy(spec(name))
    assert client.scale(name, 3)["desired_replicas"] == 3
    assert client.scale(name, 0)["desired_replicas"] == 0
    assert client.stop(name)["status"] == "Stopped"
    assert client.start(name)["status"] == "Running"
    assert client.update(name, spec(name, args="--model-name two"))["version"] == 2
    assert [(v["version"], v["current"]) for v in client.versions(name)] == [(1, False), (2, True)]
    back = client.rollback(name, 1)
    assert back["version"] == 3 and back["spec"] == client.describe(name)["spec"] == spec(name)
    reasons = [e["reason"] for e in client.events(name, limit=100)]
    for reason in ("Created", "Scaled", "Stopped", "Started", "Updated", "RolledBack"):
        assert reason in reasons
    assert len(client.events(name, limit=2)) == 2
    assert client.logs(name, tail=5) == []  # no replica, no log
    assert name in [s["name"] for s in client.list()]
    assert client.delete(name) == {"deleted": name}
    client.wait_deleted(name, timeout_s=30, poll_s=0.1)
    assert name not in [s["name"] for s in client.list()]


def test_wait_ready_polls_until_the_replica_is_ready(client: Client) -> None:
    client.deploy(spec("sdk_wait", instance=1))
    seen: list[str] = []
    detail = client.wait_ready(
        "sdk_wait", timeout_s=60, poll_s=0.05, on_progress=lambda d: seen.append(d["status"])
    )
    assert detail["ready_replicas"] == 1 and detail["replicas"][0]["phase"] == "Ready"
    assert seen[0] == "Pending" and seen[-1] == "Running"  # it did poll while the replica started
    logs = client.logs("sdk_wait", tail=5)
    assert len(logs) == 1 and "listening on" in logs[0]["text"]


def test_wait_ready_times_out_with_last_detail(client: Client) -> None:
    client.deploy(spec("sdk_timeout"))
    with pytest.raises(WaitTimeout) as exc:
        client.wait_ready("sdk_timeout", replicas=5, timeout_s=0.3, poll_s=0.05)
    assert str(exc.value) == "service sdk_timeout: 0/5 replicas ready after 0.3s"
    assert exc.value.last is not None and exc.value.last["name"] == "sdk_timeout"


def test_predict_uses_the_service_token_and_caches_it(client: Client, dead_url: str) -> None:
    client.deploy(spec("sdk_predict", instance=1, token="predict-token-0123456789"))
    client.wait_ready("sdk_predict", timeout_s=60)
    resp = client.predict("sdk_predict", {"prompt": "hi", "max_tokens": 2}, path="v1/completions")
    assert resp.json()["object"] == "text_completion"
    # The gateway takes only the service's token: the admin token gets a 401.
    r = requests.post(f"{client.gateway_url}/api/predict/sdk_predict/echo",
                      headers={"Authorization": f"Bearer {client.admin_token}"}, timeout=10)  # fmt: skip
    assert r.status_code == 401
    # call-info is cached: with the control plane out of reach, predict still works.
    api_url, client.api_url = client.api_url, dead_url
    try:
        assert client.predict("sdk_predict", b"raw", path="/echo").status_code == 200
    finally:
        client.api_url = api_url


def test_predict_refetches_a_rotated_token(shared_server: Server, client: Client) -> None:
    client.deploy(spec("sdk_rotate", instance=1, token="first-token-0123456789"))
    client.wait_ready("sdk_rotate", timeout_s=60)
    assert client.predict("sdk_rotate", {"prompt": "x"}, path="/v1/completions").status_code == 200
    # Someone else rotates the token; this client still has the old one cached.
    other = shared_server.client
    other.update("sdk_rotate", spec("sdk_rotate", instance=1, token="second-token-0123456789"))
    other.wait_ready("sdk_rotate", timeout_s=60)
    gw = f"{shared_server.gateway_url}/api/predict/sdk_rotate/echo"
    wait_for(lambda: requests.post(gw, headers={"Authorization": "first-token-0123456789"}, timeout=10).status_code == 401,
             10, what="the gateway using the new token")  # fmt: skip
    assert client.predict("sdk_rotate", {"prompt": "x"}, path="/v1/completions").status_code == 200
    assert client._call_info["sdk_rotate"]["token"] == "second-token-0123456789"


def test_api_error_from_non_json_body() -> None:
    resp = requests.Response()
    resp.status_code = 502
    resp.reason = "Bad Gateway"
    resp._content = b"<html>upstream down</html>"
    e = ApiError.from_response(resp)
    assert (e.status, e.code, e.message) == (502, "http_502", "<html>upstream down</html>")


class ScriptedClient(Client):
    """``describe`` answers from a script (the last answer repeats): waits without any server."""

    def __init__(self, details: list[dict[str, Any]]) -> None:
        super().__init__("http://127.0.0.1:9", "unused")
        self.details = details
        self.calls = 0

    def describe(self, name: str) -> dict[str, Any]:
        self.calls += 1
        return self.details[min(self.calls, len(self.details)) - 1]


def _detail(status: str, *replicas: tuple[str, int, bool], message: str | None = None) -> dict[str, Any]:
    return {
        "name": "demo",
        "status": status,
        "version": 2,
        "desired_replicas": 1,
        "replicas": [
            {"id": f"r{i}", "phase": p, "version": v, "stopping": s, "message": message}
            for i, (p, v, s) in enumerate(replicas)
        ],
    }


READY_V2 = _detail("Running", ("Ready", 2, False))


@pytest.mark.parametrize(
    ("script", "grace", "outcome"),
    [
        pytest.param([READY_V2], 30, "ready", id="ready-at-once"),
        # a replica of the old version being Ready does not make the new version ready
        pytest.param(
            [_detail("Updating", ("Ready", 1, False), ("Starting", 2, False)), READY_V2],
            30,
            "ready",
            id="old-version-ready-does-not-count",
        ),
        # a Ready current-version replica that is being stopped (scale down) does not count either
        pytest.param([_detail("Running", ("Ready", 2, True))], 30, "timeout", id="stopping-does-not-count"),
        # Failed for less than the grace period, then recovers: the wait goes on
        pytest.param(
            [_detail("Failed", ("Starting", 2, False), message="exit 1"), READY_V2],
            30,
            "ready",
            id="failed-then-recovers",
        ),
        pytest.param(
            [_detail("Failed", ("Failed", 2, False), message="exit code 1: no such model")],
            0,
            "failed",
            id="failed-past-grace",
        ),
    ],
)
def test_wait_ready_outcomes(script: list[dict[str, Any]], grace: float, outcome: str) -> None:
    c = ScriptedClient(script)
    try:
        c.wait_ready("demo", timeout_s=0.1, poll_s=0.01, failed_grace_s=grace)
        got = "ready"
    except WaitTimeout:
        got = "timeout"
    except ApiError as exc:
        assert exc.code == "failed" and str(exc) == "service demo failed: exit code 1: no such model"
        got = "failed"
    assert got == outcome

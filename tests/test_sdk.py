"""SDK: server discovery (real files, real env mappings) and the client against a fake control plane.

The fake control plane is a real HTTP server in a thread implementing the API contract's routes
closely enough to check request shapes, auth and error handling; test_cli.py reuses it.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from openeas.sdk import ApiError, Client, ConnectionFailed, ServerInfo, ServerNotFound, WaitTimeout, discover
from openeas.sdk.discovery import NOT_FOUND_HINT

ADMIN_TOKEN = "admin-secret-token"
PHASES = ["Pending", "Fetching", "Starting", "Ready"]


def spec(name: str = "demo", instance: int = 1, token: str | None = None) -> dict[str, Any]:
    s: dict[str, Any] = {
        "metadata": {"name": name, "instance": instance},
        "containers": [{"command": "python -m http.server 8000", "port": 8000}],
    }
    if token:
        s["token"] = token
    return s


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeService:
    name: str
    spec: dict[str, Any]
    desired: int
    version: int = 1
    specs: dict[int, dict[str, Any]] = field(default_factory=dict)
    replicas: list[dict[str, Any]] = field(default_factory=list)
    status: str = "Pending"
    deleting_polls: int | None = None
    token: str = "svc-token-1"


class FakeControlPlane:
    """A control plane that keeps services in memory; replicas move one phase per ``describe``.

    ``steps_to_ready`` phases after a (re)deploy the replicas are Ready: 0 means immediately.
    A spec named ``reject_me`` answers 400 with field errors (a server-side validation failure).
    """

    def __init__(self, steps_to_ready: int = 3) -> None:
        self.steps_to_ready = steps_to_ready
        self.services: dict[str, FakeService] = {}
        self.requests: list[Recorded] = []
        self.tokens_rotated = 0
        self._lock = threading.Lock()
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode()
                rec = Recorded(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
                with plane._lock:
                    plane.requests.append(rec)
                    status, payload = plane.route(rec)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> FakeControlPlane:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def write_server_json(self, data_dir: Path) -> Path:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "server.json"
        path.write_text(
            json.dumps({"gateway_url": self.url, "api_url": self.url, "admin_token": ADMIN_TOKEN, "pid": 1})
        )
        return path

    def api_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.startswith("/api/v1/")]

    # -- model ---------------------------------------------------------------------------------

    def _rollout(self, svc: FakeService) -> None:
        start = 3 - self.steps_to_ready if self.steps_to_ready <= 3 else 0
        svc.replicas = [
            {
                "id": f"{svc.name}-v{svc.version}-{i}",
                "version": svc.version,
                "phase": PHASES[max(0, start)],
                "host": "127.0.0.1",
                "port": 30000 + i,
                "pid": 4000 + i,
                "restart_count": 0,
                "phase_times": {},
                "cold_start": {"fetch_s": None, "start_s": None, "warm_s": None, "total_s": None},
                "message": None,
            }
            for i in range(svc.desired)
        ]
        self._advance(svc, steps=0)

    def _status(self, svc: FakeService) -> None:
        ready = sum(r["phase"] == "Ready" for r in svc.replicas)
        if svc.deleting_polls is not None:
            svc.status = "Deleting"
        elif svc.desired == 0:
            svc.status = "Stopped"
        else:
            svc.status = "Running" if ready >= svc.desired else "Pending"

    def _advance(self, svc: FakeService, steps: int = 1) -> None:
        for r in svc.replicas:
            r["phase"] = PHASES[min(len(PHASES) - 1, PHASES.index(r["phase"]) + steps)]
            if r["phase"] == "Ready":
                r["cold_start"] = {"fetch_s": 0.5, "start_s": 2.25, "warm_s": 0.25, "total_s": 3.0}
        self._status(svc)

    def _summary(self, svc: FakeService) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        return {
            "name": svc.name,
            "status": svc.status,
            "version": svc.version,
            "desired_replicas": svc.desired,
            "ready_replicas": sum(r["phase"] == "Ready" for r in svc.replicas),
            "total_replicas": len(svc.replicas),
            "endpoint": f"{self.url}/api/predict/{svc.name}",
            "created_at": now,
            "updated_at": now,
        }

    def _detail(self, svc: FakeService) -> dict[str, Any]:
        versions = [
            {"version": v, "created_at": "2024-05-01T12:00:00+00:00", "current": v == svc.version}
            for v in sorted(svc.specs)
        ]
        return {**self._summary(svc), "spec": svc.spec, "replicas": svc.replicas, "versions": versions}

    @staticmethod
    def _error(status: int, code: str, message: str, errors: list[str] | None = None) -> tuple[int, Any]:
        err: dict[str, Any] = {"code": code, "message": message}
        if errors is not None:
            err["errors"] = errors
        return status, {"error": err}

    def route(self, r: Recorded) -> tuple[int, Any]:
        if r.path == "/healthz":
            return 200, {"status": "ok"}
        m = re.fullmatch(r"/api/predict/([^/]+)(/.*)?", r.path)
        if m:
            svc = self.services.get(m.group(1))
            if svc is None:
                return self._error(404, "not_found", f"service '{m.group(1)}' not found")
            auth = r.headers.get("Authorization", "")
            if auth.removeprefix("Bearer ") != svc.token:
                return self._error(401, "unauthorized", "bad service token")
            return 200, {"service": svc.name, "path": m.group(2) or "", "echo": r.body}
        if r.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
            return self._error(401, "unauthorized", "invalid admin token")
        if r.path == "/api/v1/services":
            if r.method == "GET":
                return 200, {"services": [self._summary(s) for s in self.services.values()]}
            name = r.body["metadata"]["name"]
            if name == "reject_me":
                return self._error(
                    400,
                    "invalid_spec",
                    "invalid spec",
                    ["containers[0].port: must be 1..65535", "metadata.instance: too large"],
                )
            if name in self.services:
                return self._error(409, "conflict", f"service '{name}' already exists")
            svc = FakeService(name, r.body, int(r.body["metadata"].get("instance", 1)))
            svc.specs[1] = r.body
            self.services[name] = svc
            self._rollout(svc)
            return 201, self._detail(svc)
        m = re.fullmatch(r"/api/v1/services/([^/]+)(?:/([a-z-]+))?", r.path)
        if not m:
            return self._error(404, "not_found", f"no route {r.path}")
        name, action = m.group(1), m.group(2)
        maybe = self.services.get(name)
        if maybe is None:
            return self._error(404, "not_found", f"service '{name}' not found")
        svc = maybe
        if action is None and r.method == "GET":
            if svc.deleting_polls is not None:
                if svc.deleting_polls == 0:
                    del self.services[name]
                    return self._error(404, "not_found", f"service '{name}' not found")
                svc.deleting_polls -= 1
            else:
                self._advance(svc)
            return 200, self._detail(svc)
        if action is None and r.method == "PUT":
            svc.version = max(svc.specs) + 1
            svc.specs[svc.version] = svc.spec = r.body
            svc.desired = int(r.body["metadata"].get("instance", svc.desired))
            self._rollout(svc)
            return 200, self._detail(svc)
        if action is None and r.method == "DELETE":
            svc.deleting_polls = 1
            self._status(svc)
            return 200, {"deleted": name}
        if action == "scale":
            replicas = r.body.get("replicas") if isinstance(r.body, dict) else None
            if not isinstance(replicas, int) or replicas < 0:
                return self._error(400, "bad_request", "replicas must be an integer >= 0")
            svc.desired = replicas
            self._rollout(svc)
            return 200, self._detail(svc)
        if action in ("stop", "start"):
            svc.desired = 0 if action == "stop" else int(svc.spec["metadata"].get("instance", 1))
            self._rollout(svc)
            return 200, self._detail(svc)
        if action == "versions":
            return 200, {"versions": self._detail(svc)["versions"]}
        if action == "rollback":
            old = svc.specs.get(r.body["version"])
            if old is None:
                return self._error(404, "not_found", f"version {r.body['version']} not found")
            svc.version = max(svc.specs) + 1
            svc.specs[svc.version] = svc.spec = old
            self._rollout(svc)
            return 200, self._detail(svc)
        if action == "events":
            limit = int(r.query.get("limit", ["100"])[0])
            evs = [
                {
                    "time": "2024-05-01T12:00:00+00:00",
                    "type": "Normal",
                    "reason": "Scheduled",
                    "message": "replica demo-v1-0 created",
                    "replica": "demo-v1-0",
                },
                {
                    "time": "2024-05-01T12:00:05+00:00",
                    "type": "Warning",
                    "reason": "ProbeFailed",
                    "message": "readiness probe failed: connection refused",
                    "replica": None,
                },
            ]
            return 200, {"events": evs[:limit]}
        if action == "logs":
            replica = r.query.get("replica", [None])[0]
            entries = [{"replica": x["id"], "text": f"hello from {x['id']}\nline 2\n"} for x in svc.replicas]
            return 200, {"logs": [e for e in entries if replica in (None, e["replica"])]}
        if action == "call-info":
            return 200, {"endpoint": f"{self.url}/api/predict/{name}", "token": svc.token}
        return self._error(404, "not_found", f"no route {r.path}")


@pytest.fixture
def plane() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as p:
        yield p


@pytest.fixture
def client(plane: FakeControlPlane) -> Iterator[Client]:
    with Client(plane.url, ADMIN_TOKEN, timeout_s=5) as c:
        yield c


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


# -- client ---------------------------------------------------------------------------------------


def test_deploy_sends_spec_with_admin_auth(plane: FakeControlPlane, client: Client) -> None:
    detail = client.deploy(spec())
    assert detail["name"] == "demo" and detail["version"] == 1
    (req,) = plane.api_requests()
    assert (req.method, req.path, req.body) == ("POST", "/api/v1/services", spec())
    assert req.headers["Authorization"] == f"Bearer {ADMIN_TOKEN}"
    assert req.headers["Content-Type"] == "application/json"


def test_apply_creates_then_updates(plane: FakeControlPlane, client: Client) -> None:
    d1, created1 = client.apply(spec())
    d2, created2 = client.apply(spec(instance=2))
    assert (created1, d1["version"]) == (True, 1)
    assert (created2, d2["version"], d2["desired_replicas"]) == (False, 2, 2)
    # POST, POST (409), PUT
    assert [(r.method, r.path) for r in plane.api_requests()] == [
        ("POST", "/api/v1/services"),
        ("POST", "/api/v1/services"),
        ("PUT", "/api/v1/services/demo"),
    ]


def test_error_body_becomes_api_error(client: Client) -> None:
    with pytest.raises(ApiError) as exc:
        client.deploy(spec("reject_me"))
    e = exc.value
    assert (e.status, e.code, e.message) == (400, "invalid_spec", "invalid spec")
    assert e.errors == ["containers[0].port: must be 1..65535", "metadata.instance: too large"]
    assert str(e) == (
        "invalid spec (HTTP 400, invalid_spec)\n"
        "  containers[0].port: must be 1..65535\n"
        "  metadata.instance: too large"
    )


def test_not_found_and_bad_token(plane: FakeControlPlane, client: Client) -> None:
    with pytest.raises(ApiError) as nf:
        client.describe("ghost")
    assert (nf.value.status, nf.value.code, nf.value.message) == (
        404,
        "not_found",
        "service 'ghost' not found",
    )
    with pytest.raises(ApiError) as unauth, Client(plane.url, "wrong") as bad:
        bad.list()
    assert (unauth.value.status, unauth.value.message) == (401, "invalid admin token")


def test_unreachable_server_names_the_source(tmp_path: Path) -> None:
    (tmp_path / "server.json").write_text(json.dumps({**SERVER_JSON, "api_url": "http://127.0.0.1:9"}))
    c = Client.from_env(tmp_path, timeout_s=2)
    with pytest.raises(ConnectionFailed) as exc:
        c.list()
    assert exc.value.status == 0
    assert "cannot reach OpenEAS server at http://127.0.0.1:9" in str(exc.value)
    assert str(tmp_path / "server.json") in str(exc.value)


def test_operations_request_shapes(plane: FakeControlPlane, client: Client) -> None:
    client.deploy(spec())
    client.scale("demo", 3)
    client.stop("demo")
    client.start("demo")
    client.update("demo", spec(instance=1))
    assert [v["version"] for v in client.versions("demo")] == [1, 2]
    assert client.rollback("demo", 1)["version"] == 3
    assert len(client.events("demo", limit=1)) == 1
    client.logs("demo", replica="demo-v3-0", tail=5)
    assert [s["name"] for s in client.list()] == ["demo"]
    assert client.delete("demo") == {"deleted": "demo"}
    got = [
        (r.method, r.path, r.body, {k: v[0] for k, v in r.query.items()}) for r in plane.api_requests()[1:]
    ]
    assert got == [
        ("POST", "/api/v1/services/demo/scale", {"replicas": 3}, {}),
        ("POST", "/api/v1/services/demo/stop", None, {}),
        ("POST", "/api/v1/services/demo/start", None, {}),
        ("PUT", "/api/v1/services/demo", spec(instance=1), {}),
        ("GET", "/api/v1/services/demo/versions", None, {}),
        ("POST", "/api/v1/services/demo/rollback", {"version": 1}, {}),
        ("GET", "/api/v1/services/demo/events", None, {"limit": "1"}),
        ("GET", "/api/v1/services/demo/logs", None, {"replica": "demo-v3-0", "tail": "5"}),
        ("GET", "/api/v1/services", None, {}),
        ("DELETE", "/api/v1/services/demo", None, {}),
    ]


def test_wait_ready_polls_until_current_version_ready(plane: FakeControlPlane, client: Client) -> None:
    client.deploy(spec(instance=2))
    seen: list[str] = []
    detail = client.wait_ready(
        "demo", timeout_s=10, poll_s=0.01, on_progress=lambda d: seen.append(d["status"])
    )
    assert detail["ready_replicas"] == 2
    # the fake moves one phase per describe: Fetching, Starting, Ready
    assert seen == ["Pending", "Pending", "Running"]


def test_wait_ready_times_out_with_last_detail(client: Client) -> None:
    client.deploy(spec())
    with pytest.raises(WaitTimeout) as exc:
        client.wait_ready("demo", replicas=5, timeout_s=0.2, poll_s=0.05)
    assert "1/5 replicas ready" in str(exc.value)
    assert exc.value.last is not None and exc.value.last["name"] == "demo"


def test_wait_deleted_returns_on_404(client: Client) -> None:
    client.deploy(spec())
    client.delete("demo")
    client.wait_deleted("demo", timeout_s=5, poll_s=0.01)
    with pytest.raises(ApiError):
        client.describe("demo")


def test_predict_uses_service_token_not_admin(plane: FakeControlPlane, client: Client) -> None:
    client.deploy(spec())
    resp = client.predict("demo", {"prompt": "hi"}, path="v1/completions")
    assert resp.json() == {"service": "demo", "path": "/v1/completions", "echo": {"prompt": "hi"}}
    client.predict("demo", b"raw")
    gateway = [r for r in plane.requests if r.path.startswith("/api/predict/")]
    assert [r.headers["Authorization"] for r in gateway] == ["Bearer svc-token-1"] * 2
    # call-info is fetched once and cached
    assert sum(r.path.endswith("/call-info") for r in plane.requests) == 1


def test_predict_refetches_rotated_token(plane: FakeControlPlane, client: Client) -> None:
    client.deploy(spec())
    client.predict("demo", {})
    plane.services["demo"].token = "svc-token-2"
    assert client.predict("demo", {}).status_code == 200
    assert sum(r.path.endswith("/call-info") for r in plane.requests) == 2


def test_api_error_from_non_json_body() -> None:
    import requests

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

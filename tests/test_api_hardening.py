"""Issue 6, section 4: bad specs and bodies that hurt the server are 400s with clear messages,
the OpenAPI document says what the API really answers, and who may read `/metrics`.

The real API (FastAPI under uvicorn, on a real SQLite store) runs in a thread of the test
process; no reconciler runs, so nothing is started for the services created here.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from openeas.api.app import create_app
from openeas.api.control import ControlPlane
from openeas.storage.hostpaths import HostPaths
from openeas.store import Store
from tests.harness import service_spec

TIMEOUT_S = 10  # every answer here is immediate; before the fix /dev/zero froze the API


class Api:
    def __init__(self, data_dir: Path, *, public_metrics: bool = False) -> None:
        store = Store(data_dir)
        self.cp = ControlPlane(store, "http://127.0.0.1:9")
        self.cp.host_paths = HostPaths.build(["/"])  # the warmup file's own checks are tested here
        self.token = self.cp.admin_token
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            create_app(self.cp, public_metrics=public_metrics), log_level="warning", lifespan="off"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Api:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def call(self, method: str, path: str, *, token: str | None = "admin", **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'admin' else token}"
        return requests.request(method, self.url + path, headers=headers, timeout=TIMEOUT_S, **kw)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with Api(tmp_path_factory.mktemp("api") / "data") as a:
        assert a.call("POST", "/api/v1/services", json=_spec("existing")).status_code == 201
        yield a


def _spec(name: str, **extra: Any) -> dict[str, Any]:
    return service_spec(name, replicas=0, **extra)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def _env(name: str, env: Any) -> dict[str, Any]:
    s = _spec(name)
    s["containers"][0]["env"] = env
    return s


def _fifo(tmp: Path) -> str:
    path = tmp / "warm.fifo"
    if not path.exists():
        os.mkfifo(path)
    return str(path)


# Each case: (body as bytes, or a function of a temp dir giving the spec), the first error line.
BAD_SPECS = [
    pytest.param(b'{"x": ' + _deep(1000).encode() + b"}", "spec: nested deeper than 64 levels", id="json-1000-deep"),
    pytest.param(b'{"x": ' + _deep(100_000).encode() + b"}", "spec: nested deeper than 64 levels", id="json-100k-deep"),
    pytest.param(b"[" * 100_000, "spec: nested deeper than 64 levels", id="unclosed-100k-deep"),
    pytest.param(b"{not json", "spec: request body is not valid JSON", id="not-json"),
    pytest.param(lambda _t: _spec("a\n"), "metadata.name: must start with a lowercase letter", id="name-newline"),
    pytest.param(lambda _t: _spec("a\x00"), "metadata.name: must start with a lowercase letter", id="name-nul"),
    pytest.param(lambda _t: _spec("a/b"), "metadata.name: must start with a lowercase letter", id="name-slash"),
    pytest.param(lambda _t: _spec("x" * 64), "metadata.name: must start with a lowercase letter", id="name-64"),
    pytest.param(lambda _t: _env("envnul", [{"name": "A", "value": "a\x00b"}]),
                 "containers[0].env[0].value: must not contain a NUL character", id="env-value-nul"),
    pytest.param(lambda _t: _env("enveq", {"A=B": "1"}),
                 "containers[0].env[0].name: 'A=B' is not a valid environment variable name", id="env-name-eq"),
    pytest.param(lambda _t: _env("envbig", {"BIG": "x" * 10_000_000}),
                 "containers[0].env[0]: the environment string BIG=... is 10000005 bytes; Linux allows at most "
                 "131072 bytes (128 KiB)", id="env-value-10MB"),
    pytest.param(lambda _t: _spec("wzero", warm_up_data_path="/dev/zero"),
                 "warm_up_data_path: /dev/zero is a device, not a regular file", id="warmup-dev-zero"),
    pytest.param(lambda t: _spec("wfifo", warm_up_data_path=_fifo(t)),
                 "warm_up_data_path: ", id="warmup-fifo"),
    pytest.param(lambda t: _spec("wdir", warm_up_data_path=f"file://{t}"),
                 "warm_up_data_path: ", id="warmup-directory-file-url"),
    pytest.param(lambda t: _spec("wmissing", warm_up_data_path=str(t / "missing.jsonl")),
                 "warm_up_data_path: ", id="warmup-missing"),
]  # fmt: skip


def _body(make: Any, tmp: Path) -> bytes:
    return make if isinstance(make, bytes) else json.dumps(make(tmp)).encode()


@pytest.mark.parametrize(("make", "first_error"), BAD_SPECS)
def test_bad_spec_is_400_on_create_and_update(api: Api, tmp_path: Path, make: Any, first_error: str) -> None:
    body = _body(make, tmp_path)
    headers = {"Content-Type": "application/json"}
    r = api.call("POST", "/api/v1/services", data=body, headers=headers)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_spec"
    assert err["errors"][0].startswith(first_error), err
    if first_error.startswith("warm_up_data_path: ") and "dev/zero" not in first_error:
        assert "regular file" in err["errors"][0] or "no such file" in err["errors"][0], err

    # the same body as an update of an existing service
    r = api.call("PUT", "/api/v1/services/existing", data=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["errors"][0].startswith(first_error)


def test_nothing_was_stored_and_ls_shows_each_name_once(api: Api) -> None:
    names = [s["name"] for s in api.call("GET", "/api/v1/services").json()["services"]]
    assert len(names) == len(set(names))
    assert all(n.isidentifier() and n == n.strip() for n in names)
    assert not {"a", "envnul", "enveq", "envbig", "wzero", "wfifo", "wdir", "wmissing"} & set(names)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/api/v1/services/existing/scale", '{"replicas": ' + _deep(100_000) + "}", id="scale"),
        pytest.param(
            "/api/v1/services/existing/rollback", '{"version": ' + _deep(100_000) + "}", id="rollback"
        ),
    ],
)
def test_deep_json_in_other_bodies_is_400_not_500(api: Api, path: str, body: str) -> None:
    r = api.call("POST", path, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_request"


def test_body_over_16MiB_is_refused_before_parsing(api: Api) -> None:
    body = b'{"x": "' + b"a" * (16 * 1024 * 1024) + b'"}'
    r = api.call("POST", "/api/v1/services", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["errors"] == ["spec: request body larger than 16777216 bytes (16 MiB)"]


@pytest.mark.parametrize(
    "warmup",
    [
        pytest.param("oss://bucket/warm.jsonl", id="object-storage-checked-at-start"),
        pytest.param("REGULAR", id="local-regular-file"),
    ],
)
def test_good_warmup_paths_are_accepted(api: Api, tmp_path: Path, warmup: str) -> None:
    if warmup == "REGULAR":
        path = tmp_path / "warm.jsonl"
        path.write_text('{"path": "/"}\n')
        warmup = str(path)
    name = "wok_" + str(abs(hash(warmup)) % 10_000)
    r = api.call("POST", "/api/v1/services", json=_spec(name, warm_up_data_path=warmup))
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["warm_up_data_path"] == warmup


# -- the OpenAPI document -------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_openapi_documents_400_and_the_spec_body(api: Api) -> None:
    doc = requests.get(api.url + "/openapi.json", timeout=TIMEOUT_S).json()
    schemas = doc["components"]["schemas"]
    assert "422" not in json.dumps(doc["paths"])
    assert "HTTPValidationError" not in schemas
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if op.get("parameters") or op.get("requestBody"):
                assert "400" in codes, (method, path)
            if path.startswith("/api/"):
                assert "401" in codes, (method, path)
            if "{name}" in path:
                assert "404" in codes, (method, path)
    for method, path in (("post", "/api/v1/services"), ("put", "/api/v1/services/{name}")):
        body = doc["paths"][path][method]["requestBody"]
        assert body["required"] is True
        assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ServiceSpec"}
    spec = schemas["ServiceSpec"]
    assert set(spec["required"]) == {"metadata", "containers"}
    assert schemas["Metadata"]["properties"]["name"]["pattern"] == "^[a-z][a-z0-9_]{0,62}$"
    assert schemas["EnvVar"]["properties"]["name"]["pattern"] == "^[A-Za-z_][A-Za-z0-9_]*$"
    assert {"required": ["command"]}.items() <= schemas["Container"]["anyOf"][0].items()
    # JSON Schema keywords only (pydantic writes `gt`/`ge` on `int | float` unions)
    assert not {'"gt":', '"ge":', '"lt":', '"le":'} & {
        w for w in json.dumps(schemas).split() if w.endswith(":")
    }
    # every reference resolves inside the document
    for ref in set(_refs(doc)):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


def test_405_lists_every_method_of_the_path(api: Api) -> None:
    r = api.call("PATCH", "/api/v1/services/existing")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert r.headers["Allow"] == "DELETE, GET, PUT"


# -- who may read /metrics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("public", "token", "status"),
    [
        pytest.param(False, None, 401, id="default-no-token"),
        pytest.param(False, "wrong-token", 401, id="default-wrong-token"),
        pytest.param(False, "admin", 200, id="default-admin-token"),
        pytest.param(True, None, 200, id="public-no-token"),
        pytest.param(True, "admin", 200, id="public-admin-token"),
    ],
)
def test_metrics_need_the_admin_token_unless_public(
    tmp_path: Path, public: bool, token: str | None, status: int
) -> None:
    with Api(tmp_path / "data", public_metrics=public) as a:
        assert a.call("POST", "/api/v1/services", json=_spec("secret_name")).status_code == 201
        r = a.call("GET", "/metrics", token=token)
        assert r.status_code == status, r.text
        assert ("secret_name" in r.text) is (status == 200)


def test_server_has_a_public_metrics_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "server", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and "--public-metrics" in out.stdout


# -- the admin token's header, as clients send it ------------------------------------------------

MISSING = "missing admin token: send 'Authorization: Bearer <admin_token>'"


@pytest.mark.parametrize(
    ("header", "status", "message"),
    [
        pytest.param(None, 401, MISSING, id="no-header"),
        pytest.param("", 401, MISSING, id="empty"),
        # HTTP clients trim `Bearer `'s trailing space, servers strip it: the scheme alone is a
        # missing token, not a wrong one.
        pytest.param("Bearer", 401, MISSING, id="bearer-alone"),
        pytest.param("Bearer ", 401, MISSING, id="bearer-space"),
        pytest.param("bearer    ", 401, MISSING, id="bearer-lowercase-spaces"),
        pytest.param("Bearer wrong", 401, "wrong admin token", id="bearer-wrong"),
        pytest.param("wrong", 401, "wrong admin token", id="bare-wrong"),
        pytest.param("Bearer {service_token}", 401, "wrong admin token", id="a-service-token"),
        pytest.param("Bearer {token}", 200, None, id="bearer-token"),
        pytest.param("bearer   {token}  ", 200, None, id="bearer-token-spaces"),
        pytest.param("{token}", 200, None, id="bare-token"),
    ],
)
def test_admin_header_forms(api: Api, header: str | None, status: int, message: str | None) -> None:
    conn = http.client.HTTPConnection(api.url.removeprefix("http://"), timeout=TIMEOUT_S)
    service_token = api.cp.store.token("existing")  # a client's token is not the operator's
    headers = {} if header is None else {"Authorization": header.format(token=api.token, service_token=service_token)}
    conn.request("GET", "/api/v1/services", headers=headers)
    r = conn.getresponse()
    body = json.loads(r.read())
    conn.close()
    assert r.status == status, body
    if message is not None:
        assert body["error"]["message"] == message

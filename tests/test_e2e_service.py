"""End to end: real server, real replica processes, real HTTP through the gateway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from openeas.sdk import ApiError
from tests import behaviour
from tests.harness import (
    Server,
    kill9_replica_under_load,
    new_server,
    reachable_tmp,
    replica_processes,
    service_spec,
    stop_and_reap,
    wait_for,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module: each test below deploys services of its own names and reads only
    their state, so none needs a server of its own (a start and stop cost ~4 CPU-seconds, 5-10 s
    on a loaded CI worker). Specs may name any folder under the session's temporary root (each
    test's tmp_path). The tests that start servers themselves (a port in use, the admin token's
    environment, a graceful stop) still do."""
    srv = new_server(tmp_path_factory.mktemp("service") / "data")
    srv.host_paths = [tmp_path_factory.getbasetemp()]
    yield srv.start()
    stop_and_reap(srv)


def _ready_replicas(srv: Server, name: str) -> list[dict]:
    return [r for r in srv.client.describe(name)["replicas"] if r["phase"] == "Ready"]


def test_eas_spec_fixed_port_and_mount_two_replicas_both_serve(server: Server, tmp_path: Path):
    bucket = tmp_path / "bucket" / "models"
    bucket.mkdir(parents=True)
    (bucket / "weights.bin").write_bytes(b"\0" * 4096)
    spec = service_spec("mounted", replicas=2)
    # The command only starts if the weights are visible at the mount path, as in EAS.
    spec["containers"][0]["command"] = (
        "test -f /mnt/data/weights.bin && exec python -m openeas.testserver --host 127.0.0.1 --port 8000"
    )
    spec["storage"] = [{"mount_path": "/mnt/data/", "oss": {"path": bucket.as_uri() + "/"}}]
    c = server.client
    detail = behaviour.deploy_eas_json(c, server.gateway_url, spec, timeout_s=60)
    # One download per node: the version's pre-fetch or one replica copied, every other start hit.
    stats = c.request("GET", "/api/v1/cache")["stats"]
    assert stats["misses"] + stats["prefetches"] == 1, stats
    assert sum(r["cold_start"]["fetch"]["bytes"] for r in detail["replicas"]) in (0, 4096)


def test_bad_input_gets_clear_errors(server: Server, tmp_path: Path):
    c = server.client
    # invalid spec: field path and reason
    bad = service_spec("bad")
    bad["containers"][0]["port"] = 70000
    with pytest.raises(ApiError) as err:
        c.deploy(bad)
    assert err.value.status == 400 and "containers[0].port: must be 1..65535" in err.value.errors
    # unknown service: control plane and gateway
    with pytest.raises(ApiError) as err:
        c.describe("nope")
    assert err.value.status == 404 and "service 'nope' not found" in err.value.message
    r = requests.post(f"{server.gateway_url}/api/predict/nope", data=b"{}", timeout=5)
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    # missing / wrong token, oversized body
    spec = service_spec("guarded", token="s3cret-token-1234")
    spec["metadata"]["rpc"] = {"max_body_bytes": 1024 * 1024}
    c.deploy(spec)
    c.wait_ready("guarded", timeout_s=60)
    url = f"{server.gateway_url}/api/predict/guarded/echo"
    r = requests.post(url, data=b"{}", timeout=5)
    assert r.status_code == 401 and "requires a token" in r.json()["error"]["message"]
    r = requests.post(url, data=b"{}", headers={"Authorization": "wrong-token"}, timeout=5)
    assert r.status_code == 401 and "wrong" in r.json()["error"]["message"].lower()
    r = requests.post(
        url, data=b"x" * (2 * 1024 * 1024), headers={"Authorization": "s3cret-token-1234"}, timeout=10
    )
    assert r.status_code == 413 and "1048576" in r.json()["error"]["message"]
    r = requests.post(url, data=b"{}", headers={"Authorization": "Bearer s3cret-token-1234"}, timeout=5)
    assert r.status_code == 200
    # admin API without the admin token
    r = requests.get(f"{server.api_url}/api/v1/services", timeout=5)
    assert r.status_code == 401 and "admin token" in r.json()["error"]["message"]


def test_path_escaping_mount_is_rejected(server: Server, tmp_path: Path):
    bucket = tmp_path / "evil"
    bucket.mkdir()
    (bucket / "passwd").symlink_to("/etc/passwd")
    spec = service_spec("escape", storage=[{"mount_path": "/mnt/data", "oss": {"path": str(bucket)}}])
    server.client.deploy(spec)

    def failed_message() -> str | None:
        for rep in server.client.describe("escape")["replicas"]:
            if rep["phase"] in ("Failed", "Pending") and rep["message"] and "escape" in rep["message"]:
                return rep["message"]
        return None

    message = wait_for(failed_message, 20, what="mount escape failure")
    assert "passwd" in message
    events = server.client.events("escape")
    assert any(e["reason"] == "MountFailed" and e["type"] == "Warning" for e in events)
    server.client.delete("escape")  # the server is the module's: no failing replica retried beside the others


def _admin(srv: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {srv.info['admin_token']}"}  # /metrics names services: admin only


def control_metrics(srv: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The control plane's /metrics as {(name, labels): value}."""
    out = {}
    for line in requests.get(f"{srv.api_url}/metrics", headers=_admin(srv), timeout=5).text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = frozenset(
            (k, v.strip('"')) for k, _, v in (pair.partition("=") for pair in rest.rstrip("}").split(",") if pair)
        )
        out[(name, labels)] = float(value)
    return out


def gauges(srv: Server, service: str) -> dict[str, float]:
    """openeas_replicas by phase (non-zero ones), openeas_desired_replicas and
    openeas_replica_restarts of one service."""
    out = {}
    for (name, labels), value in control_metrics(srv).items():
        lab = dict(labels)
        if lab.get("service") != service:
            continue
        if name == "openeas_replicas" and value:
            out[lab["phase"]] = value
        elif name in ("openeas_desired_replicas", "openeas_replica_restarts"):
            out[name.removeprefix("openeas_")] = value
    return out


def test_kill9_replica_under_load_loses_nothing_and_the_gauges_follow(server: Server):
    c = server.client
    c.deploy(service_spec("steady", replicas=2))
    c.wait_ready("steady", 2, timeout_s=60)
    assert gauges(server, "steady") == {"Ready": 2, "desired_replicas": 2, "replica_restarts": 0}
    kill9_replica_under_load(server, "steady")  # 0 failed requests, restart_count 1
    assert gauges(server, "steady") == {"Ready": 2, "desired_replicas": 2, "replica_restarts": 1}
    c.scale("steady", 3)
    assert gauges(server, "steady")["desired_replicas"] == 3  # desired state, at once
    c.wait_ready("steady", 3, timeout_s=60)
    assert gauges(server, "steady") == {"Ready": 3, "desired_replicas": 3, "replica_restarts": 1}


def test_scale_stop_start_rollback(server: Server):
    c = server.client
    c.deploy(service_spec("ops"))
    c.wait_ready("ops", 1, timeout_s=60)
    behaviour.scale_and_serve(c, server.gateway_url, "ops", 2, timeout_s=60)
    c.stop("ops")
    wait_for(
        lambda: c.describe("ops")["total_replicas"] == 0 and not c.describe("ops")["replicas"],
        30,
        what="replicas stopped",
    )
    t0 = time.monotonic()
    r = requests.post(
        f"{server.gateway_url}/api/predict/ops/echo",
        data=b"{}",
        headers={"Authorization": c.call_info("ops")["token"]},
        timeout=10,
    )
    took = time.monotonic() - t0
    assert r.status_code == 503 and r.json()["error"]["code"] == "service_stopped"
    # A stopped service answers at once: no replica is coming, nothing is held (a held request
    # would wait the 120 s default hold timeout); 5 s leaves a loaded machine its noise.
    assert took < 5.0, took
    c.start("ops")
    c.wait_ready("ops", 2, timeout_s=60)
    behaviour.rolling_update_under_load(c, server.gateway_url, "ops", 2, timeout_s=60)
    c.rollback("ops", 1)
    detail = c.wait_ready("ops", 2, timeout_s=60)
    assert detail["version"] == 3 and {r["version"] for r in detail["replicas"]} == {3}
    models = c.predict("ops", method="GET", path="/v1/models").json()
    assert models["data"][0]["id"] == "test-model"


def test_warmup_runs_before_ready_and_cli_reports(server: Server, tmp_path: Path):
    warm = tmp_path / "warmup.jsonl"
    warm.write_text('{"path": "/v1/completions", "body": {"prompt": "warm", "max_tokens": 1}, "count": 3}\n')
    # The test server's /ready answers 503 until it has served 3 inference requests.
    spec = service_spec("warm", args="--warmup-required 3", warm_up_data_path=str(warm))
    server.client.deploy(spec)
    detail = server.client.wait_ready("warm", 1, timeout_s=60)
    rep = detail["replicas"][0]
    assert requests.get(f"http://127.0.0.1:{rep['port']}/ready", timeout=5).status_code == 200
    assert rep["cold_start"]["warm_s"] is not None
    assert any(e["reason"] == "Warmed" and "3 requests, 0 failed" in e["message"] for e in server.client.events("warm"))

    # The CLI finds the server through OPENEAS_DATA_DIR and keeps the call-info contract.
    out = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "call-info", "warm", "--json"],
        env=server.env(), capture_output=True, text=True, check=True,
    ).stdout
    info = json.loads(out)
    assert set(info) == {"endpoint", "token"}
    assert info["endpoint"] == f"{server.gateway_url}/api/predict/warm"
    described = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "describe", "warm"], env=server.env(), capture_output=True, text=True
    )
    assert described.returncode == 0 and "Ready" in described.stdout

    # Each replica's output is captured in its own log.
    logs = server.client.logs("warm")
    assert len(logs) == 1 and logs[0]["replica"] == rep["id"]
    assert f"listening on http://127.0.0.1:{rep['port']}" in logs[0]["text"]

    # Control-plane metrics: replicas by phase and the cold start just observed.
    metrics = requests.get(f"{server.api_url}/metrics", headers=_admin(server), timeout=5).text
    assert 'openeas_replicas{phase="Ready",service="warm"} 1.0' in metrics
    assert 'openeas_replica_cold_start_seconds_count{phase="warm",service="warm"} 1.0' in metrics
    # Gateway metrics after one call.
    server.client.predict("warm", {"prompt": "x", "max_tokens": 1}, path="/v1/completions")
    gw = requests.get(f"{server.gateway_url}/metrics", timeout=5).text
    assert 'openeas_gateway_requests_total{service="warm",code="200"}' in gw


def test_api_port_in_use_is_a_clear_error_and_nothing_starts(tmp_path: Path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        srv = new_server(tmp_path / "data")
        srv.port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=r"API port 127\.0\.0\.1:\d+ is not available"):
            srv.start(timeout_s=30, port_retries=0)  # taken on purpose: no second try elsewhere
        assert not (srv.data_dir / "server.json").exists()


def test_replicas_never_see_the_admin_token():
    """The server's real token: not in the replica's environment, nor in any file its user can read
    (a grep run as that user over the data dir, its folder and its cache)."""
    with reachable_tmp() as tmp:
        _replicas_never_see_the_admin_token(tmp)


def _replicas_never_see_the_admin_token(tmp: Path) -> None:
    srv = new_server(tmp / "data")
    srv.extra_env = {"OPENEAS_ADMIN_TOKEN": "admin-secret-must-not-leak"}  # the CLI's env too
    srv.start()
    try:
        c = srv.client
        token = srv.info["admin_token"]
        c.deploy(service_spec("private"))
        detail = c.wait_ready("private", 1, timeout_s=60)
        rep = detail["replicas"][0]
        environ = Path(f"/proc/{rep['pid']}/environ").read_bytes()
        for secret in (token, "admin-secret-must-not-leak", f"OPENEAS_DATA_DIR={srv.data_dir}"):
            assert secret.encode() not in environ, secret
        assert f"OPENEAS_REPLICA_ID={rep['id']}".encode() in environ
        if os.geteuid() == 0:  # replicas run as a uid of their own: search as that uid
            assert detail["runtime"]["warnings"] == []
            st = Path(f"/proc/{rep['pid']}").stat()
            assert st.st_uid != 0
            grep = subprocess.run(
                ["grep", "-rlsF", "--", token, str(srv.data_dir)],
                user=st.st_uid, group=st.st_gid, extra_groups=[], capture_output=True, text=True,
            )  # fmt: skip
            # 1: no match; 2: no match, and some files were denied to it (as they should be)
            assert grep.returncode in (1, 2) and grep.stdout == "", grep.stdout
            as_root = subprocess.run(["grep", "-rlsF", "--", token, str(srv.data_dir)], capture_output=True, text=True)
            assert str(srv.data_dir / "server.json") in as_root.stdout  # the search would have found it
        # bad query parameters get a precise 400
        r = requests.get(
            f"{srv.api_url}/api/v1/services/private/logs?tail=0",
            headers={"Authorization": f"Bearer {srv.info['admin_token']}"},
            timeout=5,
        )
        assert r.status_code == 400 and "query.tail: input should be greater than or equal to 1" in r.text
        c.delete("private")
        c.wait_deleted("private", timeout_s=30)
    finally:
        srv.stop()


def test_graceful_stop_stops_replicas_unless_kept(tmp_path: Path):
    srv = new_server(tmp_path / "data")
    srv.start()
    try:
        srv.client.deploy(service_spec("keep"))
        first = srv.client.wait_ready("keep", 1, timeout_s=60)["replicas"][0]["pid"]
        # Ctrl-C: a graceful stop (exit 0); replicas stop with the server, desired state stays.
        assert srv.stop(signal.SIGINT) == 0
        assert wait_for(lambda: not replica_processes(srv.data_dir), 15, what="replicas stopped")
        srv.extra_args = ["--keep-replicas"]
        srv.start()
        second = srv.client.wait_ready("keep", 1, timeout_s=60)["replicas"][0]["pid"]
        assert second != first  # started again from the stored desired state
        assert srv.stop() == 0  # SIGTERM, --keep-replicas: they outlive the server ...
        assert replica_processes(srv.data_dir)
        srv.extra_args = []
        srv.start()
        detail = srv.client.wait_ready("keep", 1, timeout_s=60)
        assert detail["replicas"][0]["pid"] == second  # ... and the next start adopts them
        srv.client.delete("keep")
        srv.client.wait_deleted("keep", timeout_s=30)
    finally:
        srv.stop()

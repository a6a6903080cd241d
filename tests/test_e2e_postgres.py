"""End to end on a store in PostgreSQL: a real server (``--store postgresql://…``) deploys a
test-server service, requests answer through its gateway and through a second gateway that reads
the same database from another data dir (as on another machine: it holds only secret.key), and a
scale changes routing on both. The second gateway polls once a minute and gets no datagram from
the server: it follows through PostgreSQL's LISTEN/NOTIFY alone. It registers in the store's
gateway registry, acknowledges routing versions there, and sends its counters signed over UDP:
the two gateways are one fleet (weight changes in effect on both when the API returns, their
load summed by the autoscaler)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from openeas.runtime import free_port
from tests.autoscale_load import TOKEN_SUFFIX, OpenLoop, autoscaled_spec
from tests.harness import Server, new_server, service_spec, stop_and_reap, wait_for
from tests.pg_fixtures import drop_database, new_database

# The second gateway's safety-net poll, seconds: longer than the test waits for a change, so what
# it sees came by notification.
SLOW_POLL_S = 120
FOLLOW_TIMEOUT_S = 15


def routed(gateway_url: str) -> set[str]:
    """The replicas a gateway routes to now (its /metrics)."""
    text = requests.get(f"{gateway_url}/metrics", timeout=5).text
    prefix = "openeas_gateway_replica_routed{"
    return {
        line.split('"')[1] for line in text.splitlines() if line.startswith(prefix) and line.endswith(" 1")
    }


def ready_ids(srv: Server, name: str) -> set[str]:
    return {r["id"] for r in srv.client.describe(name)["replicas"] if r["phase"] == "Ready"}


# One server and one second gateway for the module (their services have names of their own):
# a server start saved per test.
@pytest.fixture(scope="module")
def module_pg_url(pg_server: str) -> Iterator[str]:
    url = new_database(pg_server)
    yield url
    drop_database(url)


@pytest.fixture(scope="module")
def pg_server_proc(tmp_path_factory: pytest.TempPathFactory, module_pg_url: str) -> Iterator[Server]:
    srv = new_server(tmp_path_factory.mktemp("pg") / "data")
    srv.extra_args = ["--store", module_pg_url]
    srv.start()
    yield srv
    stop_and_reap(srv)


@pytest.fixture(scope="module")
def second_gateway(
    tmp_path_factory: pytest.TempPathFactory, module_pg_url: str, pg_server_proc: Server
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("gw2")
    shutil.copy(pg_server_proc.data_dir / "secret.key", folder / "secret.key")
    port = free_port()
    ready = folder / "ready"
    argv = [sys.executable, "-m", "openeas.gateway", "--port", str(port), "--data-dir", str(folder),
            "--store", module_pg_url, "--poll-interval", str(SLOW_POLL_S), "--ready-file", str(ready)]  # fmt: skip
    with open(folder / "gateway.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, what="the second gateway")
        assert proc.poll() is None, (folder / "gateway.log").read_text()[-2000:]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


def test_server_on_postgresql_routes_and_every_gateway_follows_a_scale(
    pg_server_proc: Server, second_gateway: str
) -> None:
    srv = pg_server_proc
    c = srv.client
    c.deploy(service_spec("pgsvc"))
    c.wait_ready("pgsvc", 1, timeout_s=60)
    body = {"model": "m", "prompt": "hi", "max_tokens": 2}
    assert c.predict("pgsvc", body, path="/v1/completions").json()["object"] == "text_completion"
    info = c.call_info("pgsvc")
    endpoint = info["endpoint"].rstrip("/").replace(srv.gateway_url.rstrip("/"), second_gateway)
    auth = {"Authorization": f"Bearer {info['token']}"}

    def second_answers() -> bool:
        resp = requests.post(f"{endpoint}/v1/completions", json=body, headers=auth, timeout=10)
        return resp.status_code == 200 and resp.json()["object"] == "text_completion"

    wait_for(second_answers, FOLLOW_TIMEOUT_S, what="an answer through the second gateway")
    for count in (2, 1):
        c.scale("pgsvc", count)
        c.wait_ready("pgsvc", count, timeout_s=60)
        want = wait_for(
            lambda n=count: len(ids := ready_ids(srv, "pgsvc")) == n and ids, 30, what="ready ids"
        )
        for url in (srv.gateway_url.rstrip("/"), second_gateway):
            wait_for(
                lambda u=url, w=want: routed(u) == w, FOLLOW_TIMEOUT_S, what=f"{url} to route {sorted(want)}"
            )
    assert second_answers()


def applied_version(gateway_url: str) -> int:
    """The routing version a gateway applied (its /metrics)."""
    text = requests.get(f"{gateway_url}/metrics", timeout=5).text
    line = next(ln for ln in text.splitlines() if ln.startswith("openeas_gateway_routing_version "))
    return int(line.split()[1])


# The qps policy: a target of 5 requests/s per replica, and 6 requests/s through each gateway.
# One gateway's load alone asks for ceil(6 / 5) = 2 replicas; only the sum, 12/s, asks for
# ceil(12 / 5) = 3.
QPS_TARGET = 5
PER_GATEWAY_QPS = 6.0
WEIGHT_CHANGES = 20


@pytest.mark.slow
def test_two_gateways_that_share_no_data_dir_are_one_fleet(
    pg_server_proc: Server, second_gateway: str
) -> None:
    srv, c = pg_server_proc, pg_server_proc.client
    gateways = [srv.gateway_url.rstrip("/"), second_gateway]
    view = wait_for(lambda: (v := c.gateways())["live"] == 2 and v, 15, what="both gateways registered")
    assert sorted(g["url"] for g in view["gateways"]) == sorted(gateways), view
    assert all(g["live"] and g["heartbeat_age_s"] <= 3 and g["pid"] > 0 for g in view["gateways"]), view
    policy = {"metric": "qps", "target": QPS_TARGET, "min_replicas": 1, "max_replicas": 3,
              "metric_window": "6s", "scale_down_stabilization_window": "600s"}  # fmt: skip
    c.deploy(autoscaled_spec("fleet_a", policy))
    c.deploy(service_spec("fleet_b"))
    c.wait_ready("fleet_a", 1, timeout_s=60)
    c.wait_ready("fleet_b", 1, timeout_s=60)
    c.group_create(
        {"name": "fleet_g", "routes": [{"service": "fleet_a", "weight": 500}, {"service": "fleet_b"}]}
    )
    # Every weight change is in effect on both gateways when the API call returns.
    for i in range(WEIGHT_CHANGES):
        w = 50 * (i + 1)
        routing = c.group_weights("fleet_g", {"fleet_a": w, "fleet_b": 1000 - w})["routing"]
        assert routing["acknowledged"] and routing["not_applied"] == [], routing
        assert routing["gateways"] == {"live": 2, "applied": 2}, routing
        assert [applied_version(u) >= routing["version"] for u in gateways] == [True, True], (i, routing)
    # Load through both gateways, summed by the autoscaler: 3 replicas, which neither alone asks for.
    token = "fleet_a" + TOKEN_SUFFIX
    loads = [
        OpenLoop(f"{u}/api/predict/fleet_a", token, rate=PER_GATEWAY_QPS, duration_s=14).start()
        for u in gateways
    ]
    try:
        wait_for(
            lambda: c.describe("fleet_a")["desired_replicas"] == 3,
            30,
            what="qps of both gateways: 3 replicas",
        )
    finally:
        for load in loads:
            load.join()
    assert all(load.statuses and all(s == 200 for s in load.statuses) for load in loads)
    metrics = requests.get(
        f"{srv.api_url}/metrics", headers={"Authorization": f"Bearer {srv.info['admin_token']}"}, timeout=5
    )
    assert "openeas_gateways_live 2.0" in metrics.text, metrics.text[-2000:]


@pytest.mark.parametrize(
    "url",
    [pytest.param("mysql://u@127.0.0.1/db", id="another-database"), pytest.param("/tmp/x.db", id="a-path")],
)
def test_a_store_url_that_is_not_postgresql_is_invalid_input(tmp_path: Path, url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "server", "--data-dir", str(tmp_path), "--store", url],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert (
        "--store" in out.stderr and "postgresql://" in out.stderr and not (tmp_path / "server.json").exists()
    )


@pytest.mark.parametrize(
    "given,engine,libpq",
    [
        pytest.param(
            "postgresql://u@h:5/db", "postgresql+psycopg://u@h:5/db", "postgresql://u@h:5/db", id="postgresql"
        ),
        pytest.param(
            "postgres://u@h/db", "postgresql+psycopg://u@h/db", "postgresql://u@h/db", id="postgres-alias"
        ),
        pytest.param(
            "postgresql+psycopg://u@h/db",
            "postgresql+psycopg://u@h/db",
            "postgresql://u@h/db",
            id="sqlalchemy-form",
        ),
    ],
)
def test_store_urls_map_to_the_driver_and_to_libpq(given: str, engine: str, libpq: str) -> None:
    from openeas.gateway.routing.pg_source import libpq_url
    from openeas.store.db import engine_url, is_postgres

    assert is_postgres(given) and engine_url(given) == engine and libpq_url(given) == libpq

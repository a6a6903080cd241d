"""End to end on a store in PostgreSQL: a real server (``--store postgresql://…``) deploys a
test-server service, requests answer through its gateway and through a second gateway that reads
the same database from another data dir (as on another machine: it holds only secret.key), and a
scale changes routing on both. The second gateway polls once a minute and gets no datagram from
the server: it follows through PostgreSQL's LISTEN/NOTIFY alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from openeas.runtime import free_port
from tests.harness import Server, new_server, service_spec, stop_and_reap, wait_for

# The second gateway's safety-net poll, seconds: longer than the test waits for a change, so what
# it sees came by notification.
SLOW_POLL_S = 120
FOLLOW_TIMEOUT_S = 15


def routed(gateway_url: str) -> set[str]:
    """The replicas a gateway routes to now (its /metrics)."""
    text = requests.get(f"{gateway_url}/metrics", timeout=5).text
    prefix = "openeas_gateway_replica_routed{"
    return {line.split('"')[1] for line in text.splitlines() if line.startswith(prefix) and line.endswith(" 1")}


def ready_ids(srv: Server, name: str) -> set[str]:
    return {r["id"] for r in srv.client.describe(name)["replicas"] if r["phase"] == "Ready"}


@pytest.fixture
def pg_server_proc(tmp_path: Path, pg_url: str) -> Iterator[Server]:
    srv = new_server(tmp_path / "data")
    srv.extra_args = ["--store", pg_url]
    srv.start()
    yield srv
    stop_and_reap(srv)


@pytest.fixture
def second_gateway(tmp_path: Path, pg_url: str, pg_server_proc: Server) -> Iterator[str]:
    folder = tmp_path / "gw2"
    folder.mkdir()
    shutil.copy(pg_server_proc.data_dir / "secret.key", folder / "secret.key")
    port = free_port()
    ready = folder / "ready"
    argv = [sys.executable, "-m", "openeas.gateway", "--port", str(port), "--data-dir", str(folder),
            "--store", pg_url, "--poll-interval", str(SLOW_POLL_S), "--no-stats", "--ready-file", str(ready)]  # fmt: skip
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
        want = wait_for(lambda n=count: len(ids := ready_ids(srv, "pgsvc")) == n and ids, 30, what="ready ids")
        for url in (srv.gateway_url.rstrip("/"), second_gateway):
            wait_for(lambda u=url, w=want: routed(u) == w, FOLLOW_TIMEOUT_S, what=f"{url} to route {sorted(want)}")
    assert second_answers()


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
    assert "--store" in out.stderr and "postgresql://" in out.stderr and not (tmp_path / "server.json").exists()


@pytest.mark.parametrize(
    "given,engine,libpq",
    [
        pytest.param("postgresql://u@h:5/db", "postgresql+psycopg://u@h:5/db", "postgresql://u@h:5/db", id="postgresql"),
        pytest.param("postgres://u@h/db", "postgresql+psycopg://u@h/db", "postgresql://u@h/db", id="postgres-alias"),
        pytest.param("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db", "postgresql://u@h/db", id="sqlalchemy-form"),
    ],
)
def test_store_urls_map_to_the_driver_and_to_libpq(given: str, engine: str, libpq: str) -> None:
    from openeas.gateway.routing.pg_source import libpq_url
    from openeas.store.db import engine_url, is_postgres

    assert is_postgres(given) and engine_url(given) == engine and libpq_url(given) == libpq

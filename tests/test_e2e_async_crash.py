"""End to end, on each queue backend: no accepted async request is lost or answered twice.

- 1,000 requests to a service at 0 replicas: the backlog starts a replica, every request gets
  exactly one result;
- kill -9 of the server and its gateway with requests queued and in flight, then a restart:
  every accepted request id has exactly one result (the test compares the ids);
- kill -9 of a replica mid-request: the request is redelivered and answered;
- a replica that always fails: its requests are dead after max_delivery attempts with the
  error, and a re-drive after the replica is fixed answers them.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from openeas.sdk.client import Client
from tests import behaviour
from tests.behaviour import QueueApi, async_spec
from tests.harness import (
    Server,
    kill_gateway,
    new_server,
    replica_in_flight,
    replica_processes,
    stop_and_reap,
    wait_for,
)
from tests.queue_fixtures import BACKENDS, backend_url, redis_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=BACKENDS)
def qserver(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per queue backend for the module: each test deploys a service of its own name
    (a start and stop cost ~4 CPU-seconds, 5-10 s on a loaded CI worker; tests/conftest.py hands
    the two backends to two workers). The replica kill test runs first, while its replica is the
    only one; the kill -9 of the server and gateway runs last (it restarts them; teardown stops them)."""
    tmp = tmp_path_factory.mktemp(f"qserver-{request.param}")
    srv = new_server(tmp / "data")
    if request.param != "sqlite":
        srv.extra_env["OPENEAS_QUEUE_URL"] = backend_url(request.param, tmp, request)
    srv.start()
    yield srv
    stop_and_reap(srv)


def Api(srv: Server, service: str) -> QueueApi:
    return QueueApi(srv.gateway_url, srv.client.call_info(service)["token"], service)


def gateway_metric(srv: Server, name: str, service: str) -> float | None:
    text = requests.get(f"{srv.gateway_url}/metrics", timeout=5).text
    m = re.search(rf'^{name}{{service="{service}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def test_kill_9_of_a_replica_mid_request_redelivers_it(qserver: Server) -> None:
    c = qserver.client
    c.deploy(async_spec("victim", args="--latency-ms 3000"))
    c.wait_ready("victim", 1, timeout_s=60)
    api = Api(qserver, "victim")
    rid = api.put()
    wait_for(lambda: api.get(requestId=rid)["status"] == "in_flight", 10, what="in flight")
    (rep,) = c.describe("victim")["replicas"]
    # The replica has it (its own count, read at its port), and holds it for 3 s.
    wait_for(lambda: replica_in_flight(rep["port"]) == 1, 10, what="the replica serving the request")
    (pid,) = replica_processes(qserver.data_dir)
    assert pid == rep["pid"]
    os.kill(pid, signal.SIGKILL)
    r = api.result(rid, "30s")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert api.get(requestId=rid)["attempts"] == 2  # the killed attempt, then the redelivery


def test_a_thousand_requests_at_zero_replicas_are_all_answered_once(qserver: Server) -> None:
    c = qserver.client
    c.deploy(async_spec("zero", replicas=0, queue={"window": 20}))
    api = Api(qserver, "zero")
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: api.put(b'{"n": %d}' % i), range(1000)))
    assert len(set(ids)) == 1000
    ev = wait_for(lambda: next((e for e in c.events("zero") if e["reason"] == "ScaleFromZero"), None), 20,
                  what="ScaleFromZero event")
    assert "queued" in ev["message"]
    wait_for(lambda: api.get(_attrs_="true")["stream.length"] == "0", 120, what="backlog drained")
    results = api.all_results()
    assert sorted(r["requestId"] for r in results) == sorted(ids)  # each id once, none missing
    assert all(r["status"] == 200 for r in results)
    assert gateway_metric(qserver, "openeas_queue_duplicate_answers_total", "zero") == 0
    assert gateway_metric(qserver, "openeas_queue_backlog", "zero") == 0
    assert gateway_metric(qserver, "openeas_queue_enqueued_total", "zero") == 1000


def test_always_failing_replica_dead_letters_then_redrive(qserver: Server) -> None:
    c = qserver.client
    spec = async_spec("flaky", args="--failure-rate 1", queue={"max_delivery": 3})
    c.deploy(spec)
    c.wait_ready("flaky", 1, timeout_s=60)
    api = Api(qserver, "flaky")
    ids = [api.put(b'{"x": 1}') for _ in range(2)]
    dead = wait_for(lambda: (d := api.get(_dead_="true")) and len(d) == 2 and d, 30, what="2 dead letters")
    assert {d["requestId"] for d in dead} == set(ids)
    assert all(d["attempts"] == 3 and "answered 500" in d["lastError"] for d in dead)
    r = api.result(ids[0], "1s")
    assert r.status_code == 502 and r.json()["error"]["code"] == "dead_letter"
    c.update("flaky", async_spec("flaky", queue={"max_delivery": 3}))  # the fixed version
    wait_for(lambda: all(rep["version"] == 2 and rep["phase"] == "Ready" for rep in c.describe("flaky")["replicas"])
             and len(c.describe("flaky")["replicas"]) == 1, 60, what="version 2 ready")
    redrive = requests.post(api.url, params={"_redrive_": "true"}, headers=api.h, timeout=10)
    assert redrive.json() == {"redriven": 2}
    for rid in ids:
        assert api.result(rid, "20s").status_code == 200
    assert api.get(_dead_="true") == []


def test_kill_9_of_server_and_gateway_loses_and_repeats_nothing(qserver: Server) -> None:
    def kill() -> tuple[Client, str]:
        qserver.kill9()
        kill_gateway(qserver.data_dir)  # the data plane too: the dispatcher dies with its calls in flight
        qserver.start()
        return qserver.client, qserver.gateway_url

    results = behaviour.async_kill_loses_nothing(qserver.client, qserver.gateway_url, "crash", kill)
    # Requests in flight when the dispatcher died were redelivered: a second attempt.
    assert any(r["attempts"] >= 2 for r in results)

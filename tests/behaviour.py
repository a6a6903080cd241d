"""The behaviour suite that matters, as functions of a client and the endpoints to load: deploy
from EAS JSON, scale, rolling update, a group's weight change, async with a kill of the server,
and a stress test run by the server. Each runs once embedded (tests/test_e2e_service.py,
test_e2e_groups.py, test_e2e_async_crash.py, test_e2e_stress.py) and once on the local cluster
(tests/test_e2e_cluster.py): the same assertions, only the endpoints and the kill differ."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from openeas.sdk.client import Client
from tests.harness import service_spec, steady_load, wait_for

RID = "X-Eas-Queueservice-Request-Id"
STRESS_QPS = 50  # offered by the bounded stress test, requests/s, for 2 steps of 2 s...
# ...within 5 s: a step starts only while it ends within the duration, and on a loaded machine
# the first step's end and the second's start are half a second apart (4 s left one step)
STRESS_DURATION_S = 5


def _completion(session: requests.Session, gateway_url: str, name: str, token: str) -> requests.Response:
    return session.post(f"{gateway_url}/api/predict/{name}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                        headers={"Authorization": token}, timeout=10)  # fmt: skip


def replica_served(port: int) -> float:
    """Completions one replica served (its /metrics, reached at its own port on 127.0.0.1)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("testserver_requests_total") and "completions" in line)  # fmt: skip


# ---- deploy from EAS JSON, scale, rolling update ---------------------------------------------------


def deploy_eas_json(c: Client, gateway_url: str, spec: dict[str, Any], *, timeout_s: float = 90) -> dict[str, Any]:
    """Deploy an EAS JSON spec of a fixed container port (8000) and ``instance`` replicas: each
    replica on a port of its own, with its cold-start phases; 20 completions through
    ``gateway_url`` all answered, and every replica took some. The Ready service's detail."""
    name, replicas = spec["metadata"]["name"], int(spec["metadata"]["instance"])
    c.deploy(spec)
    detail = c.wait_ready(name, replicas, timeout_s=timeout_s)
    ports = {r["port"] for r in detail["replicas"]}
    assert len(ports) == replicas and 8000 not in ports  # side by side, each on its own port
    for r in detail["replicas"]:
        assert r["cold_start"]["total_s"] is not None and r["cold_start"]["total_s"] > 0
        assert r["phase_times"].keys() >= {"Pending", "Fetching", "Starting", "Warming", "Ready"}
    token = c.call_info(name)["token"]
    with requests.Session() as s:
        for _ in range(20):
            r = _completion(s, gateway_url, name, token)
            assert r.status_code == 200 and r.json()["object"] == "text_completion", r.text
    assert all(replica_served(r["port"]) > 0 for r in detail["replicas"])
    return detail


def scale_and_serve(c: Client, gateway_url: str, name: str, replicas: int, *, timeout_s: float = 90) -> None:
    """Scale (up or down): the desired count at once, then exactly ``replicas``, all Ready, answering
    through the gateway."""
    c.scale(name, replicas)
    assert c.describe(name)["desired_replicas"] == replicas  # desired state, at once

    def scaled() -> bool:
        reps = c.describe(name)["replicas"]
        return len(reps) == replicas and all(r["phase"] == "Ready" for r in reps)

    wait_for(scaled, timeout_s, poll_s=0.3, what=f"{replicas} replicas, every one Ready")
    token = c.call_info(name)["token"]
    with requests.Session() as s:
        for _ in range(2 * replicas):
            assert _completion(s, gateway_url, name, token).status_code == 200


def rolling_update_under_load(
    c: Client, gateway_url: str, name: str, replicas: int, *, timeout_s: float = 90
) -> dict[str, Any]:
    """A rolling update (the test server renamed ``second``) under 4 clients through
    ``gateway_url``: not one request fails, every replica ends on the new version."""
    version = int(c.describe(name)["version"])
    with steady_load(f"{gateway_url}/api/predict/{name}/v1/completions", c.call_info(name)["token"]) as load:
        wait_for(lambda: len(load.results) >= 20, 30, what="load flowing")
        c.update(name, service_spec(name, replicas=replicas, args="--model-name second"))

        def updated() -> dict[str, Any] | None:
            d = c.describe(name)
            reps = d["replicas"]
            done = len(reps) == replicas and all(r["version"] == version + 1 and r["phase"] == "Ready" for r in reps)
            return d if done else None

        detail = wait_for(updated, timeout_s, poll_s=0.3, what="every replica Ready on the new version")
        served = len(load.results)
        wait_for(lambda: len(load.results) >= served + 20, 30, what="load served after the update")
    assert not load.errors and set(load.results) == {200}, (load.errors[:3], set(load.results))
    models = requests.get(f"{gateway_url}/api/predict/{name}/v1/models", timeout=10,
                          headers={"Authorization": c.call_info(name)["token"]}).json()  # fmt: skip
    assert models["data"][0]["id"] == "second"
    print(f"rolling update of {name}: {len(load.results)} requests through {gateway_url}, 0 failed")
    return dict(detail)


# ---- a group's weight change -------------------------------------------------------------------


def member(r: requests.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["data"][0]["id"])


def call(session: requests.Session, info: dict[str, str], headers: dict[str, str] | None = None) -> requests.Response:
    return session.get(
        info["endpoint"] + "/v1/models", headers={"Authorization": info["token"], **(headers or {})}, timeout=10
    )


class GroupLoad:
    """Threads sending group requests until stopped; every answer with its send time."""

    def __init__(self, info: dict[str, str], threads: int = 4) -> None:
        self.info = info
        self.results: list[tuple[float, float, int, str]] = []  # (sent, answered, status, member)
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as s:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = call(s, self.info)
                    row = (sent, time.monotonic(), r.status_code, r.json()["data"][0]["id"] if r.ok else "")
                except Exception as exc:  # a failed request is what the test counts
                    with self._lock:
                        self.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.results.append(row)

    def answered_since(self, t: float) -> int:
        """Answers to requests sent at or after ``t`` (monotonic seconds)."""
        with self._lock:
            return sum(1 for r in self.results if r[0] >= t)

    def __enter__(self) -> GroupLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)


def stale_after(
    results: list[tuple[float, float, int, str]], t_return: float, until: float, new: str
) -> list[str]:
    """The requests sent after the API call returned and answered before ``until`` (the start of
    the next change) that did not go by the new weights (all to ``new``), each as "sent +X ms,
    answered +Y ms, by M" after the return, so a failure tells a race at the return from an old
    replica still serving; the number of such requests is asserted non-zero.

    The end of the span is the *answer*, not the send: a client thread stamps ``sent`` before
    its request leaves, and on a loaded machine the request may reach the gateway only after the
    next change (the rollback) was applied, hundreds of ms later (measured: stamped 408 ms before
    the rollback call, answered 165 ms into it, by the member the rollback restored). Only a
    request answered before the next call began was surely routed by these weights alone."""
    after = [r for r in results if r[0] >= t_return and r[1] < until]
    assert after, "no request was sent after the change and answered before the next one"
    return [
        f"sent +{(r[0] - t_return) * 1000:.1f} ms, answered +{(r[1] - t_return) * 1000:.1f} ms, by {r[3]!r}"
        for r in after
        if r[3] != new
    ]


def group_weight_change_under_load(
    c: Client, group: str, first: str, second: str, *, models: tuple[str, str] | None = None
) -> tuple[float, float]:
    """Group ``group`` of services ``first`` (all the weight) and ``second``, which answer
    /v1/models with ``models`` (default: their own names): a weight change to ``second`` and its
    rollback under 4 clients of the group's endpoint are acknowledged by the gateway before each
    API call returns, not one request sent after a return follows the old weights, none fails.
    The two waits, ms."""
    model_first, model_second = models or (first, second)
    c.group_create({"name": group, "routes": [{"service": first, "weight": 1000}, {"service": second}]})
    info = c.group_call_info(group)
    with GroupLoad(info) as load:
        wait_for(lambda: load.answered_since(0.0) >= 50, 30, poll_s=0.01, what="50 answers before the change")
        answer = c.group_weights(group, {first: 0, second: 1000})
        switched = time.monotonic()
        wait_for(lambda: load.answered_since(switched) >= 50, 30, poll_s=0.01, what="50 answers after the change")
        # Requests not answered by here may go either way (sent before, they may reach the
        # gateway after the rollback: `stale_after`)...
        rolling_back = time.monotonic()
        back = c.group_rollback(group)  # one command back to `first`
        rolled_back = time.monotonic()  # ...and those sent from here on to `first` only
        wait_for(lambda: load.answered_since(rolled_back) >= 50, 30, poll_s=0.01, what="50 answers after the rollback")
    assert not load.errors, load.errors[:3]
    assert {r[2] for r in load.results} == {200}  # 0 failed requests
    # The gateway acknowledged the routing version before each call returned...
    for a in (answer, back):
        assert a["routing"]["acknowledged"] is True, a["routing"]
    # ...so not one request sent after the return follows the old weights (no tolerance).
    stale = stale_after(load.results, switched, rolling_back, model_second)
    assert not stale, f"{len(stale)} stale after the change ({answer['routing']}): {stale[:5]}"
    stale = stale_after(load.results, rolled_back, float("inf"), model_first)
    assert not stale, f"{len(stale)} stale after the rollback ({back['routing']}): {stale[:5]}"
    reasons = [e["reason"] for e in c.group_events(group)]
    assert reasons[-2:] == ["WeightsChanged", "RolledBack"]
    waited = (float(answer["routing"]["waited_ms"]), float(back["routing"]["waited_ms"]))
    print(f"group {group}: acknowledged by the gateway {waited[0]:.1f} ms / {waited[1]:.1f} ms after the commit")
    return waited


# ---- async with a kill of the server ---------------------------------------------------------


def async_spec(name: str, *, args: str = "", replicas: int = 1, queue: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = service_spec(name, replicas=replicas, args=args)
    spec["metadata"]["type"] = "Async"
    if queue is not None:
        spec["queue"] = queue
    return spec


class QueueApi:
    """An async service's queue through one gateway: put, result, attributes, the sink."""

    def __init__(self, gateway_url: str, token: str, service: str) -> None:
        self.url = f"{gateway_url}/api/predict/{service}"
        self.h = {"Authorization": token}

    def put(self, body: bytes = b"{}") -> str:
        r = requests.post(self.url, data=body, headers=self.h, timeout=30)
        assert r.status_code == 200, r.text
        return r.headers[RID]

    def result(self, rid: str, timeout_s: str = "20s") -> requests.Response:
        return requests.get(f"{self.url}/sink", params={"requestId": rid, "_timeout_": timeout_s},
                            headers=self.h, timeout=70)  # fmt: skip

    def get(self, **params: str) -> Any:
        return requests.get(self.url, params=params, headers=self.h, timeout=30).json()

    def all_results(self) -> list[dict[str, Any]]:
        """Every stored result of the service, read back in sink order (_raw_=false pages)."""
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            r = requests.get(f"{self.url}/sink", params={"_watch_": "false", "_index_": "0", "_length_": "100",
                                                         "_raw_": "false"}, headers=self.h, timeout=30)  # fmt: skip
            if r.status_code == 204:
                return out
            page = [x for x in r.json() if x["sinkIndex"] > after]
            if not page:
                return out
            out += page
            after = page[-1]["sinkIndex"]
            # mark the page read so the next read returns the next page
            requests.put(f"{self.url}/sink", params={"_indexes_": ",".join(str(x["index"]) for x in page)},
                         headers=self.h, timeout=30)  # fmt: skip


Kill = Callable[[], tuple[Client, str]]  # kills the control plane; the client and gateway URL after


def async_kill_loses_nothing(
    c: Client, gateway_url: str, name: str, kill: Kill, *, requests_n: int = 120, latency_ms: int = 400
) -> list[dict[str, Any]]:
    """An async service of 2 replicas taking 4 at a time from each gateway, ``latency_ms`` each;
    ``requests_n`` requests accepted, some answered, some in flight, some queued; then ``kill``
    (kill -9 of the server, and whatever else the setup kills): every accepted request id has
    exactly one result, none lost, none twice. The results."""
    c.deploy(async_spec(name, args=f"--latency-ms {latency_ms}", replicas=2, queue={"window": 4}))
    c.wait_ready(name, 2, timeout_s=90)
    api = QueueApi(gateway_url, c.call_info(name)["token"], name)
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: api.put(b'{"n": %d}' % i), range(requests_n)))
    # Some answered, some in flight, some queued: 2 replicas x 4 at a time per gateway.
    wait_for(lambda: int(api.get(_attrs_="true")["stream.results"]) >= 8, 30, what="first results")
    attrs = api.get(_attrs_="true")
    assert int(attrs["stream.inFlight"]) > 0 and int(attrs["stream.queued"]) > 0, attrs
    c, gateway_url = kill()
    api = QueueApi(gateway_url, c.call_info(name)["token"], name)
    wait_for(lambda: api.get(_attrs_="true")["stream.length"] == "0", 120, what="backlog drained")
    results = api.all_results()
    got = [r["requestId"] for r in results]
    assert len(got) == len(set(got)) == len(ids)  # one result per request, none twice
    assert set(got) == set(ids)  # and none lost
    assert any(r["tags"]["status"] == "200" for r in results)
    return results


# ---- a stress test run by the server -----------------------------------------------------------


def stress_in_the_server(api_url: str, admin_token: str, name: str) -> dict[str, Any]:
    """The API runs a bounded stress test of ``name`` in the server (bad input refused first,
    one at a time): 2 steps of 2 s at 50 requests/s within 5 s, every request answered, and its HTML report
    with its 4 charts. The report."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    bad = requests.post(f"{api_url}/api/v1/services/{name}/stress", json={"optional": {"minQPS": -1}},
                        headers=headers, timeout=30)  # fmt: skip
    assert bad.status_code == 400 and "optional.minQPS" in bad.json()["error"]["message"]
    missing = requests.post(f"{api_url}/api/v1/services/nosuch/stress", json={}, headers=headers, timeout=30)
    assert missing.status_code == 404
    task = {"base": {"duration": STRESS_DURATION_S, "qps": STRESS_QPS}, "optional": {"mode": "manual", "adjustInterval": 2}}
    started = requests.post(f"{api_url}/api/v1/services/{name}/stress", json=task, headers=headers, timeout=30)
    assert started.status_code == 202, started.text
    rid = started.json()["id"]
    again = requests.post(f"{api_url}/api/v1/services/{name}/stress", json=task, headers=headers, timeout=30)
    assert again.status_code == 409  # one at a time

    def finished() -> dict[str, Any] | None:
        report: dict[str, Any] = requests.get(f"{api_url}/api/v1/stress/{rid}", headers=headers, timeout=30).json()
        return None if report["status"] == "running" else report

    report = wait_for(finished, 60, poll_s=0.5, what="the stress test finished")
    assert report["status"] == "completed", report
    steps = [(s["offered"], s["errors"], s["throughput"]) for s in report["steps"]]
    assert [s[0] for s in steps] == [STRESS_QPS, STRESS_QPS], (steps, report["end_reason"])
    assert all(s[1] == 0 and s[2] == pytest.approx(STRESS_QPS, rel=0.1) for s in steps), steps
    page = requests.get(f"{api_url}/api/v1/stress/{rid}/html", headers=headers, timeout=30)
    # latency, throughput, replicas and in flight over time
    assert page.status_code == 200 and page.text.count("<svg") == 4 and name in page.text
    return report

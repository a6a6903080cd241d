"""End to end: EAS's async protocol through a real server, its gateway process and test-server
replicas: enqueue, results by request id (raw, JSON and protobuf forms, long-poll), attributes,
server-sent events, bad input, and the official EAS SDK's ``QueueClient`` unchanged."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from eas_prediction import QueueClient
from eas_prediction.queue_client import DataFrameListCodec

from tests.behaviour import RID, async_spec
from tests.harness import Server, new_server, stop_and_reap
from tests.queue_fixtures import BACKENDS, redis_server  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module", params=BACKENDS)
def qsrv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per queue backend for the module: the same protocol suite runs on both."""
    srv = new_server(tmp_path_factory.mktemp(request.param) / "data")
    if request.param == "redis":
        port = request.getfixturevalue("redis_server")
        srv.extra_env["OPENEAS_QUEUE_URL"] = f"redis://127.0.0.1:{port}/0?prefix=e2e{os.getpid()}"
    srv.start()
    yield srv
    stop_and_reap(srv)


@pytest.fixture(scope="module")
def svc(qsrv: Server) -> Iterator[tuple[Server, str, str]]:
    shared_server = qsrv
    c = shared_server.client
    c.deploy(async_spec("aq", args="--latency-ms 300", queue={"source": {"max_payload_size_kb": 64}}))
    c.wait_ready("aq", 1, timeout_s=60)
    token = c.call_info("aq")["token"]
    yield shared_server, f"{shared_server.gateway_url}/api/predict/aq", token


def test_enqueue_then_204_then_the_result_in_three_forms(svc: tuple[Server, str, str]) -> None:
    _, url, token = svc
    h = {"Authorization": token}
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    r = requests.post(f"{url}/v1/chat/completions?user=u7", json=body, headers=h, timeout=10)
    assert r.status_code == 200 and r.text.isdigit()  # the body is the queue index
    rid = r.headers[RID]
    pending = requests.get(f"{url}/sink", params={"requestId": rid}, headers=h, timeout=10)
    assert pending.status_code == 204 and pending.content == b""  # the replica takes 300 ms
    status = requests.get(url, params={"requestId": rid}, headers=h, timeout=10).json()
    assert status["status"] in ("queued", "in_flight")
    raw = requests.get(f"{url}/sink", params={"requestId": rid, "_timeout_": "5s"}, headers=h, timeout=10)
    assert raw.status_code == 200 and raw.headers[RID] == rid
    assert raw.headers["Content-Type"].startswith("application/json")
    assert raw.json()["choices"][0]["message"]["content"] == "tok0 tok1"
    as_json = requests.get(f"{url}/sink", params={"requestId": rid, "_raw_": "false"}, headers=h, timeout=10)
    (item,) = as_json.json()
    assert item["requestId"] == rid and item["status"] == 200 and item["tags"]["user"] == "u7"
    assert json.loads(item["data"]) == raw.json()
    proto = requests.get(
        f"{url}/sink", params={"requestId": rid}, headers={**h, "Accept": "application/vnd.google.protobuf"}, timeout=10
    )
    (frame,) = DataFrameListCodec.decode(proto.content).get_list()
    assert frame.tags["requestId"] == rid and frame.tags["status"] == "200" and json.loads(frame.data) == raw.json()
    assert requests.get(url, params={"requestId": rid}, headers=h, timeout=10).json()["status"] == "done"


def test_priority_requests_overtake_and_attributes_count(qsrv: Server) -> None:
    """A stopped service keeps accepting; started again, its one replica (window 1) takes the
    priority request first, then the others in arrival order."""
    shared_server = qsrv
    c = shared_server.client
    c.deploy(async_spec("aprio", queue={"window": 1}))
    c.wait_ready("aprio", 1, timeout_s=60)
    c.stop("aprio")
    url = f"{shared_server.gateway_url}/api/predict/aprio"
    h = {"Authorization": c.call_info("aprio")["token"]}
    normal = [requests.post(url, data=b"n", headers=h, timeout=10).headers[RID] for _ in range(4)]
    first = requests.post(url, params={"_priority_": "1"}, data=b"p", headers=h, timeout=10).headers[RID]
    attrs = requests.get(url, params={"_attrs_": "true"}, headers=h, timeout=10).json()
    assert attrs["stream.queued"] == "5" and attrs["meta.maxLength"] == "10000"
    assert float(attrs["stream.oldestAgeSeconds"]) > 0
    c.start("aprio")
    done = {}
    for rid in [first, *normal]:
        r = requests.get(f"{url}/sink", params={"requestId": rid, "_timeout_": "30s", "_raw_": "false"},
                         headers=h, timeout=40)
        assert isinstance(r.json(), list), (r.status_code, r.text)
        done[rid] = r.json()[0]["sinkIndex"]  # the order the results were stored in
    assert sorted(done, key=lambda rid: done[rid]) == [first, *normal]


def test_bad_input_gets_precise_errors(svc: tuple[Server, str, str]) -> None:
    _, url, token = svc
    h = {"Authorization": token}
    bad = requests.post(url, data=b'{"a": 1,', headers={**h, "Content-Type": "application/json"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    assert "line 1 column 9" in bad.json()["error"]["message"]
    unknown = requests.get(f"{url}/sink", params={"requestId": "nope"}, headers=h, timeout=10)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request_id"
    big = requests.post(url, data=b"x" * (64 * 1024 + 1), headers=h, timeout=10)  # 64 KiB limit
    assert big.status_code == 413
    prio = requests.post(url, params={"_priority_": "7"}, data=b"{}", headers=h, timeout=10)
    assert prio.status_code == 400 and "_priority_" in prio.json()["error"]["message"]
    timeout = requests.get(f"{url}/sink", params={"requestId": "x", "_timeout_": "soon"}, headers=h, timeout=10)
    assert timeout.status_code == 400 and "_timeout_" in timeout.json()["error"]["message"]
    get = requests.get(url, headers=h, timeout=10)
    assert get.status_code == 400 and "POST" in get.json()["error"]["message"]
    assert requests.post(url, data=b"{}", timeout=10).status_code == 401  # the token is still checked


def test_sse_watch_pushes_a_result(svc: tuple[Server, str, str]) -> None:
    _, url, token = svc
    h = {"Authorization": token}
    rid = requests.post(url, data=b"watched", headers=h, timeout=10).headers[RID]
    with requests.get(f"{url}/sink", params={"_watch_": "true", "requestId": rid}, headers=h, stream=True,
                      timeout=20) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        lines = [line for line in r.iter_lines() if line.startswith(b"data: ")]
    (event,) = lines
    assert json.loads(event[6:])["requestId"] == rid


def test_the_eas_sdk_queue_client_works_unchanged(svc: tuple[Server, str, str]) -> None:
    srv, _, token = svc
    endpoint = srv.gateway_url.removeprefix("http://")
    inq = QueueClient(endpoint, "aq")
    inq.set_token(token)
    inq.init()
    sink = QueueClient(endpoint, "aq/sink")
    sink.set_token(token)
    sink.init()
    index, rid = inq.put(json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
    assert int(index) > 0
    got = []
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        got = sink.get(request_id=rid)  # long-polls 5 s; [] (a 204) while not ready
    (df,) = got
    assert df.tags["requestId"] == rid and df.tags["status"] == "200"
    assert json.loads(df.data) == {"ok": True}  # the test server's answer at /
    # The SDK reads with _auto_delete_=true: the result is gone now, and a second read says so.
    again = requests.get(f"{srv.gateway_url}/api/predict/aq/sink", params={"requestId": rid},
                         headers={"Authorization": token}, timeout=10)
    assert again.status_code == 410 and again.json()["error"]["code"] == "result_deleted"
    attrs = inq.attributes()
    assert "stream.length" in attrs and attrs["consumers.stats.total"] == "1"

    watcher = sink.watch(0, 5, auto_commit=True)
    seen: list[str] = []
    sent: list[str] = []
    all_sent = threading.Event()

    def watch() -> None:
        # The SDK's run() reconnects forever: this loop must end by itself once all were seen.
        for x in watcher.run():
            seen.append(x.tags["requestId"])
            if all_sent.is_set() and set(sent) <= set(seen):
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    sent += [inq.put(b"[{}]")[1] for _ in range(5)]
    all_sent.set()
    inq.put(b"[{}]")  # one more result, so the loop looks again after the flag is set
    t.join(20)
    watcher.close()
    assert not t.is_alive() and set(sent) <= set(seen)


def stopped_async(srv: Server, name: str, queue: dict[str, Any] | None = None) -> str:
    """An async service with no replica (stopped: nothing takes its requests, nothing scales it
    from zero), its route at the gateway; its token."""
    c = srv.client
    c.deploy(async_spec(name, replicas=0, queue=queue))
    c.stop(name)
    token = c.call_info(name)["token"]
    url = f"{srv.gateway_url}/api/predict/{name}"
    deadline = time.monotonic() + 20
    while requests.get(url, params={"_attrs_": "true"}, headers={"Authorization": token}, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, f"{name} never reached the gateway"
        time.sleep(0.1)
    return token


def sdk_queues(srv: Server, service: str, token: str) -> tuple[QueueClient, QueueClient]:
    endpoint = srv.gateway_url.removeprefix("http://")
    out = []
    for name in (service, f"{service}/sink"):
        q = QueueClient(endpoint, name)
        q.set_token(token)
        q.init()
        q.set_timeout(10_000)
        out.append(q)
    return out[0], out[1]


def test_the_sdk_sink_is_a_full_queue_put_get_search_delete_truncate(qsrv: Server) -> None:
    """EAS's sink is a queue of its own: the SDK's put, get by index and by request id (long-poll
    until the index exists), search, delete, commit and truncate, and the attributes it reads."""
    token = stopped_async(qsrv, "asink")
    _, sink = sdk_queues(qsrv, "asink", token)
    puts = [sink.put(f"item{i}", tags={"k": str(i)}) for i in range(5)]
    indexes = [int(i) for i, _ in puts]
    assert indexes == sorted(indexes) and all(rid for _, rid in puts)
    (got,) = sink.get(index=indexes[1], auto_delete=False)
    assert (got.index, got.data, got.tags["k"], got.tags["requestId"]) == (indexes[1], b"item1", "1", puts[1][1])
    (by_id,) = sink.get(request_id=puts[2][1], auto_delete=False)
    assert by_id.data == b"item2" and by_id.index == indexes[2]
    assert sink.search(indexes[3])["requestId"] == puts[3][1]
    attrs = sink.attributes()
    assert (attrs["stream.length"], attrs["stream.lastEntry"]) == ("5", str(indexes[4]))
    assert sink.delete(indexes[0]) == "OK"
    sink.commit([indexes[1]])
    assert sink.attributes()["stream.length"] == "3"
    assert json.loads(sink.truncate(indexes[4])) == {"truncated": 2, "index": indexes[4]}  # 2 and 3 went
    assert [f.data for f in sink.get(index=0, length=10, auto_delete=False)] == [b"item4"]
    # Nothing at the next index yet: get long-polls until a put stores it.
    later = threading.Timer(0.5, lambda: sink.put("late"))
    later.start()
    t0 = time.monotonic()
    (late,) = sink.get(index=indexes[4] + 1, timeout="5s")
    assert late.data == b"late" and 0.4 < time.monotonic() - t0 < 4.5
    assert sink.get(index=late.index, timeout="0s") == []  # read with auto_delete (the SDK's default)
    sink.truncate(int(sink.attributes()["stream.lastEntry"]) + 1)
    assert sink.attributes()["stream.length"] == "0"
    assert sink.search(indexes[0]) == {"index": indexes[0], "requestId": None, "status": "read"}


def test_the_sdk_input_queue_read_by_index_deleted_and_truncated(qsrv: Server) -> None:
    """A stopped service's queue (no replica takes its requests): a worker reads the input queue
    by index or request id, long-polls for the next index, deletes and truncates."""
    token = stopped_async(qsrv, "ainput")
    inq, _ = sdk_queues(qsrv, "ainput", token)
    puts = [inq.put(f"req{i}".encode(), tags={"n": str(i)}) for i in range(4)]
    idx = [int(i) for i, _ in puts]
    (first,) = inq.get(index=idx[0], auto_delete=False)
    assert (first.index, first.data, first.tags["n"], first.tags["requestId"]) == (idx[0], b"req0", "0", puts[0][1])
    assert [f.index for f in inq.get(index=idx[1], length=10, auto_delete=False)] == idx[1:]
    (taken,) = inq.get(request_id=puts[1][1])  # auto_delete: the worker took it
    assert taken.data == b"req1" and inq.get(request_id=puts[1][1], timeout="0s") == []
    assert inq.search(idx[2])["status"] == "queued" and inq.search(idx[2])["requestId"] == puts[2][1]
    assert inq.delete(idx[2]) == "OK"
    assert int(inq.attributes()["stream.queued"]) == 2
    inq.truncate(idx[3])  # removes idx[0]
    assert [f.data for f in inq.get(index=0, length=10, auto_delete=False)] == [b"req3"]
    t = threading.Timer(0.5, lambda: inq.put(b"next"))
    t.start()
    (nxt,) = inq.get(index=idx[3] + 1, timeout="5s")
    assert nxt.data == b"next"
    inq.truncate(int(inq.attributes()["stream.lastEntry"]) + 1)
    assert inq.attributes()["stream.length"] == "0"


def test_sdk_watch_window_index_only_manual_commit_and_truncate(qsrv: Server) -> None:
    """A watch with a window of 2 and manual commit gets two entries, then nothing until one is
    committed; a truncate frees the window too and the truncated entries are never sent."""
    token = stopped_async(qsrv, "awatch")
    _, sink = sdk_queues(qsrv, "awatch", token)
    idx = [int(sink.put(f"w{i}")[0]) for i in range(6)]
    seen: list[tuple[int, bytes]] = []
    watcher = sink.watch(idx[0], 2, index_only=False, auto_commit=False)
    frames = watcher.run()

    def take(n: int) -> None:
        for _ in range(n):
            x = next(frames)
            seen.append((x.index, x.data))

    take(2)
    assert seen == [(idx[0], b"w0"), (idx[1], b"w1")]
    got_third = threading.Event()
    t = threading.Thread(target=lambda: (take(1), got_third.set()), daemon=True)
    t.start()
    assert not got_third.wait(1.0)  # the window is full: nothing more comes
    sink.commit(idx[0])
    assert got_third.wait(5.0) and seen[-1] == (idx[2], b"w2")
    sink.truncate(idx[5])  # deletes w1, w2 (outstanding) and w3, w4 (never sent)
    take(1)
    assert seen[-1] == (idx[5], b"w5")
    watcher.close()
    sink.put("after")
    only = sink.watch(0, 5, index_only=True, auto_commit=True)
    x = next(only.run())
    only.close()
    assert x.data == b"" and x.tags["requestId"]  # index only: no data


def test_a_full_queue_answers_429_with_retry_after(qsrv: Server) -> None:
    url = f"{qsrv.gateway_url}/api/predict/afull"
    h = {"Authorization": stopped_async(qsrv, "afull", {"source": {"max_length": 3}})}
    codes = []
    for _ in range(5):
        codes.append(requests.post(url, data=b"x", headers=h, timeout=10))
        time.sleep(0.3)  # the gateway reads the queue's length back every 0.25 s
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    refused = codes[3]
    assert refused.headers["Retry-After"] == "1" and refused.json()["error"]["code"] == "queue_full"
    assert "queue.source.max_length" in refused.json()["error"]["message"]


def test_an_oversized_async_body_is_refused_while_it_is_read(svc: tuple[Server, str, str]) -> None:
    """A chunked body past max_payload_size_kb (64 KiB here) is refused at the limit: the 413
    comes while the client is still sending, not after the gateway buffered it all."""
    _, url, token = svc

    def chunks() -> Iterator[bytes]:
        for _ in range(4096):  # 4096 * 64 KiB = 256 MiB offered
            yield b"x" * 65536

    t0 = time.monotonic()
    try:
        r = requests.post(url, data=chunks(), headers={"Authorization": token}, timeout=30)
        assert r.status_code == 413
    except requests.ConnectionError:
        pass  # the gateway answered 413 and closed while the client was still writing
    assert time.monotonic() - t0 < 10

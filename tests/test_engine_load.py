"""Engine load for least-waiting / least-kv: read off the replicas' /metrics by the control plane
(autoscaler/engine_load.py), pushed to the gateway in a datagram (gateway/routing/replica_load.py), and
followed by the balancer; never fetched per request."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from openeas.autoscaler.engine_load import INTERVAL_S, SCRAPE_TIMEOUT_S, engine_load
from openeas.gateway.routing.replica_load import STALE_S, LoadListener, Loads, LoadSender, decode, encode
from tests.harness import Server, service_spec, wait_for


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", (-1.0, -1.0), id="nothing"),
        pytest.param(
            'vllm:num_requests_waiting{model_name="m"} 3\nvllm:kv_cache_usage_perc{model_name="m"} 0.25\n',
            (3.0, 0.25),
            id="vllm",
        ),
        pytest.param("vllm:gpu_cache_usage_perc 0.5\n", (-1.0, 0.5), id="older-vllm-kv-only"),
        pytest.param(
            "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 2\n"
            "llamacpp:kv_cache_usage_ratio 0.75\n",
            (2.0, 0.75),
            id="llama-server",
        ),
        pytest.param(
            'vllm:num_requests_waiting{model_name="a"} 1\nvllm:num_requests_waiting{model_name="b"} 4\n',
            (5.0, -1.0),
            id="label-sets-summed",
        ),
        pytest.param("sglang:num_queue_reqs 6\nsglang:token_usage 0.1\n", (6.0, 0.1), id="sglang"),
        pytest.param("vllm:num_requests_waiting nan-ish\n", (-1.0, -1.0), id="unparsable-value"),
    ],
)
def test_engine_load_reads_each_engines_names(text: str, expected: tuple[float, float]) -> None:
    assert engine_load(text) == expected


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        pytest.param({}, {}, id="empty-picture"),
        pytest.param({"r1": (2.0, 0.5)}, {"r1": (2.0, 0.5)}, id="one"),
        pytest.param(
            {"r1": (-1.0, 0.5), "r2": (3.0, -1.0)}, {"r1": (-1.0, 0.5), "r2": (3.0, -1.0)}, id="unknowns"
        ),
        pytest.param({"r1": (float("nan"), float("inf"))}, {"r1": (-1.0, -1.0)}, id="not-finite-is-unknown"),
    ],
)
def test_wire_round_trip(loads: Loads, expected: Loads) -> None:
    assert decode(encode(loads)) == expected


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"v": 2, "r": {}}', id="other-version"),
        pytest.param(b'{"v": 1}', id="no-replicas"),
        pytest.param(b"[]", id="not-an-object"),
    ],
)
def test_foreign_datagrams_are_ignored(data: bytes) -> None:
    assert decode(data) is None


def test_documented_defaults() -> None:
    assert (INTERVAL_S, SCRAPE_TIMEOUT_S, STALE_S) == (0.5, 0.4, 5.0)


async def test_listener_applies_the_latest_datagram(tmp_path: Path) -> None:
    seen: list[Loads] = []
    got = asyncio.Event()

    def apply(loads: Loads) -> None:
        seen.append(loads)
        got.set()

    listener = LoadListener(tmp_path / "run" / "gateway-load.sock", apply)
    listener.start(asyncio.get_running_loop())
    sender = LoadSender(tmp_path / "run" / "gateway-load.sock")
    try:
        sender.send({"r1": (1.0, 0.1)})
        sender.send({"r1": (4.0, 0.2)})
        await asyncio.wait_for(got.wait(), 5)
        assert seen[-1] == {"r1": (4.0, 0.2)}
    finally:
        sender.close()
        listener.close()


def _picks(srv: Server, name: str, n: int) -> Counter[str]:
    c = srv.client
    out: Counter[str] = Counter()
    for _ in range(n):
        r = c.predict(
            name,
            {"prompt": "hi", "max_tokens": 1},
            path="/v1/completions",
            headers={"X-OpenEAS-Explain": "1"},
        )
        out[r.headers["X-OpenEAS-Replica"]] += 1
    return out


def test_least_waiting_follows_the_replicas_own_metric(server: Server, tmp_path: Path) -> None:
    files = tmp_path / "engine"
    files.mkdir()
    spec = service_spec("lw", replicas=2, args=f"--engine-metrics-file {files}/{{port}}.prom")
    spec["metadata"]["balancer"] = "least-waiting"
    c = server.client
    c.deploy(spec)
    replicas = c.wait_ready("lw", 2, timeout_s=60)["replicas"]
    (a, pa), (b, pb) = [(r["id"], r["port"]) for r in replicas]

    def set_waiting(port: int, n: int) -> None:
        (files / f"{port}.prom").write_text(f'vllm:num_requests_waiting{{model_name="m"}} {n}\n')

    for quiet, busy in ((b, a), (a, b)):  # then the other way round: it follows the metric
        set_waiting(pa if busy == a else pb, 7)
        set_waiting(pb if busy == a else pa, 0)

        def settled(quiet: str = quiet) -> bool:
            picks = _picks(server, "lw", 3)
            return all(k.startswith(f"{quiet};") and "least waiting (0)" in k for k in picks)

        wait_for(settled, timeout_s=20, what=f"the gateway to route to {quiet} (0 waiting)")
        picks = _picks(server, "lw", 20)
        assert sum(v for k, v in picks.items() if k.startswith(f"{quiet};")) == 20, picks


def test_test_server_appends_its_engine_metrics_file(tmp_path: Path) -> None:
    import requests

    from openeas.testserver.app import ServerThread
    from openeas.testserver.knobs import Knobs

    assert Knobs().engine_metrics_file == ""  # the documented default: none
    with ServerThread(Knobs(engine_metrics_file=str(tmp_path / "{port}.prom"))) as srv:
        assert "vllm:" not in requests.get(srv.url + "/metrics", timeout=5).text  # no file yet: none
        (tmp_path / f"{srv.port}.prom").write_text("vllm:num_requests_waiting 3")
        text = requests.get(srv.url + "/metrics", timeout=5).text
        assert engine_load(text) == (3.0, -1.0)

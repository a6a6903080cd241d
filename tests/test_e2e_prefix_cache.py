"""Prefix affinity on real llama-server replicas (issue 26's end-to-end test, a generous bound; the
real goal is bench/llm_routing.py's): two quickstart replicas behind a `prefix-affinity` service,
each keeping its last two prompts' KV (`--parallel 2 --cache-ram 0`). Two long system prompts,
each sent three times in turn: every prompt stays on one replica, its repeats take their prefix
from that replica's cache (llama-server's own `timings.cache_n`), and a repeat's latency to its
first token is well under the first send's (the prefill it skips)."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import Server, new_server, stop_and_reap

ROOT = Path(__file__).resolve().parents[1]
PROMPT_WORDS = 400  # ~410 tokens: the prefill dominates a 1-token answer
GAIN_BOUND = 0.6  # a repeat's median latency at most this x a first send's (the bench asks 0.5x)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OPENEAS_SKIP_LLAMA") == "1", reason="OPENEAS_SKIP_LLAMA=1"),
]


def system_prompt(i: int) -> str:
    rng = random.Random(i)
    words = ["model", "serving", "cache", "prefix", "replica", "token", "latency", "gateway"]
    return f"You are assistant number {i}. " + " ".join(rng.choice(words) for _ in range(PROMPT_WORDS))


@pytest.fixture(scope="module")
def affinity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    data = tmp_path_factory.mktemp("prefix") / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "model.py"), str(data / "oss")], check=True)
    srv = new_server(data).start()
    spec: dict[str, Any] = json.loads((ROOT / "examples" / "quickstart" / "service.json").read_text())
    spec["metadata"].update(name="prefix", instance=2, cpu=0.5, balancer="prefix-affinity")
    spec["containers"][0]["command"] += " --cache-ram 0"  # slots only: a replica keeps 2 prompts
    try:
        srv.client.deploy(spec)
        srv.client.wait_ready("prefix", 2, timeout_s=180)
        yield srv, srv.client.call_info("prefix")
    finally:
        stop_and_reap(srv)


def ask(info: dict[str, str], prompt: str, n: int) -> tuple[float, str, dict[str, Any]]:
    """One chat request for a single token: its latency (s), the replica, the engine's timings."""
    body = {
        "messages": [{"role": "system", "content": prompt}, {"role": "user", "content": f"turn {n}: hi"}],
        "max_tokens": 1,
    }
    start = time.perf_counter()
    r = requests.post(
        info["endpoint"] + "/v1/chat/completions",
        json=body,
        headers={"Authorization": info["token"], "X-OpenEAS-Explain": "1"},
        timeout=240,
    )
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text[:300]
    replica, _, reason = r.headers["X-OpenEAS-Replica"].partition(";")
    assert "prefix affinity" in reason, reason
    return elapsed, replica, r.json()["timings"]


def test_repeats_of_a_prefix_hit_one_replicas_cache(affinity: tuple[Server, dict[str, str]]) -> None:
    _, info = affinity
    prompts = [system_prompt(0), system_prompt(1)]
    firsts: list[float] = []
    repeats: list[float] = []
    replica_of: dict[int, set[str]] = {0: set(), 1: set()}
    for n, p in enumerate([0, 1, 0, 1, 0, 1]):  # sequential: no load, so the owner always takes it
        elapsed, replica, timings = ask(info, prompts[p], n)
        replica_of[p].add(replica)
        if n < 2:
            assert timings["cache_n"] < 50, timings  # a first send: the whole prompt is prefilled
            firsts.append(elapsed)
        else:
            assert timings["cache_n"] > 10 * timings["prompt_n"], timings  # the prefix came from the cache
            repeats.append(elapsed)
    assert all(len(r) == 1 for r in replica_of.values()), replica_of  # each prompt stayed on its owner
    assert statistics.median(repeats) <= GAIN_BOUND * statistics.median(firsts), (firsts, repeats)

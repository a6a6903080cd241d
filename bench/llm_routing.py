"""Prefix-affinity vs least-request on LLM replicas: ``python bench/llm_routing.py``.

A real ``openeas server``; per balancer, one service of 2 replicas of the quickstart llama-server
(examples/quickstart/service.json, the model from scripts/model.py, ``--cache-reuse 256`` and
llama-server's prompt cache on), deployed side by side with ``metadata.balancer`` set. The
workload: 8 distinct system prompts of ~1,000 tokens, each followed by short user turns, Poisson
arrivals. Measured per balancer: TTFT p50/p99 (streamed, time to the first token's chunk), each
replica's share of requests (``X-OpenEAS-Explain``), the gateway's CPU per request
(/proc/<gateway>/stat over the run). Keys moved when a third replica is added: the gateway's own
ring (gateway/routing/affinity.py) over 10,000 prefixes.

``--engine testserver`` is the smoke form (tests/test_bench_smoke.py): test-server replicas, whose
latency does not depend on a cache, so only the mechanics (shares, CPU, moved keys) mean anything.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tests.harness import new_server, recorded_gateway_pid, service_spec, stop_and_reap  # noqa: E402

from openeas.gateway.routing.affinity import Ring  # noqa: E402

BALANCERS = ("least-request", "prefix-affinity")
WORDS = [
    "model",
    "serving",
    "cache",
    "prefix",
    "replica",
    "token",
    "latency",
    "gateway",
    "request",
    "answer",
    "system",
]


def system_prompt(i: int, tokens: int) -> str:
    rng = random.Random(i)
    return f"You are assistant number {i}. " + " ".join(rng.choice(WORDS) for _ in range(tokens))


def llama_spec(name: str, bucket: Path, cpu: float) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((ROOT / "examples/quickstart/service.json").read_text())
    spec["metadata"]["name"] = name
    spec["metadata"]["instance"] = 2
    spec["metadata"]["cpu"] = cpu  # every balancer's 2 replicas admitted on a 2-core machine
    spec["containers"][0]["command"] += " --cache-reuse 256"
    spec["storage"][0]["oss"]["path"] = (bucket / "models/smollm2-135m-instruct").as_uri() + "/"
    return spec


def cpu_ticks(pid: int | None) -> int:
    if pid is None:
        return 0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def one(
    endpoint: str, token: str, body: dict[str, Any], out: list[tuple[float, str]], lock: threading.Lock
) -> None:
    start = time.perf_counter()
    try:
        r = requests.post(
            endpoint + "/v1/chat/completions",
            json=body,
            headers={"Authorization": token, "X-OpenEAS-Explain": "1"},
            stream=True,
            timeout=120,
        )
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                break
        ttft = time.perf_counter() - start
        replica = r.headers.get("X-OpenEAS-Replica", "?").split(";")[0]
        r.close()
        if r.status_code != 200:
            replica = f"HTTP {r.status_code}"
    except requests.RequestException:
        replica, ttft = "no answer", float("nan")
    with lock:
        out.append((ttft, replica))


def workload(endpoint: str, token: str, args: argparse.Namespace) -> list[tuple[float, str]]:
    rng = random.Random(args.seed)
    prompts = [system_prompt(i, args.prompt_tokens) for i in range(args.prompts)]
    out: list[tuple[float, str]] = []
    lock = threading.Lock()
    threads = []
    for n in range(args.requests):
        p = rng.randrange(len(prompts))
        body = {
            "messages": [
                {"role": "system", "content": prompts[p]},
                {"role": "user", "content": f"question {n}: say hi"},
            ],
            "max_tokens": 4,
            "stream": True,
        }
        t = threading.Thread(target=one, args=(endpoint, token, body, out, lock), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(rng.expovariate(args.rate))
    for t in threads:
        t.join(150)
    return out


def keys_moved(replicas: int, keys: int = 10_000) -> float:
    names = [f"r{i} (127.0.0.1:{9000 + i})" for i in range(replicas + 1)]
    before, after = Ring(names[:replicas]), Ring(names)
    moved = sum(
        names[before.walk(k)[0]] != names[after.walk(k)[0]]
        for k in (f"prefix-{i}".encode() for i in range(keys))
    )
    return moved / keys


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("llama", "testserver"), default="llama")
    ap.add_argument("--requests", type=int, default=80, help="requests per balancer")
    ap.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals per second")
    ap.add_argument("--prompts", type=int, default=8, help="distinct system prompts")
    ap.add_argument("--prompt-tokens", type=int, default=1000, help="words per system prompt (~tokens)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--balancers",
        default=",".join(BALANCERS),
        help="compared side by side, least-request and prefix-affinity first (add least-kv: "
        "llama-server's llamacpp:kv_cache_usage_ratio, pushed by the control plane)",
    )
    args = ap.parse_args()
    balancers = [b for b in args.balancers.split(",") if b]
    cpu = round(1.0 / len(balancers), 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="openeas-llmroute-") as d:
        srv = new_server(Path(d) / "data").start()
        try:
            c = srv.client
            bucket = Path(d) / "bucket"
            if args.engine == "llama":
                from model import ensure_model

                ensure_model(bucket)
            for bal in balancers:
                name = bal.replace("-", "_")
                spec = (
                    llama_spec(name, bucket, cpu)
                    if args.engine == "llama"
                    else service_spec(name, replicas=2)
                )
                spec["metadata"]["balancer"] = bal
                c.deploy(spec)
                c.wait_ready(name, 2, timeout_s=180)
            gw = recorded_gateway_pid(srv.data_dir)
            for bal in balancers:
                info = c.call_info(bal.replace("-", "_"))
                ticks = cpu_ticks(gw)
                results = workload(info["endpoint"], info["token"], args)
                cpu_ms = (cpu_ticks(gw) - ticks) * 10 / max(1, len(results))
                failed = [r for _, r in results if r.startswith(("HTTP", "no answer"))]
                if failed:
                    print(f"{bal}: {len(failed)} failed: {sorted(set(failed))}", file=sys.stderr)
                results = [(t, r) for t, r in results if not r.startswith(("HTTP", "no answer"))]
                ttfts = [t * 1000 for t, _ in results]
                shares = sorted(
                    (sum(1 for _, r in results if r == rid) for rid in {r for _, r in results}), reverse=True
                )
                mean = statistics.mean(shares) if shares else 0
                shares = shares or [0]
                rows.append(
                    (
                        bal,
                        len(results),
                        pct(ttfts, 0.5),
                        pct(ttfts, 0.99),
                        shares,
                        shares[0] / mean if mean else 0,
                        cpu_ms,
                    )
                )
        finally:
            stop_and_reap(srv)
    print(f"engine: {args.engine}; {args.prompts} system prompts x ~{args.prompt_tokens} tokens, "
          f"{args.requests} requests at {args.rate}/s (Poisson) per balancer, 2 replicas")  # fmt: skip
    print(
        "| balancer | answered | TTFT p50 ms | TTFT p99 ms | requests per replica | max/mean share "
        "| gateway CPU ms/request |"
    )
    print("|---|---|---|---|---|---|---|")
    for bal, n, p50, p99, shares, top, cpu in rows:
        print(f"| {bal} | {n} | {p50:.0f} | {p99:.0f} | {shares} | {top:.2f} | {cpu:.2f} |")
    lr, pa = rows[0], rows[1]
    print(f"TTFT p50 ratio prefix-affinity / least-request: {pa[2] / lr[2]:.2f} (goal <= 0.5)")
    print(f"TTFT p99 ratio: {pa[3] / lr[3]:.2f} (goal <= 1.0); max/mean share {pa[5]:.2f} (goal <= 1.3)")
    print(
        f"gateway CPU ratio: {pa[6] / lr[6]:.2f} (goal <= 1.1)"
        if lr[6]
        else "gateway CPU: below /proc's 10 ms tick"
    )
    for n in (2, 4, 8):
        print(f"keys moved adding replica {n + 1} to {n}: {keys_moved(n):.1%} (ideal {1 / (n + 1):.1%})")


if __name__ == "__main__":
    main()

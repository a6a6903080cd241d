"""Prefix-affinity vs least-request on LLM replicas: ``python bench/llm_routing.py``.

A real ``openeas server``; per balancer, one service of 2 replicas of the quickstart llama-server
(examples/quickstart/service.json, the model from scripts/model.py), deployed side by side with
``metadata.balancer`` set. The workload: 8 distinct system prompts of ~1,000 tokens, each followed
by short user turns, Poisson arrivals. Measured per balancer: TTFT p50/p99 (streamed, time to the
first token's chunk), how many requests hit the replica's prompt cache (llama-server's own
``timings.cache_n`` / ``prompt_n`` in the stream's last chunk), each replica's share of requests
(``X-OpenEAS-Explain``), the gateway's CPU per request (/proc/<gateway>/stat over the run). Keys
moved when a third replica is added: the gateway's own ring (gateway/routing/affinity.py) over 10,000
prefixes.

The cache a replica has (``--cache-prompts K``, default 4: its share of the 8 prompts under
affinity): llama-server keeps a prompt's KV in the slot that served it (``--parallel K``, 2,048
tokens of context each) and, by default, every prompt it has seen in up to 8 GiB of host memory
(``--cache-ram``). 8 prompts of ~1,000 tokens of this 135M model are ~190 MB, so with the host
cache each replica ends up holding all of them and least-request hits as often as affinity once
each replica has seen each prompt once: the regime where routing cannot matter
(``--cache-prompts 0`` measures it, the quickstart's flags as they are). With ``K`` the host cache
is off (``--cache-ram 0``) and a replica holds its last K prompts: fewer than the workload's 8, as
a GPU's KV cache holds fewer long prefixes than real traffic has.

``--together`` sends the same arrival schedule to every balancer's service at once (the same
background load for all; the gateway's CPU is then not separable per balancer).

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


SLOT_CTX = 2048  # tokens of context per llama-server slot: a ~1,000-token prompt and its turns


def llama_spec(name: str, bucket: Path, cpu: float, cache_prompts: int, threads: int) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((ROOT / "examples/quickstart/service.json").read_text())
    spec["metadata"]["name"] = name
    spec["metadata"]["instance"] = 2
    spec["metadata"]["cpu"] = cpu  # every balancer's 2 replicas admitted on a 2-core machine
    if cache_prompts:
        cmd = spec["containers"][0]["command"]
        cmd = cmd.replace("-c 4096", f"-c {cache_prompts * SLOT_CTX}")
        cmd = cmd.replace("--parallel 2", f"--parallel {cache_prompts}")
        assert f"--parallel {cache_prompts}" in cmd, cmd  # the quickstart's flags moved: update here
        spec["containers"][0]["command"] = cmd + " --cache-ram 0"
    cmd = spec["containers"][0]["command"]
    assert "--threads 1" in cmd, cmd  # the quickstart's flags moved: update here
    # 0: llama-server's own default (every core); the quickstart runs one thread (its cpu: 1)
    spec["containers"][0]["command"] = cmd.replace(" --threads 1", f" --threads {threads}" if threads else "")
    spec["storage"][0]["oss"]["path"] = (bucket / "models/smollm2-135m-instruct").as_uri() + "/"
    return spec


def cpu_ticks(pid: int | None) -> int:
    if pid is None:
        return 0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class Answer:
    """One request's outcome: TTFT (s), the replica, and the engine's own prompt/cache counts."""

    __slots__ = ("cache_n", "n", "prompt_n", "replica", "ttft")

    def __init__(self, n: int) -> None:
        self.n = n  # arrival index
        self.ttft = float("nan")
        self.replica = "no answer"
        self.prompt_n = -1  # tokens prefilled (-1: the engine did not say)
        self.cache_n = -1  # tokens taken from its prompt cache

    @property
    def failed(self) -> bool:
        return self.replica.startswith(("HTTP", "no answer"))

    @property
    def hit(self) -> bool:
        return self.cache_n > self.prompt_n >= 0  # most of the prompt came from the cache


def one(endpoint: str, token: str, body: dict[str, Any], a: Answer) -> None:
    start = time.perf_counter()
    try:
        r = requests.post(
            endpoint + "/v1/chat/completions",
            json=body,
            headers={"Authorization": token, "X-OpenEAS-Explain": "1"},
            stream=True,
            timeout=300,
        )
        first = True
        for line in r.iter_lines():
            if not line.startswith(b"data:"):
                continue
            if first:
                a.ttft, first = time.perf_counter() - start, False
            if b'"timings"' in line:  # llama-server's last chunk: its prompt and cache counts
                timings = json.loads(line[5:]).get("timings", {})
                a.prompt_n, a.cache_n = int(timings.get("prompt_n", -1)), int(timings.get("cache_n", -1))
        a.replica = r.headers.get("X-OpenEAS-Replica", "?").split(";")[0]
        r.close()
        if r.status_code != 200:
            a.replica = f"HTTP {r.status_code}"
    except (requests.RequestException, ValueError) as e:
        a.replica = f"no answer ({type(e).__name__} after {time.perf_counter() - start:.0f} s)"


def workload(targets: list[tuple[str, str]], args: argparse.Namespace) -> list[list[Answer]]:
    """The Poisson schedule sent to every target (endpoint, token) at once: answers per target."""
    rng = random.Random(args.seed)
    prompts = [system_prompt(i, args.prompt_tokens) for i in range(args.prompts)]
    out: list[list[Answer]] = [[] for _ in targets]
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
        for (endpoint, token), answers in zip(targets, out, strict=True):
            answers.append(Answer(n))
            t = threading.Thread(target=one, args=(endpoint, token, body, answers[-1]), daemon=True)
            t.start()
            threads.append(t)
        time.sleep(rng.expovariate(args.rate))
    for t in threads:
        t.join(330)
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


def row(bal: str, answers: list[Answer], cpu_ms: float, warmup: int) -> dict[str, Any]:
    failed = [a.replica for a in answers if a.failed]
    if failed:
        print(f"{bal}: {len(failed)} failed: {sorted(set(failed))}", file=sys.stderr)
    ok = [a for a in answers if not a.failed]
    ttfts = [a.ttft * 1000 for a in ok]
    steady = [a.ttft * 1000 for a in ok if a.n >= warmup]
    known = [a for a in ok if a.prompt_n >= 0]
    counts = sorted((sum(1 for a in ok if a.replica == rid) for rid in {a.replica for a in ok}), reverse=True)
    mean = statistics.mean(counts) if counts else 0
    return {
        "bal": bal,
        "n": len(ok),
        "p50": pct(ttfts, 0.5),
        "p99": pct(ttfts, 0.99),
        "steady_p50": pct(steady, 0.5),
        "hits": f"{sum(a.hit for a in known)}/{len(known)}" if known else "n/a",
        "hit_ms": pct([a.ttft * 1000 for a in known if a.hit], 0.5),
        "miss_ms": pct([a.ttft * 1000 for a in known if not a.hit], 0.5),
        "shares": counts or [0],
        "top": counts[0] / mean if mean else 0,
        "cpu": cpu_ms,
    }


def deploy_all(c: Any, balancers: list[str], bucket: Path, args: argparse.Namespace) -> None:
    cpu = round(1.0 / len(balancers), 2)
    if args.engine == "llama":
        from model import ensure_model

        ensure_model(bucket)
    for bal in balancers:
        name = bal.replace("-", "_")
        spec = (
            llama_spec(name, bucket, cpu, args.cache_prompts, args.threads)
            if args.engine == "llama"
            else service_spec(name, replicas=2)
        )
        spec["metadata"]["balancer"] = bal
        c.deploy(spec)
    for bal in balancers:
        c.wait_ready(bal.replace("-", "_"), 2, timeout_s=180)


def measure(balancers: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="openeas-llmroute-") as d:
        srv = new_server(Path(d) / "data").start()
        try:
            c = srv.client
            deploy_all(c, balancers, Path(d) / "bucket", args)
            gw = recorded_gateway_pid(srv.data_dir)
            targets = [c.call_info(bal.replace("-", "_")) for bal in balancers]
            if args.together:
                every = workload([(t["endpoint"], t["token"]) for t in targets], args)
                rows = [row(b, a, float("nan"), args.warmup) for b, a in zip(balancers, every, strict=True)]
            for bal, info in zip(balancers, targets, strict=True) if not args.together else ():
                ticks = cpu_ticks(gw)
                answers = workload([(info["endpoint"], info["token"])], args)[0]
                cpu_ms = (cpu_ticks(gw) - ticks) * 10 / max(1, len(answers))
                rows.append(row(bal, answers, cpu_ms, args.warmup))
        finally:
            stop_and_reap(srv)
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    cache = (
        f"{args.cache_prompts} prompts cached per replica (--parallel {args.cache_prompts} --cache-ram 0)"
        if args.cache_prompts
        else "the quickstart's own cache (2 slots + the 8 GiB host prompt cache)"
    )
    print(f"engine: {args.engine}; {args.prompts} system prompts x ~{args.prompt_tokens} tokens, "
          f"{args.requests} requests at {args.rate}/s (Poisson) per balancer, 2 replicas; {cache}; "
          f"{'together' if args.together else 'one balancer after the other'}; "
          f"steady = requests after the first {args.warmup}")  # fmt: skip
    print(
        "| balancer | answered | TTFT p50 ms | TTFT p99 ms | steady p50 ms | cache hits | hit / miss p50 ms "
        "| requests per replica | max/mean share | gateway CPU ms/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['bal']} | {r['n']} | {r['p50']:.0f} | {r['p99']:.0f} | {r['steady_p50']:.0f} "
            f"| {r['hits']} "
            f"| {r['hit_ms']:.0f} / {r['miss_ms']:.0f} | {r['shares']} | {r['top']:.2f} | {r['cpu']:.2f} |"
        )
    lr, pa = rows[0], rows[1]
    ratio = pa["p50"] / lr["p50"]
    print(
        f"TTFT p50 ratio prefix-affinity / least-request: {ratio:.2f} (goal <= 0.5: "
        f"{'met' if ratio <= 0.5 else 'missed'}); steady state: {pa['steady_p50'] / lr['steady_p50']:.2f}"
    )
    print(
        f"TTFT p99 ratio: {pa['p99'] / lr['p99']:.2f} (goal <= 1.0); "
        f"max/mean share {pa['top']:.2f} (goal <= 1.3)"
    )
    if args.together:
        print("gateway CPU: not separable per balancer (--together); run without it")
    elif lr["cpu"]:
        print(f"gateway CPU ratio: {pa['cpu'] / lr['cpu']:.2f} (goal <= 1.1)")
    else:
        print("gateway CPU: below /proc's 10 ms tick")
    for n in (2, 4, 8):
        print(f"keys moved adding replica {n + 1} to {n}: {keys_moved(n):.1%} (ideal {1 / (n + 1):.1%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("llama", "testserver"), default="llama")
    ap.add_argument("--requests", type=int, default=30, help="requests per balancer")
    ap.add_argument("--rate", type=float, default=0.03, help="Poisson arrivals per second")
    ap.add_argument("--prompts", type=int, default=8, help="distinct system prompts")
    ap.add_argument("--prompt-tokens", type=int, default=1000, help="words per system prompt (~tokens)")
    ap.add_argument(
        "--cache-prompts",
        type=int,
        default=4,
        help="prompts a replica keeps (llama-server --parallel K --cache-ram 0); 0: the quickstart's "
        "flags as they are (2 slots and the 8 GiB host prompt cache, which holds every prompt here)",
    )
    ap.add_argument(
        "--together", action="store_true", help="every balancer's service gets the schedule at once"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="llama-server --threads per replica (0: its default, every core; the quickstart's: 1): with 4 "
        "replicas on 2 cores, "
        "more than one thread each spins in ggml's barriers while a partner waits for a core",
    )
    ap.add_argument("--warmup", type=int, default=12, help="first requests left out of the steady p50")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--balancers",
        default=",".join(BALANCERS),
        help="compared side by side, least-request and prefix-affinity first (add least-kv: "
        "llama-server's llamacpp:kv_cache_usage_ratio, pushed by the control plane)",
    )
    args = ap.parse_args()
    report(measure([b for b in args.balancers.split(",") if b], args), args)


if __name__ == "__main__":
    main()

"""Load for the autoscaler's end-to-end tests and bench: an open-loop sender (a fixed request rate,
whatever the latency: the load a concurrency metric sees and a QPS metric misses) and a closed-loop
pool of streaming clients that checks every stream arrived whole. Standard library + requests;
targets 127.0.0.1 only and stops by itself (a duration, or stop())."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import requests

from tests.harness import Server, service_spec

TOKEN_SUFFIX = "-token-0123456789"


def autoscaled_spec(name: str, autoscaling: dict[str, Any], *, args: str = "", replicas: int = 1) -> dict[str, Any]:
    """The test server with an autoscaling block; its token is `<name>-token-0123456789`."""
    spec = service_spec(name, replicas=replicas, args=args, token=name + TOKEN_SUFFIX)
    spec["metadata"]["eas"]["termination_grace_period"] = 15
    spec["autoscaling"] = autoscaling
    return spec


def predict_url(srv: Server, name: str, path: str = "") -> str:
    return f"{srv.gateway_url}/api/predict/{name}{path}"


@dataclass
class OpenLoop:
    """`rate` requests per second to `url` for `duration_s`, each in its own worker thread."""

    url: str
    token: str
    rate: float
    duration_s: float
    statuses: list[int | None] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> OpenLoop:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _one(self) -> None:
        try:
            r = requests.post(self.url, data=b"{}", headers={"Authorization": self.token}, timeout=60)
            status: int | None = r.status_code
        except requests.RequestException:
            status = None
        with self._lock:
            self.statuses.append(status)

    def _run(self) -> None:
        with ThreadPoolExecutor(max_workers=64) as pool:
            t0 = time.monotonic()
            n = 0
            while True:
                due = t0 + n / self.rate
                if due - t0 >= self.duration_s:
                    break
                time.sleep(max(0.0, due - time.monotonic()))
                pool.submit(self._one)
                n += 1

    def join(self, timeout_s: float = 120) -> OpenLoop:
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self


@dataclass
class Streams:
    """`clients` threads each sending one streaming chat request after another; every answer must
    be 200 with all `tokens` chunks and the final [DONE] (a cut stream is a failure)."""

    url: str
    token: str
    clients: int
    tokens: int
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Streams:
        for _ in range(self.clients):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self) -> None:
        body = {"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": self.tokens}
        with requests.Session() as s:
            while not self._stop.is_set():
                problem = None
                try:
                    r = s.post(self.url, json=body, headers={"Authorization": self.token}, stream=True, timeout=60)
                    text = b"".join(r.iter_content(None)).decode()
                    chunks = text.count('"delta"')
                    if r.status_code != 200:
                        problem = f"HTTP {r.status_code}: {text[:200]}"
                    elif chunks != self.tokens or not text.rstrip().endswith("data: [DONE]"):
                        problem = f"truncated: {chunks}/{self.tokens} chunks, ends {text[-40:]!r}"
                except requests.RequestException as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    if problem is None:
                        self.ok += 1
                    else:
                        self.failures.append(problem)

    def stop(self) -> Streams:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        return self


def autoscaled_events(srv: Server, name: str) -> list[dict[str, Any]]:
    return [e for e in srv.client.events(name, limit=10_000) if e["reason"] == "Autoscaled"]

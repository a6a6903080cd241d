"""Steady client load through the gateway, counting every outcome, and the counting replica's
spec (for the lifecycle e2e tests and bench/soak_lifecycle.py). Standard library + requests;
each thread keeps one keep-alive session, as a real client does."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.harness import service_spec

COUNTING_REPLICA = Path(__file__).parent / "fixtures" / "counting_replica.py"


def counting_spec(name: str, count_file: Path, *, delay_s: float, version: str = "1") -> dict[str, Any]:
    """Two replicas of the counting replica: each execution of a request appends one line to
    ``count_file`` and takes ``delay_s`` seconds; ``version`` makes an update a new spec."""
    spec = service_spec(name, replicas=2, token=f"{name}-token-0123456789")
    spec["metadata"]["eas"]["termination_grace_period"] = 10
    container = spec["containers"][0]
    container["command"] = f"{sys.executable} {COUNTING_REPLICA}"
    container["env"] = [
        {"name": "COUNT_FILE", "value": str(count_file)},
        {"name": "DELAY_S", "value": str(delay_s)},
        {"name": "SPEC_VERSION", "value": version},
    ]
    return spec


@dataclass
class Load:
    url: str
    token: str
    threads: int = 8
    body: bytes = b'{"prompt": "hi", "max_tokens": 1}'
    timeout_s: float = 60.0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def start(self) -> Load:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self) -> None:
        with requests.Session() as s:
            while not self._stop.is_set():
                rid = f"load-{next(self._ids)}"
                t0 = time.monotonic()
                try:
                    r = s.post(
                        self.url,
                        data=self.body,
                        headers={
                            "Authorization": self.token,
                            "X-Request-Id": rid,
                            "Content-Type": "application/json",
                        },
                        timeout=self.timeout_s,
                    )
                    outcome = None if r.status_code == 200 else f"{rid}: HTTP {r.status_code} {r.text[:200]}"
                except requests.RequestException as exc:
                    outcome = f"{rid}: {type(exc).__name__}: {exc} at {time.time():.3f}"
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                        self.latencies.append(time.monotonic() - t0)
                    else:
                        self.failures.append(outcome)

    def answered(self) -> int:
        with self._lock:
            return self.ok + len(self.failures)

    def wait_more(self, n: int, timeout_s: float = 60.0) -> None:
        """Until `n` more requests were answered (whatever the outcome)."""
        target = self.answered() + n
        deadline = time.monotonic() + timeout_s
        while self.answered() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.answered()} answered, waiting for {target}")
            time.sleep(0.02)

    def stop(self) -> Load:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout_s + 5)
        return self

    def summary(self) -> dict[str, int]:
        return {"sent": self.ok + len(self.failures), "ok": self.ok, "failed": len(self.failures)}

    def failure_kinds(self) -> Counter[str]:
        return Counter(f.split(": ", 1)[1][:60] for f in self.failures)

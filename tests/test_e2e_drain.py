"""End to end: replicas that stop (scale-in, rolling update, delete) with long requests in flight
on them finish those requests first. Each request runs exactly once (counted at the replica), and
the ones too big to replay (2 MB bodies) are not cut.

Real server, real replica processes (tests/fixtures/counting_replica.py: it appends one line per
execution to a file, answers after 3 s, and dies at once on SIGTERM), real HTTP through the
gateway.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import Server, wait_for
from tests.lifecycle_load import counting_spec

DELAY_S = 3.0
N = 12  # requests in flight when the replicas stop


def _spec(name: str, count_file: Path, version: str = "1") -> dict[str, Any]:
    return counting_spec(name, count_file, delay_s=DELAY_S, version=version)


def _executions(count_file: Path) -> list[tuple[int, str]]:
    if not count_file.exists():
        return []
    return [(int(p), rid) for p, rid in (line.split() for line in count_file.read_text().splitlines())]


CHANGES = [
    # what stops the replicas, request body size (bytes)
    pytest.param("scale-in", 2 * 1024 * 1024, id="scale-in-2mb-bodies"),
    pytest.param("scale-in", 100, id="scale-in-small-bodies-not-re-run"),
    pytest.param("rolling-update", 2 * 1024 * 1024, id="rolling-update-2mb-bodies"),
    pytest.param("rolling-update", 100, id="rolling-update-small-bodies-not-re-run"),
    pytest.param("delete", 100, id="delete"),
]


@pytest.mark.parametrize(("change", "body_bytes"), CHANGES)
def test_stopping_replicas_finish_their_in_flight_requests_first(
    shared_server: Server, tmp_path: Path, change: str, body_bytes: int
) -> None:
    srv, c = shared_server, shared_server.client
    name = f"drain_{change.replace('-', '_')}_{body_bytes}"
    count_file = tmp_path / "executions"
    c.deploy(_spec(name, count_file))
    c.wait_ready(name, 2, timeout_s=60)
    url = f"{srv.gateway_url}/api/predict/{name}/work"
    token = f"{name}-token-0123456789"
    results: dict[str, Any] = {}

    def call(i: int) -> None:
        rid = f"req-{i}"
        try:
            r = requests.post(
                url, data=b"x" * body_bytes, headers={"Authorization": token, "X-Request-Id": rid}, timeout=60
            )
            results[rid] = (r.status_code, r.json() if r.status_code == 200 else r.text)
        except requests.RequestException as exc:
            results[rid] = (None, repr(exc))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    # All of them are running on a replica (each one line in the file) before anything stops.
    wait_for(lambda: len(_executions(count_file)) >= N, 30, what=f"{N} requests executing")
    old_pids = {p for p, _ in _executions(count_file)}
    if change == "scale-in":
        c.scale(name, 1)
    elif change == "rolling-update":
        c.update(name, _spec(name, count_file, version="2"))
    else:
        c.delete(name)
    for t in threads:
        t.join(60)

    failed = {rid: r for rid, r in results.items() if r[0] != 200}
    assert not failed, failed
    assert len(results) == N
    runs = Counter(rid for _, rid in _executions(count_file))
    assert {rid: n for rid, n in runs.items() if n > 1} == {}  # no request ran twice
    # Each was answered by the replica it started on, with its whole body.
    first = {rid: p for p, rid in reversed(_executions(count_file))}
    assert all(
        body["pid"] == first[rid] and body["bytes"] == body_bytes for rid, (_, body) in results.items()
    )
    if change == "delete":
        wait_for(lambda: name not in [s["name"] for s in c.list()], 30, what="service deleted")
    else:
        if change == "rolling-update":
            wait_for(
                lambda: (
                    (d := c.describe(name))["ready_replicas"] == 2
                    and not {r["pid"] for r in d["replicas"]} & old_pids
                ),
                60,
                what="the update to finish",
            )
        c.delete(name)

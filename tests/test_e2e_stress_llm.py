"""The stress test against the quickstart's real LLM (llama-server + SmolLM2-135M-Instruct):
streamed chat completions through the gateway give time to first token, time per output token
and tokens per second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, new_server, stop_and_reap

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("OPENEAS_SKIP_LLAMA") == "1", reason="OPENEAS_SKIP_LLAMA=1"),
]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:

    data = tmp_path_factory.mktemp("qs-stress") / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "model.py"), str(data / "oss")], check=True)
    srv = new_server(data).start()
    srv.client.deploy(json.loads((ROOT / "examples" / "quickstart" / "service.json").read_text()))
    srv.client.wait_ready("quickstart", 1, timeout_s=180)
    yield srv
    stop_and_reap(srv)


def test_streamed_chat_gives_ttft_tpot_and_tokens_per_second(quickstart: Server, tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    req = {"model": "smollm2", "messages": [{"role": "user", "content": "Name three colors."}],
           "max_tokens": 24, "temperature": 0, "stream": True}  # fmt: skip
    data.write_text(json.dumps(req) + "\n")
    r = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "stress", "quickstart", "--path", "/v1/chat/completions",
         "--data", str(data), "--mode", "manual", "--qps", "1", "--step", "4", "--duration", "8",
         "--timeout", "60", "--json"],
        env=quickstart.env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["stream"] is True and report["errors"] == 0
    steps = report["steps"]
    assert len(steps) == 2 and sum(s["ok"] for s in steps) == 8
    for s in steps:
        ttft, tpot = s["ttft"], s["tpot"]
        assert ttft["count"] == s["ok"] and 0 < ttft["p50"] < s["latency"]["p50"]
        assert tpot["count"] >= 1 and 0 < tpot["p50"] < 1000
    # tokens/s counts the tokens of answers completed within a step's window (a slow answer ends
    # in the next step): over the run, up to 24 tokens per answer at ~1 answer per second.
    rates = [s["tokens_per_s"] for s in steps]
    assert all(r is not None for r in rates) and 0 < sum(rates) / len(rates) <= 1.5 * 24

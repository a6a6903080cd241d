"""The quickstart for real: llama-server + Gemma-3 270M, deployed from the EAS-style spec in
examples/quickstart, called through the gateway by unchanged client SDKs. Base model: assert
structure and token counts, never the text."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Server, new_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("llama-server", path=str(Path(sys.executable).parent)) is None,
        reason="llama-server not installed: run scripts/setup.sh",
    ),
]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("qs") / "data"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "model.py"), str(data / "oss")], check=True)
    srv = new_server(data).start()
    srv.client.deploy(json.loads((ROOT / "examples" / "quickstart" / "service.json").read_text()))
    srv.client.wait_ready("quickstart", 1, timeout_s=180)
    yield srv
    srv.client.delete("quickstart")
    srv.client.wait_deleted("quickstart", timeout_s=60)
    srv.stop()


def test_openai_sdk_chat_and_stream(quickstart: Server):
    from openai import OpenAI

    info = quickstart.client.call_info("quickstart")
    client = OpenAI(base_url=info["endpoint"] + "/v1", api_key=info["token"])
    chat = client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Hello"}], max_tokens=8
    )
    assert chat.object == "chat.completion"
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and 0 < chat.usage.completion_tokens <= 8

    chunks = list(
        client.completions.create(
            model="gemma", prompt="The capital of France is", max_tokens=12, stream=True
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) >= 3  # tokens arrived as separate SSE events
    assert "".join(texts).strip()


def test_official_eas_client_signed_request(quickstart: Server):
    from eas_prediction import PredictClient, StringRequest

    info = quickstart.client.call_info("quickstart")
    host = info["endpoint"].split("://", 1)[1].split("/", 1)[0]
    # EAS names the sub path as part of the service; the client signs `/api/predict/<that>`.
    client = PredictClient(host, "quickstart/v1/completions")
    client.set_token(info["token"])
    client.init()
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 6})
    resp = json.loads(client.predict(StringRequest(body)).response_data)
    assert resp["object"] == "text_completion"
    assert resp["usage"]["completion_tokens"] == 6


def test_describe_shows_cold_start_and_llama_metrics(quickstart: Server):
    detail = quickstart.client.describe("quickstart")
    rep = detail["replicas"][0]
    assert rep["phase"] == "Ready"
    cold = rep["cold_start"]
    assert (
        cold["fetch"]["bytes"] > 100_000_000 or cold["fetch"]["cache_hit"]
    )  # the GGUF went through the node cache
    assert cold["start_s"] is not None and cold["total_s"] >= cold["start_s"]
    import requests

    metrics = requests.get(f"http://127.0.0.1:{rep['port']}/metrics", timeout=5).text
    assert "llamacpp:prompt_tokens_total" in metrics

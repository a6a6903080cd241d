"""End to end: a custom Python processor written the EAS way, deployed from a processor spec
(`processor_type: python`, no containers) on a real server, answers through the gateway with
plain HTTP, through the OpenAI SDK's raw client and with the official EAS SDK
(eas_prediction.PredictClient)."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.harness import Server, wait_for
from tests.test_processor import EAS_PROCESSOR, tar_gz, write_package

pytestmark = pytest.mark.slow


def test_python_processor_spec_answers_through_the_gateway(server: Server):
    bucket = server.data_dir / "oss" / "example-bucket"  # the server's default oss:// root
    (bucket / "processors").mkdir(parents=True)
    tar_gz(bucket / "processors" / "demo.tar.gz", {"demo/app.py": EAS_PROCESSOR})
    write_package(bucket / "models" / "v1", {"scale.txt": "3"})
    spec = {
        "name": "eas_processor",
        "processor_type": "python",
        "processor_path": "oss://example-bucket/processors/demo.tar.gz",
        "processor_entry": "app.py",
        "model_path": "oss://example-bucket/models/v1/",
        "model_config": {"tag": "from-spec"},
        "metadata": {"instance": 1, "rpc.keepalive": 10000},
    }
    c = server.client
    c.deploy(spec)
    detail = c.wait_ready("eas_processor", 1, timeout_s=90)
    assert detail["spec"] == spec  # describe shows the spec as written, not the synthesized container
    info = c.call_info("eas_processor")

    # Plain HTTP, the way any client sends a body.
    r = requests.post(info["endpoint"], data=json.dumps({"x": 4}), headers={"Authorization": info["token"]},
                      timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json() == {"y": 12, "tag": "from-spec", "cwd_writable": True}

    # The OpenAI SDK's raw client (`client.post` on any path, the body back as text: the
    # processor's answer is bytes, not typed JSON), with its `Authorization: Bearer <token>`:
    # what an OpenAI-SDK user reaches a non-OpenAI endpoint with.
    sdk = openai.OpenAI(base_url=info["endpoint"], api_key=info["token"], max_retries=0, timeout=30)
    answer = json.loads(sdk.post("", body={"x": 4}, cast_to=str))
    assert answer == {"y": 12, "tag": "from-spec", "cwd_writable": True}
    with pytest.raises(openai.BadRequestError) as refused:  # the processor's own status
        sdk.post("", body={"x": -2}, cast_to=str)
    assert (refused.value.status_code, refused.value.response.json()) == (400, {"error": "negative"})

    # The official EAS SDK: signed request to /api/predict/<service>.
    from eas_prediction import PredictClient, StringRequest

    host = info["endpoint"].split("://", 1)[1].split("/", 1)[0]
    client = PredictClient(host, "eas_processor")
    client.set_token(info["token"])
    client.set_timeout(30_000)  # ms
    client.init()
    resp = client.predict(StringRequest(json.dumps({"x": 5})))
    assert json.loads(resp.response_data) == {"y": 15, "tag": "from-spec", "cwd_writable": True}
    client.destroy()

    # The package went through the node cache like any oss mount (the replica's Fetching phase).
    mounts = detail["replicas"][0]["cold_start"]["fetch"]["mounts"]
    assert {m["mount_path"] for m in mounts} == {"/eas/workspace/processor", "/eas/workspace/model"}


def test_python_processor_that_cannot_start_says_why(server: Server):
    bucket = server.data_dir / "oss" / "example-bucket"
    write_package(bucket / "broken", {"app.py": EAS_PROCESSOR})
    spec = {"name": "broken_processor", "processor_type": "python",
            "processor_path": "oss://example-bucket/broken/", "processor_entry": "main.py"}  # fmt: skip
    server.client.deploy(spec)

    def logged() -> bool:
        lines = server.client.logs("broken_processor", tail=50)
        return any("processor_entry 'main.py': not in the processor package" in str(x) for x in lines)

    wait_for(logged, timeout_s=60, what="the processor's reason in the replica log")

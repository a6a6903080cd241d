"""End to end: batch jobs through a real server, gateway and test-server replica.

- a 10,000-line job whose server is killed -9 at about half way: restarted, it goes on from its
  last checkpoint, and the output has exactly 10,000 lines whose custom ids are the input's, each
  once;
- bad input: an invalid line goes to the errors file with its line number and the job goes on;
  a missing input file is refused at submit, naming the field; cancel (the shard being served
  finishes, no further shard starts: the replica answered exactly the lines done) and resume
  from the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import requests

from tests.harness import Server, service_spec, wait_for

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"


def write_input(path: Path, n: int, bad: dict[int, str] | None = None) -> list[str]:
    ids = []
    with path.open("w") as f:
        for i in range(n):
            if bad and i in bad:
                f.write(bad[i] + "\n")
                continue
            cid = f"req-{i:05d}"
            ids.append(cid)
            body = {"messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 2}
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": body}) + "\n")
    return ids


def cli(srv: Server, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli", *args], env=srv.env(), capture_output=True, text=True, timeout=timeout_s
    )


def job(srv: Server, job_id: str) -> dict:
    return srv.client.request("GET", f"/api/v1/batch/{job_id}")


def test_ten_thousand_lines_survive_a_server_kill_at_half_way(server: Server, tmp_path: Path) -> None:
    c = server.client
    c.deploy(service_spec("bat"))
    c.wait_ready("bat", 1, timeout_s=60)
    ids = write_input(tmp_path / "in.jsonl", 10_000)
    out = tmp_path / "out" / "results.jsonl"
    submitted = c.request(
        "POST", "/api/v1/batch",
        json_body={"service": "bat", "input": str(tmp_path / "in.jsonl"), "output": str(out), "shard_lines": 250,
                   "concurrency": 32},
    )
    assert submitted["total_lines"] == 10_000 and submitted["shards"]["total"] == 40
    wait_for(lambda: job(server, submitted["id"])["done_lines"] >= 5_000, 300, poll_s=0.05, what="half way")
    server.kill9()  # the runner dies mid-shard; the gateway and the replica go on
    server.start()
    done = wait_for(lambda: (j := job(server, submitted["id"]))["state"] != "Running" and j, 300, what="job end")
    assert done["state"] == "Succeeded", done
    assert (done["ok_lines"], done["failed_lines"]) == (10_000, 0)
    lines = out.read_text().splitlines()
    assert len(lines) == 10_000
    got = [json.loads(line)["custom_id"] for line in lines]
    assert Counter(got) == Counter(ids)  # every id once: none lost, none repeated
    first = json.loads(lines[0])
    assert first["response"]["status_code"] == 200 and first["response"]["body"]["choices"]
    assert (tmp_path / "out" / "results.errors.jsonl").read_text() == ""
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.errors.jsonl", "results.jsonl"]


def test_bad_lines_are_reported_per_line_and_the_job_goes_on(server: Server, tmp_path: Path) -> None:
    c = server.client
    c.deploy(service_spec("badb"))
    c.wait_ready("badb", 1, timeout_s=60)
    bad = {1: '{"custom_id": "broken",', 3: json.dumps({"custom_id": "nourl", "body": {}})}
    ids = write_input(tmp_path / "in.jsonl", 5, bad)
    r = cli(server, "batch", "submit", "--service", "badb", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "o.jsonl"), "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert (done["state"], done["ok_lines"], done["failed_lines"]) == ("Succeeded", 3, 2)
    assert [json.loads(x)["custom_id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == ids
    errors = [json.loads(x) for x in (tmp_path / "o.errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["error"]["code"]) for e in errors] == [(2, "invalid_json"), (4, "invalid_line")]
    assert "url:" in errors[1]["error"]["message"] and errors[1]["custom_id"] == "nourl"

    missing = cli(server, "batch", "submit", "--service", "badb", "--input", str(tmp_path / "nope.jsonl"),
                  "--output", str(tmp_path / "x.jsonl"))
    assert missing.returncode == 2 and f"input: no such file: {tmp_path / 'nope.jsonl'}" in missing.stderr
    unknown = cli(server, "batch", "submit", "--service", "ghost", "--input", str(tmp_path / "in.jsonl"),
                  "--output", str(tmp_path / "x.jsonl"))
    assert unknown.returncode != 0 and "service 'ghost' not found" in unknown.stderr


def replica_work(srv: Server, service: str) -> tuple[int, int]:
    """(chat requests answered, work requests in flight) at the service's replica, from its /metrics."""
    rep = srv.client.describe(service)["replicas"][0]
    text = requests.get(f"http://{rep['host']}:{rep['port']}/metrics", timeout=5).text
    answered = in_flight = 0
    for line in text.splitlines():
        if line.startswith("testserver_requests_total") and CHAT in line:
            answered += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("testserver_requests_in_flight "):
            in_flight = int(float(line.rsplit(" ", 1)[1]))
    return answered, in_flight


def test_cancel_and_resume_from_the_cli(server: Server, tmp_path: Path) -> None:
    c = server.client
    c.deploy(service_spec("slowb", args="--latency-ms 100"))  # 8 shards of 1.25 s: the cancel lands mid-job
    c.wait_ready("slowb", 1, timeout_s=60)
    ids = write_input(tmp_path / "in.jsonl", 400)
    r = cli(server, "batch", "submit", "--service", "slowb", "--input", str(tmp_path / "in.jsonl"),
            "--output", str(tmp_path / "o.jsonl"), "--shard-lines", "50", "--concurrency", "4", "--no-wait", "--json")
    job_id = json.loads(r.stdout)["id"]
    wait_for(lambda: job(server, job_id)["done_lines"] >= 50, 60, poll_s=0.05, what="first shard")
    cancelled = cli(server, "batch", "cancel", job_id, "--json")
    assert json.loads(cancelled.stdout)["state"] == "Cancelled"
    done_at_cancel = json.loads(cancelled.stdout)["shards"]["done"]
    # Shards run one at a time: at most the one being served at the cancel finishes. Wait until it
    # has (its lines counted, nothing in flight at the replica, every answer accounted for)...
    def settled() -> dict | None:
        j = job(server, job_id)
        answered, in_flight = replica_work(server, "slowb")
        return j if in_flight == 0 and answered == j["done_lines"] and j["done_lines"] % 50 == 0 else None

    stopped = wait_for(settled, 60, poll_s=0.05, what="the shard being served at the cancel to finish")
    # ...then no further shard started: at most one more shard done, and the replica answered
    # exactly the lines of the shards done (a started shard would have sent it requests).
    assert stopped["shards"]["done"] <= done_at_cancel + 1, (done_at_cancel, stopped)
    assert stopped["done_lines"] == 50 * stopped["shards"]["done"] < 400
    parts = sorted(p.name for p in (tmp_path / f"o.jsonl.{job_id}.parts").glob("*.out.jsonl"))
    assert len(parts) == stopped["shards"]["done"], parts
    assert job_id in cli(server, "batch", "ls").stdout
    # A CLI run later (hundreds of ms: a next shard would have sent requests by now), still the same.
    assert replica_work(server, "slowb") == (stopped["done_lines"], 0)
    assert job(server, job_id)["shards"]["done"] == stopped["shards"]["done"]
    resumed = cli(server, "batch", "resume", job_id, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["state"] == "Succeeded"
    got = [json.loads(x)["custom_id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert got == ids
    assert os.path.getsize(tmp_path / "o.errors.jsonl") == 0


def test_a_job_with_a_spec_gets_replicas_of_its_own_then_removes_them(server: Server, tmp_path: Path) -> None:
    c = server.client
    ids = write_input(tmp_path / "in.jsonl", 200)
    submitted = c.request(
        "POST", "/api/v1/batch",
        json_body={"spec": service_spec("tmpb"), "instance_type": "ecs.g7.xlarge-spot",
                   "input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "o.jsonl")},
    )
    name = submitted["service"]
    assert name.startswith("tmpb_") and submitted["temporary_service"] is True
    spec = c.describe(name)["spec"]  # created with the job, on the instance type asked for
    assert spec["cloud"]["computing"]["instance_type"] == "ecs.g7.xlarge-spot"
    done = wait_for(lambda: (j := job(server, submitted["id"]))["state"] != "Running" and j, 120, what="job end")
    assert (done["state"], done["ok_lines"]) == ("Succeeded", 200)
    assert [json.loads(x)["custom_id"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == ids
    wait_for(lambda: name not in [s["name"] for s in c.list()], 60, what=f"{name} deleted")
    bad = c.request  # both a service and a spec: refused, naming the fields
    with pytest.raises(Exception) as e:
        bad("POST", "/api/v1/batch", json_body={"service": "x", "spec": service_spec("y"), "input": "a", "output": "b"})
    assert "service, spec: give exactly one" in str(e.value)

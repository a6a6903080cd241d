"""End to end: eval sets against real test-server replicas through a real server and gateway.
`openeas eval` prints the pass rate and failures and stores the run; a rollout whose candidate
fails its eval set is refused before any weight moves (an event names the failing prompts); one
that passes starts; a malformed file is an error naming its line, and nothing is sent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from openeas.controller.evalrun import DEFAULT_CONCURRENCY, DEFAULT_MIN_PASS, DEFAULT_TIMEOUT_S
from tests.harness import Server, service_spec

# The test server answers "tok0 tok1 ..." (max_tokens tokens) with the model name it was given.
PASSING = [
    {"prompt": "say something", "expect": {"contains": "tok0"}},
    {"messages": [{"role": "user", "content": "two tokens"}], "expect": {"regex": "^tok0 tok1"}},
    {"body": {"prompt": "raw completion", "max_tokens": 3}, "expect": {"exact": "tok0 tok1 tok2"}},
]
FAILING = [*PASSING, {"prompt": "capital of France?", "expect": {"contains": "Paris"}}]


def cli(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openeas.cli", *args],
        env=srv.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, cases: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cases))
    return path


def test_documented_defaults() -> None:
    assert (DEFAULT_MIN_PASS, DEFAULT_TIMEOUT_S, DEFAULT_CONCURRENCY) == (0.95, 60.0, 4)


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        pytest.param(
            '{"prompt": "a", "expect": {"contains": "x"}}\n{oops\n', "line 2: not JSON", id="not-json"
        ),
        pytest.param(
            '{"prompt": "a", "expect": {"fuzzy": "x"}}\n', "line 1: 'expect' must be", id="unknown-check"
        ),
        pytest.param('{"expect": {"contains": "x"}}\n', "line 1: one of 'prompt'", id="no-prompt"),
    ],
)
def test_a_malformed_eval_file_names_its_line_and_sends_nothing(
    tmp_path: Path, text: str, wanted: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(text)
    # No server is reachable at this data dir: the file is refused before any call.
    env = {"OPENEAS_DATA_DIR": str(tmp_path / "nowhere")}
    r = subprocess.run(
        [sys.executable, "-m", "openeas.cli", "eval", "svc", "--set", str(bad)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert f"--set {bad}: {wanted}" in r.stderr


def test_eval_and_the_rollout_gate(server: Server, tmp_path: Path) -> None:
    c = server.client
    c.deploy(service_spec("base", args="--model-name base"))
    c.deploy(service_spec("cand", args="--model-name cand"))
    c.wait_ready("base", 1, timeout_s=90)
    c.wait_ready("cand", 1, timeout_s=90)
    c.group_create({"name": "g", "routes": [{"service": "base", "weight": 1000}, {"service": "cand"}]})
    passing, failing = write(tmp_path / "pass.jsonl", PASSING), write(tmp_path / "fail.jsonl", FAILING)

    # `openeas eval group.member`: the member's direct endpoint; pass rate, failures, stored.
    r = cli(server, "eval", "g.cand", "--set", str(failing), "--min-pass", "0.9")
    assert r.returncode == 1, r.stderr
    assert "g.cand: 3/4 passed (75.0%)" in r.stdout
    assert "FAIL line 4: 'capital of France?'" in r.stdout
    runs = c.request("GET", "/api/v1/eval", params={"service": "cand"})["runs"]
    assert [(x["target"], x["passed"], x["cases"], x["failures"]) for x in runs] == [("g.cand", 3, 4, 1)]

    # A candidate that fails the set: refused, no weight moved, an event with the failing prompt.
    r = cli(server, "rollout", "g", "--to", "cand", "--eval-set", str(failing), "--min-pass", "0.95")
    assert r.returncode != 0
    assert "eval gate: 'cand' passed 3/4 (75%), below min_pass 95%" in r.stderr
    members = [(m["service"], m["weight"]) for m in c.group("g", stats=False)["members"]]
    assert members == [("base", 1000), ("cand", 0)]
    events = [e for e in c.events("cand") if e["reason"] == "EvalGateFailed"]
    assert len(events) == 1 and "line 4: 'capital of France?'" in events[0]["message"]
    with pytest.raises(Exception, match=r"404|not found|no rollout"):
        c.rollout("g")

    # One that passes: the rollout starts.
    r = cli(server, "rollout", "g", "--to", "cand", "--eval-set", str(passing), "--hold", "1h")
    assert r.returncode == 0, r.stderr
    assert "rollout of g to cand (from base): Running" in r.stdout
    assert any(e["reason"] == "EvalGatePassed" for e in c.events("cand"))

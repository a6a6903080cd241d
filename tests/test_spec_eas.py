"""EAS's spellings (issue 12): the top-level name, dotted keys inside metadata, string booleans,
null lists, `rate_limit: 0`; each parses into the one model and round-trips exactly as written.
Also what is accepted but not used, the processor message and `openeas validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from openeas.cli.main import app
from openeas.errors import SpecError
from openeas.spec import parse_spec

C = [{"image": "localhost/x:1", "command": "serve --port 8000", "port": 8000}]

SPELLINGS = [
    pytest.param({"name": "chat", "containers": C}, lambda s: s.name == "chat", id="top-level-name"),
    pytest.param({"name": "chat", "metadata": {"name": "chat", "instance": 2}, "containers": C},
                 lambda s: s.name == "chat" and s.metadata.instance == 2, id="both-names-equal"),
    pytest.param({"metadata": {"name": "chat", "rpc.keepalive": 5000, "eas.termination_grace_period": 30},
                  "containers": C},
                 lambda s: s.metadata.rpc.keepalive == 5000 and s.metadata.eas.termination_grace_period == 30,
                 id="dotted-keys"),
    pytest.param({"metadata": {"name": "chat", "rpc.keepalive": 5000, "rpc": {"keepalive": 5000}}, "containers": C},
                 lambda s: s.metadata.rpc.keepalive == 5000, id="dotted-and-nested-equal"),
    pytest.param({"metadata": {"name": "chat", "rpc": {"rate_limit": 0}}, "containers": C},
                 lambda s: s.metadata.rpc.rate_limit == 0, id="rate-limit-zero-is-no-limit"),
    pytest.param({"metadata": {"name": "chat"}, "containers": C, "storage": None},
                 lambda s: s.storage == [], id="null-storage"),
    pytest.param({"metadata": {"name": "chat"}, "containers": [{**C[0], "env": None}]},
                 lambda s: s.main.env == [], id="null-env"),
    pytest.param({"metadata": {"name": "chat"}, "containers": C, "cloud": {"computing": {"instances": None}}},
                 lambda s: s.cloud.computing.instances is None, id="null-instances"),
    pytest.param({"metadata": {"name": "chat", "disk": "40Gi", "qos": "BestEffort"}, "generate_token": "true",
                  "containers": C}, lambda s: s.name == "chat", id="cloud-fields-kept"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "check"), SPELLINGS)
def test_eas_spellings_parse_and_round_trip(doc: dict[str, Any], check: Any):
    spec = parse_spec(doc)
    assert check(spec)
    assert spec.to_dict() == doc  # given back exactly as written


def test_string_booleans_become_booleans_where_openeas_reads_them():
    doc = {"name": "chat", "containers": C,
           "storage": [{"mount_path": "/mnt/data", "oss": {"path": "oss://b/m/", "readOnly": "false"}}]}  # fmt: skip
    spec = parse_spec(doc)
    assert spec.storage[0].oss is not None and spec.storage[0].oss.readOnly is False


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"name": "a", "metadata": {"name": "b"}, "containers": C},
         "name ('a') and metadata.name ('b') disagree: write one of them"),
        ({"metadata": {"name": "a", "rpc.keepalive": 5, "rpc": {"keepalive": 6}}, "containers": C},
         "metadata.'rpc.keepalive' (5) and metadata.rpc.keepalive (6) disagree"),
        ({"metadata": {"name": "a", "rpc.keepalive": 5, "rpc": 7}, "containers": C},
         "metadata.rpc: must be an object to hold metadata.rpc.keepalive"),
        ({"name": "p", "processor": "pmml", "model_path": "oss://bucket/model.pmml"},
         "processor 'pmml' is not available: OpenEAS runs model servers"),
    ],
    ids=["names-disagree", "dotted-and-nested-disagree", "nested-not-an-object", "builtin-processor"],
)  # fmt: skip
def test_spelling_conflicts_name_both(doc: dict[str, Any], error: str):
    with pytest.raises(SpecError) as exc:
        parse_spec(doc)
    assert any(error in line for line in exc.value.errors), exc.value.errors


def test_fields_for_the_cloud_are_listed_as_accepted_not_used():
    doc = {
        "name": "chat",
        "generate_token": "true",
        "features": {"eas.aliyun.com/extra-ephemeral-storage": "30Gi"},
        "metadata": {"instance": 1, "qos": "BestEffort", "resource": "eas-r-1"},
        "cloud": {"computing": {"instance_type": "ecs.gn6i"}, "networking": {"vpc_id": "vpc-1"}},
        "containers": [{**C[0], "prepare": {"pythonRequirements": ["numpy"]}}],
    }
    # containers[0].prepare is used (pythonRequirements), so it is not listed.
    assert parse_spec(doc).unused_fields() == [
        "cloud.networking", "features", "generate_token", "metadata.qos", "metadata.resource",
    ]  # fmt: skip


def test_validate_command_works_without_a_server(tmp_path: Path):
    f = tmp_path / "svc.json"
    f.write_text(json.dumps({"name": "chat", "metadata": {"qos": "BestEffort"}, "containers": C * 2}))
    r = CliRunner().invoke(app, ["validate", "-f", str(f)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [
        "spec is valid: service chat",
        "accepted, not used by this runtime: metadata.qos",
        "warning: containers[1:]: only containers[0] runs as the replica's server; the other 1 container(s) are "
        "kept in the spec but not started",
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "a", "metadata": {"name": "b"}, "containers": C}))
    r = CliRunner().invoke(app, ["validate", "-f", str(bad)])
    assert r.exit_code == 2
    assert "name ('a') and metadata.name ('b') disagree" in r.output

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
        "warning: containers[1].port: 8000 is also containers[0]'s; the containers of a replica share its "
        "network, so only one of them can listen on it",
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "a", "metadata": {"name": "b"}, "containers": C}))
    r = CliRunner().invoke(app, ["validate", "-f", str(bad)])
    assert r.exit_code == 2
    assert "name ('a') and metadata.name ('b') disagree" in r.output


# Parsing fixes found with the corpus (tests/eas_corpus): real specs refused for reasons that were
# not the user's fault, and refusals that did not say why.
S = "/mnt/src"
ACCEPTED_SPELLINGS = [
    pytest.param({"warm_up_data_path": ""}, lambda s: not s.warm_up_data_path, id="empty-warmup-is-none"),
    pytest.param({"storage": [{"mount_path": S, "oss": {"path": "oss://b/m/"}},
                              {"mount_path": "/mnt/fast", "cache": {"capacity": "20G", "path": S}}]},
                 lambda s: s.storage[1].cache.path == S and s.storage[1].cache.capacity == "20G",
                 id="cache-storage"),
    pytest.param({"storage": [{"mount_path": "/code", "git": {"repo": "https://git.example.com/a.git",
                                                             "branch": "master"}}]},
                 lambda s: s.storage[0].git is not None, id="git-storage"),
    pytest.param({"storage": [{"mount_path": "/m", "oss": {"path": "oss://b/m/"},
                               "properties": {"resource_type": "code"}}]},
                 lambda s: s.unused_fields() == ["storage[0].properties"], id="storage-properties-kept"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "check"), ACCEPTED_SPELLINGS)
def test_real_spellings_found_in_the_corpus_parse_and_round_trip(extra: dict[str, Any], check: Any):
    doc = {"name": "corpus", "containers": C, **extra}
    spec = parse_spec(doc)
    assert check(spec)
    assert spec.to_dict() == doc


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"name": "p", "processor_type": "cpp", "processor_path": "./e.tar.gz", "processor_entry": "libecho.so"},
         "spec: processor_type 'cpp' is not available: OpenEAS runs custom processors written in Python"),
        ({"name": "p", "processor_type": "java", "processor_mainclass": "com.example.P"},
         "spec: processor_type 'java' is not available"),
        ({"name": "p", "processor_type": "go"}, "spec: processor_type: 'go' is not a processor type"),
        ({"name": "p", "processor_type": "python", "processor_entry": "app.py"},
         "spec: processor_path: required for processor_type 'python'"),
        ({"name": "p", "processor_type": "python", "processor_path": "/srv/proc"},
         "spec: processor_entry: required for processor_type 'python'"),
        ({"name": "s", "containers": C, "storage": [{"mount_path": "/d", "image": {"image": "r/x:1", "path": "/p"}}]},
         "storage[0]: image: an `image` mount copies files out of another image"),
        ({"name": "s", "containers": C, "storage": [{"mount_path": "/d", "dataset": {"id": "d-1", "version": "v1"}}]},
         "storage[0]: dataset: a PAI `dataset` is an asset of the cloud workspace: mount the OSS path"),
        ({"name": "s", "containers": C, "storage": [{"mount_path": "/d", "code": {"id": "code-1"}}]},
         "storage[0]: code: a PAI `code` set"),
        ({"name": "s", "containers": C, "storage": [{"mount_path": "/d", "oss": {"path": "oss://b/"}, "git": {"repo": "r"}}]},
         "storage[0]: exactly one of 'oss', 'nfs', 'empty_dir', 'git' or 'cache' is required (found oss, git)"),
        ({"name": "s", "containers": C, "storage": [{"mount_path": "/d", "cache": {"capacity": "2G"}}]},
         "storage[0].cache.path: is required"),
    ],
    ids=["cpp", "java", "unknown-type", "python-no-path", "python-no-entry", "image-mount", "dataset-mount",
         "code-mount", "two-sources-in-one-entry", "cache-without-path"],
)  # fmt: skip
def test_what_cannot_run_says_why_and_what_to_write(doc: dict[str, Any], error: str):
    with pytest.raises(SpecError) as exc:
        parse_spec(doc)
    assert any(line.startswith(error) for line in exc.value.errors), exc.value.errors


PROCESSORS = [
    # (processor fields, the command the synthesized container runs, its mounts)
    pytest.param({"processor_path": "oss://b/proc/", "processor_entry": "./app.py"},
                 "python -m openeas.processor --path /eas/workspace/processor --entry ./app.py --port 8000",
                 {"/eas/workspace/processor": "oss://b/proc/"}, id="directory"),
    pytest.param({"processor_path": "oss://b/p/app.tar.gz", "processor_entry": "app.py", "model_path": "oss://b/m/"},
                 "python -m openeas.processor --path /eas/workspace/processor/app.tar.gz --entry app.py "
                 "--model-path /eas/workspace/model --port 8000",
                 {"/eas/workspace/processor": "oss://b/p/app.tar.gz", "/eas/workspace/model": "oss://b/m/"},
                 id="archive-and-model"),
    pytest.param({"processor_path": "/srv/my proc.zip", "processor_entry": "my app.py"},
                 "python -m openeas.processor --path '/eas/workspace/processor/my proc.zip' --entry 'my app.py' "
                 "--port 8000", {"/eas/workspace/processor": "/srv/my proc.zip"}, id="quoted-for-the-shell"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "command", "mounts"), PROCESSORS)
def test_python_processor_becomes_a_container_and_is_given_back_as_written(
    fields: dict[str, Any], command: str, mounts: dict[str, str]
):
    doc = {"name": "proc", "processor_type": "python", "storage": None, "model_config": {"k": 1}, **fields}
    spec = parse_spec(doc)
    assert spec.python_processor
    assert spec.main.command == command
    assert spec.main.env_dict() == {"OPENEAS_MODEL_CONFIG": '{"k":1}'}
    assert {m.mount_path: m.oss.path for m in spec.storage if m.oss} == mounts
    assert spec.to_dict() == doc  # no containers, storage still null: as written
    assert "processor_path" not in spec.unused_fields()


def test_python_processor_keeps_the_users_own_storage_first():
    own = {"mount_path": "/data", "oss": {"path": "oss://b/d/"}}
    doc = {"name": "proc", "processor_type": "python", "processor_path": "oss://b/p/", "processor_entry": "a.py",
           "storage": [own]}  # fmt: skip
    spec = parse_spec(doc)
    assert [m.mount_path for m in spec.storage] == ["/data", "/eas/workspace/processor"]
    assert spec.to_dict() == doc

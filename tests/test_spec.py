"""Spec parsing: the EAS JSON unchanged, YAML, and one precise error line per problem."""

from __future__ import annotations

import json

import pytest

from openeas.errors import SpecError
from openeas.spec import parse_spec, parse_text

# A service JSON in the shape of the PAI-EAS docs (custom image + OSS mount + command).
EAS_DOC_SPEC = {
    "metadata": {
        "name": "qwen_demo",
        "instance": 2,
        "cpu": 8,
        "memory": 32000,
        "gpu": 1,
        "rpc": {"keepalive": 60000, "max_queue_size": 64},
        "rolling_strategy": {"max_surge": 1, "max_unavailable": 0},
        "eas": {"termination_grace_period": 30},
        "workspace_id": "12345",
    },
    "cloud": {"computing": {"instance_type": "ecs.gn6i-c4g1.xlarge"}},
    "containers": [
        {
            "image": "eas-registry-vpc.cn-hangzhou.cr.aliyuncs.com/pai-eas/vllm:0.8.5",
            "command": "vllm serve /mnt/data/Qwen/Qwen3-0.6B --port 8000",
            "port": 8000,
            "env": [{"name": "VLLM_USE_V1", "value": "1"}],
        }
    ],
    "storage": [
        {"mount_path": "/mnt/data/", "oss": {"path": "oss://examplebucket/models/", "readOnly": True}}
    ],
    "autoscaler": {
        "min": 1,
        "max": 4,
        "scaleStrategies": [{"metricName": "qps", "threshold": 10}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
    },
}


def test_eas_spec_accepted_unchanged():
    spec = parse_spec(EAS_DOC_SPEC)
    assert spec.name == "qwen_demo"
    assert spec.metadata.instance == 2
    assert spec.main.env_dict() == {"VLLM_USE_V1": "1"}
    assert spec.storage[0].oss is not None and spec.storage[0].oss.path == "oss://examplebucket/models/"
    assert spec.autoscaler is not None and spec.autoscaler.scaleStrategies[0].metricName == "qps"
    # unknown EAS fields are kept, so the spec round-trips
    assert spec.to_dict()["metadata"]["workspace_id"] == "12345"


def test_yaml_same_structure():
    import yaml

    spec = parse_spec(parse_text(yaml.safe_dump(EAS_DOC_SPEC)))
    assert spec == parse_spec(json.loads(json.dumps(EAS_DOC_SPEC)))


def _with(path: str, value: object) -> dict:
    data = json.loads(json.dumps(EAS_DOC_SPEC))
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


BAD = [
    ("port range", _with("containers.0.port", 70000), "containers[0].port: must be 1..65535"),
    ("port type", _with("containers.0.port", "http"), "containers[0].port: input should be a valid integer"),
    (
        "no command",
        _with("containers.0.command", KeyError),
        "containers[0]: one of 'command' or 'script' is required",
    ),
    ("no containers", _with("containers", []), "containers: list should have at least 1 item"),
    ("name missing", _with("metadata.name", KeyError), "metadata.name: is required"),
    ("bad name", _with("metadata.name", "Bad Name"), "metadata.name: must start with a lowercase letter"),
    (
        "negative instance",
        _with("metadata.instance", -1),
        "metadata.instance: input should be greater than or equal to 0",
    ),
    (
        "relative mount",
        _with("storage.0.mount_path", "mnt/data"),
        "storage[0].mount_path: must be an absolute path",
    ),
    ("mount over root", _with("storage.0.mount_path", "/"), "storage[0].mount_path: must not be '/'"),
    (
        "mount without source",
        _with("storage.0.oss", KeyError),
        "storage[0]: exactly one of 'oss', 'nfs' or 'empty_dir'",
    ),
    ("autoscaler bounds", _with("autoscaler.min", 9), "autoscaler: min (9) must not exceed max (4)"),
    (
        "keepalive zero",
        _with("metadata.rpc.keepalive", 0),
        "metadata.rpc.keepalive: input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize("data,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_invalid_spec_names_field_and_reason(data, message):
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    assert any(line.startswith(message) for line in err.value.errors), err.value.errors


def test_not_an_object():
    with pytest.raises(SpecError, match="must be a JSON/YAML object"):
        parse_text("[1, 2]")

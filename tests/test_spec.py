"""Spec parsing: the EAS JSON unchanged, YAML, one precise error line per problem, and specs that
round-trip exactly as written (through the model, the YAML reader and the store)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from openeas.errors import SpecError
from openeas.spec import load_spec_file, parse_spec, parse_stored_spec, parse_text
from openeas.store import Store

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
    assert spec.metadata.rpc.keepalive == 60000 and spec.metadata.eas.termination_grace_period == 30


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
        "storage[0]: exactly one of 'oss', 'nfs', 'empty_dir', 'git' or 'cache'",
    ),
    ("autoscaler bounds", _with("autoscaler.min", 9), "autoscaler: min (9) must not exceed max (4)"),
    (
        "keepalive zero",
        _with("metadata.rpc.keepalive", 0),
        "metadata.rpc.keepalive: input should be greater than or equal to 1",
    ),
    (
        "unknown balancer",
        _with("metadata.balancer", "fastest"),
        "metadata.balancer: unknown balancer 'fastest'; known: least-kv, least-request, least-waiting, "
        "power-of-two, prefix-affinity, round-robin, session-affinity",
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


# -- round trip: what the user wrote comes back, nothing more, nothing less -------------------------

# Real-looking EAS service JSON with fields OpenEAS does not know, at every depth: nulls, lists of
# objects, lists with nulls, empty objects, nested unknown blocks inside known ones.
LLM_GPU_SPEC: dict[str, Any] = {
    "metadata": {
        "name": "qwen3_chat",
        "instance": 2,
        "cpu": 16,
        "memory": 64000,
        "gpu": 1,
        "gpu_memory": None,
        "workspace_id": "264771",
        "resource": "eas-r-abc123",
        "resource_burstable": False,
        "enable_webservice": True,
        "rpc": {"keepalive": 600000, "max_queue_size": 128, "worker_threads": 8, "batching": None},
        "rolling_strategy": {"max_surge": 1, "max_unavailable": 0},
        "eas": {
            "termination_grace_period": 30,
            "scheduler": {"spread": {"policy": "host"}},
            "aimaster": None,
        },
        "labels": {"team": "nlp", "cost-center": None},
        "quota_id": None,
    },
    "cloud": {
        "computing": {
            "instance_type": "ecs.gn7i-c16g1.4xlarge",
            "instances": [{"type": "ecs.gn7i-c16g1.4xlarge", "spot_price_limit": 3.6, "capacity": None}],
            "disable_spot_protection_period": False,
        },
        "networking": {"vpc_id": "vpc-1", "vswitch_id": "vsw-1", "security_group_id": "sg-1"},
    },
    "containers": [
        {
            "image": "eas-registry-vpc.cn-hangzhou.cr.aliyuncs.com/pai-eas/vllm:0.8.5.post1",
            "command": "vllm serve /mnt/data/Qwen3-8B --port 8000 --served-model-name qwen3",
            "port": 8000,
            "env": [
                {"name": "VLLM_USE_V1", "value": "1"},
                {"name": "HF_HUB_OFFLINE", "value": "1", "from": None},
            ],
            "health_check": {
                "http_get": {"path": "/health", "port": 8000, "scheme": "HTTP"},
                "initial_delay_seconds": 30,
                "period_seconds": 10,
                "timeout_seconds": 5,
                "failure_threshold": 3,
                "success_threshold": 1,
            },
            "prepare": {
                "pythonRequirements": ["vllm==0.8.5", "transformers"],
                "pythonRequirementsPath": None,
            },
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        },
        {
            "image": "sidecar:latest",
            "script": "exec sleep infinity",
            "port": 9100,
            "env": [],
            "args": [None, "x"],
        },
    ],
    "storage": [
        {
            "mount_path": "/mnt/data/",
            "oss": {"path": "oss://examplebucket/models/", "readOnly": True, "endpoint": None},
        },
        {"mount_path": "/dev/shm", "empty_dir": {"medium": "memory", "size_limit": 20}},
    ],
    "autoscaler": {
        "min": 1,
        "max": 8,
        "scaleStrategies": [{"metricName": "qps", "threshold": 10, "service": None}],
        "behavior": {
            "scaleUp": {"stabilizationWindowSeconds": 0},
            "scaleDown": {"stabilizationWindowSeconds": 300},
            "onZero": {"scaleDownGracePeriodSeconds": 600, "scaleUpActivationReplicas": 1},
        },
    },
    "warm_up_data_path": "oss://examplebucket/warmup/requests.jsonl",
    "features": {
        "eas.aliyun.com/extra-ephemeral-storage": "100Gi",
        "eas.aliyun.com/gpu-driver-version": None,
    },
    "dockerAuth": None,
    "unit_test": [],
    "options": {},
}

WEBUI_SPEC: dict[str, Any] = {
    "metadata": {
        "name": "sd_webui",
        "instance": 1,
        "type": "Async",
        "enable_grpc": None,
        "rpc": {"keepalive": 5000, "rate_limit": 50, "max_body_bytes": 10485760},
    },
    "containers": [
        {
            "image": "eas-registry-vpc.cn-shanghai.cr.aliyuncs.com/pai-eas/stable-diffusion-webui:4.2",
            "script": "./webui.sh --listen --port 8000 --skip-version-check --data-dir /code/data-oss\n",
            "port": 8000,
            "env": {"COMMANDLINE_ARGS": "--api", "GRADIO_SERVER_PORT": "8000"},
            "health_check": {"tcp_socket": {"port": 8000, "host": None}, "startup_timeout_seconds": 900},
        }
    ],
    "storage": [
        {"mount_path": "/code/data-oss", "oss": {"path": "oss://bucket/sd/", "readOnly": False}},
        {
            "mount_path": "/code/nfs",
            "nfs": {"server": "abc.cn-shanghai.nas.aliyuncs.com", "path": "/", "readOnly": None},
        },
    ],
    "queue": {"sink": {"memory_ratio": 0.9, "max_length": None}, "source": {"auto_evict": True}},
    "token": "webui-token-123456",
    "runtime": "process",
}

MINIMAL_SPEC: dict[str, Any] = {
    "metadata": {"name": "tiny", "cpu": 0.5},
    "containers": [{"command": "python -m http.server 8000", "port": 8000}],
}

ROUND_TRIP = [
    pytest.param(LLM_GPU_SPEC, id="llm-gpu-vllm-unknown-fields-everywhere"),
    pytest.param(WEBUI_SPEC, id="async-webui-script-env-mapping-nfs-token"),
    pytest.param(MINIMAL_SPEC, id="minimal-no-defaults-added"),
    pytest.param(EAS_DOC_SPEC, id="eas-docs-example"),
]


def _exactly(data: dict[str, Any]) -> str:
    """Canonical JSON text: key order aside, equal texts mean equal specs (30 is not 30.0)."""
    return json.dumps(data, sort_keys=True)


@pytest.mark.parametrize("written", ROUND_TRIP)
def test_spec_round_trips_as_written(written: dict[str, Any]) -> None:
    original = copy.deepcopy(written)
    spec = parse_spec(written)
    assert _exactly(spec.to_dict()) == _exactly(original)
    assert written == original  # parsing left the caller's dict alone
    assert parse_spec(spec.to_dict()) == spec  # and what comes back parses to the same spec


@pytest.mark.parametrize("written", ROUND_TRIP)
def test_spec_round_trips_through_yaml(written: dict[str, Any]) -> None:
    assert _exactly(parse_spec(parse_text(yaml.safe_dump(written))).to_dict()) == _exactly(written)


@pytest.mark.parametrize("written", ROUND_TRIP)
def test_stored_version_is_the_spec_as_written_without_its_token(
    tmp_path: Path, written: dict[str, Any]
) -> None:
    store = Store(tmp_path)
    name = written["metadata"]["name"]
    store.create_service(parse_spec(written))
    store.rollback(name, 1)
    expected = {k: v for k, v in written.items() if k != "token"}  # the token lives encrypted on the service
    for version in (1, 2):  # the rollback's version is version 1's spec again, as written
        assert _exactly(store.version_spec(name, version).to_dict()) == _exactly(expected)


@pytest.mark.parametrize(
    ("written", "field", "value"),
    [
        pytest.param({"keepalive": "60000"}, "keepalive", 60000, id="string-number-becomes-int"),
        pytest.param({"max_body_bytes": 1024.0}, "max_body_bytes", 1024, id="integral-float-becomes-int"),
    ],
)
def test_known_fields_come_back_validated(written: dict[str, Any], field: str, value: object) -> None:
    # What the code acts on is the validated value, so what is stored (and routed on) is too.
    data = {**MINIMAL_SPEC, "metadata": {"name": "tiny", "rpc": written}}
    assert parse_spec(data).to_dict()["metadata"]["rpc"] == {field: value}


# -- hardening: names, environments and nesting that could never run (issue 6, section 4) --------

NAME_MSG = "metadata.name: must start with a lowercase letter"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a\n", id="trailing-newline"),
        pytest.param("a\r\n", id="trailing-crlf"),
        pytest.param("\na", id="leading-newline"),
        pytest.param("a\x00", id="nul"),
        pytest.param("a/b", id="slash"),
        pytest.param("..", id="dot-dot"),
        pytest.param("a..b", id="inner-dot-dot"),
        pytest.param("a" * 64, id="too-long-64"),
        pytest.param("", id="empty"),
        pytest.param("a b", id="space"),
    ],
)
def test_service_name_must_match_whole(name: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(_with("metadata.name", name))
    assert any(line.startswith(NAME_MSG) for line in e.value.errors)


@pytest.mark.parametrize("name", [pytest.param("a", id="one-char"), pytest.param("a" * 63, id="longest-63")])
def test_service_name_edges_accepted(name: str) -> None:
    assert parse_spec(_with("metadata.name", name)).name == name


ARG_MAX = 128 * 1024


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param(
            [{"name": "A", "value": "x\x00y"}],
            "containers[0].env[0].value: must not contain a NUL",
            id="nul-in-value",
        ),
        pytest.param(
            {"A=B": "1"},
            "containers[0].env[0].name: 'A=B' is not a valid environment variable name",
            id="eq-in-name",
        ),
        pytest.param(
            [{"name": "1A", "value": ""}],
            "containers[0].env[0].name: '1A' is not a valid",
            id="leading-digit",
        ),
        pytest.param(
            [{"name": "", "value": "1"}], "containers[0].env[0].name: '' is not a valid", id="empty-name"
        ),
        pytest.param(
            [{"name": "A\n", "value": "1"}],
            "containers[0].env[0].name: 'A\\n' is not a valid",
            id="newline-in-name",
        ),
        pytest.param(
            [{"name": "A\x00", "value": "1"}],
            "containers[0].env[0].name: 'A\\x00' is not a valid",
            id="nul-in-name",
        ),
        pytest.param(
            [{"name": "BIG", "value": "x" * (10 * 1024 * 1024)}],
            "containers[0].env[0]: the environment string BIG=... is 10485765 bytes; Linux allows at most 131072",
            id="10MB-value",
        ),
        pytest.param(
            [{"name": "B", "value": "x" * (ARG_MAX - 2)}],  # B=...\0 is one byte over
            "containers[0].env[0]: the environment string B=... is 131073 bytes",
            id="one-over-128KiB",
        ),
        pytest.param(
            [{"name": f"V{i}", "value": "x" * 100_000} for i in range(11)],
            "containers[0]: env: 1100045 bytes in all; at most 1048576 bytes (1 MiB) together",
            id="over-1MiB-together",
        ),
    ],
)
def test_env_that_could_never_start_is_refused(env: Any, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(_with("containers.0.env", env))
    assert any(line.startswith(message) for line in e.value.errors), e.value.errors


@pytest.mark.parametrize(
    "env",
    [
        pytest.param([{"name": "_A9_b", "value": "a=b; c\nd"}], id="portable-name-any-value"),
        pytest.param([{"name": "B", "value": "x" * (ARG_MAX - 3)}], id="exactly-128KiB-with-NUL"),
    ],
)
def test_env_within_limits_accepted(env: Any) -> None:
    assert parse_spec(_with("containers.0.env", env)).main.env[0].value == env[0]["value"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        pytest.param(
            "containers.0.command", "a\x00b", "containers[0]: command: must not contain a NUL", id="nul-cmd"
        ),
        pytest.param(
            "containers.0.command", "x" * ARG_MAX, "containers[0]: command: is 131072 bytes", id="big-cmd"
        ),
        pytest.param(
            "storage.0.mount_path",
            "/mnt/data\n",
            "storage[0].mount_path: must not contain control",
            id="nl-mount",
        ),
        pytest.param(
            "warm_up_data_path", "/w.jsonl\n", "warm_up_data_path: must be a path without control", id="nl-warmup"
        ),
        pytest.param(
            "warm_up_data_path", "/w\x00", "warm_up_data_path: must be a path without control", id="nul-warmup"
        ),
    ],
)
def test_other_strings_that_could_never_run(field: str, value: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(_with(field, value))
    assert any(line.startswith(message) for line in e.value.errors), e.value.errors


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        pytest.param(json.dumps({**EAS_DOC_SPEC, "x": _nested(63)}), False, id="json-64-levels-ok"),
        pytest.param(json.dumps({**EAS_DOC_SPEC, "x": _nested(64)}), True, id="json-65-levels"),
        pytest.param('{"x": ' + "[" * 1000 + "]" * 1000 + "}", True, id="json-1000-deep"),
        pytest.param('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", True, id="json-100k-deep"),
        pytest.param("[" * 100_000, True, id="json-unclosed-100k"),
        pytest.param("x: " + "[" * 5000 + "]" * 5000, True, id="yaml-5000-deep"),
        pytest.param("x: &a [*a]", True, id="yaml-self-alias"),
    ],
)
def test_deep_nesting_is_a_spec_error_not_a_recursion_error(text: str, deep: bool) -> None:
    if not deep:
        assert parse_spec(parse_text(text)).name == "qwen_demo"
        return
    with pytest.raises(SpecError) as e:
        parse_spec(parse_text(text))
    assert e.value.errors == ["spec: nested deeper than 64 levels"]


def test_deep_mapping_given_to_parse_spec() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec({**EAS_DOC_SPEC, "x": _nested(900)})
    assert e.value.errors == ["spec: nested deeper than 64 levels"]


def test_yaml_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(SpecError) as e:
        parse_text("\n".join(lines))
    assert e.value.errors == ["spec: more than 100000 values"]


def _spec_fifo(tmp: Path) -> Path:
    os.mkfifo(tmp / "spec.fifo")
    return tmp / "spec.fifo"


def _spec_huge(tmp: Path) -> Path:
    path = tmp / "huge.json"
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda _t: Path("/dev/zero"), "spec: /dev/zero is not a regular file", id="dev-zero"),
        pytest.param(_spec_fifo, "spec.fifo is not a regular file", id="fifo"),
        pytest.param(lambda t: t, "is not a regular file", id="directory"),
        pytest.param(_spec_huge, "huge.json is larger than 16777216 bytes (16 MiB)", id="over-16MiB"),
    ],
)
def test_spec_file_that_is_not_a_small_regular_file(tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(SpecError) as e:
        load_spec_file(make(tmp_path))
    assert message in e.value.errors[0]


STORED_BY_AN_OLDER_RELEASE = [
    pytest.param(_with("metadata.name", "a\n"), id="name-trailing-newline"),
    pytest.param(_with("containers.0.env", [{"name": "A=B", "value": "x\x00"}]), id="env-eq-and-nul"),
    pytest.param(_with("containers.0.env", {"BIG": "x" * (200 * 1024)}), id="env-200KiB"),
    pytest.param(_with("storage.0.mount_path", "/mnt/data\n"), id="mount-newline"),
]


@pytest.mark.parametrize("data", STORED_BY_AN_OLDER_RELEASE)
def test_a_version_stored_before_the_limits_still_loads(tmp_path: Path, data: dict[str, Any]) -> None:
    # refused as a new spec ...
    with pytest.raises(SpecError):
        parse_spec(data)
    # ... but a data directory holding it must not stop every reconcile pass or `describe`
    spec = parse_stored_spec(data)
    store = Store(tmp_path)
    store.create_service(spec)
    assert store.version_spec(spec.name, 1).to_dict() == {k: v for k, v in data.items() if k != "token"}

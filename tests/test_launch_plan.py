"""What ``deploy --dry-run`` shows (pure: openeas.api.launch_plan), specs with several sources at
one mount_path (EAS's async SD WebUI example: the last entry is mounted), and every spec error
reported at once."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from openeas.api.launch_plan import launch_plan, mount_warnings, normalized_spec
from openeas.errors import SpecError
from openeas.runtime.container_args import build_container_launch
from openeas.spec import parse_spec
from openeas.storage import NodeCache, prepare_mounts

CORPUS = Path(__file__).parent / "eas_corpus"


def corpus(name: str) -> dict[str, Any]:
    return json.loads((CORPUS / f"{name}.json").read_text())


def sd_async_with_nas(nas_dir: str = "/exports/sd") -> dict[str, Any]:
    """The async SD WebUI example as EAS's docs write it: OSS and NAS at the same mount_path."""
    doc = corpus("c08_async_queue")
    path = doc["storage"][0]["mount_path"]
    doc["storage"].append({"mount_path": path, "nfs": {"server": "nas.example:/", "path": nas_dir}})
    return doc


def test_oss_and_nas_at_one_mount_path_deploy_and_the_last_is_mounted(tmp_path: Path):
    spec = parse_spec(sd_async_with_nas())  # no longer refused as "overlaps"
    assert spec.shadowed_mounts() == {0: 1}
    (row0, row1) = launch_plan(spec, "container", "podman")["mounts"]
    assert row0["mode"].startswith("not mounted: storage[1] has the same mount_path")
    assert row1["mode"] == "rw" and row1["source"].startswith("nfs ")
    (warning,) = mount_warnings(spec)
    assert "storage[1] (the later one) is mounted there, storage[0] is not fetched or mounted" in warning
    target = spec.storage[0].mount_path.rstrip("/")
    launch = build_container_launch(
        spec, replica_id="r", data_dir="/d", host_port=1, mounts={target: "/nas"}, workdir="/w"
    )
    assert [(v.source, v.target) for v in launch.volumes] == [("/nas", target)]


def test_the_shadowed_entry_is_not_fetched(tmp_path: Path):
    nas = tmp_path / "nas"
    nas.mkdir()
    doc = sd_async_with_nas(str(nas))
    doc["storage"][0]["oss"]["path"] = "oss://bucket-that-does-not-exist/never-fetched/"
    plan = prepare_mounts(parse_spec(doc), NodeCache(tmp_path / "cache"), workdir=tmp_path / "w")
    assert [(f.mount_path, f.local_dir) for f in plan.fetches] == [(doc["storage"][0]["mount_path"], str(nas))]


@pytest.mark.parametrize(
    ("paths", "error"),
    [
        pytest.param(["/mnt/data/", "/mnt/data"], None, id="same-path-last-wins"),
        pytest.param(["/mnt/data", "/mnt/data/sub"], "storage[1].mount_path is inside storage[0].mount_path",
                     id="nested-refused"),
        pytest.param(["/mnt/a", "/mnt/ab"], None, id="prefix-not-a-parent"),
    ],
)  # fmt: skip
def test_mount_paths(paths: list[str], error: str | None):
    doc = corpus("c01_docs_json_minimal")
    doc["storage"] = [{"mount_path": p, "empty_dir": {}} for p in paths]
    if error is None:
        parse_spec(doc)
        return
    with pytest.raises(SpecError) as exc:
        parse_spec(doc)
    assert any(error in e for e in exc.value.errors), exc.value.errors


def spec_with_env() -> Any:
    doc = corpus("c04_rag_front_proxy")
    doc["containers"][0]["env"] = [{"name": "API_KEY", "value": "s3cret"}, {"name": "MODE", "value": "fast"}]
    return parse_spec(doc)


@pytest.mark.parametrize("engine", ["podman", "docker"])
def test_dry_run_shows_each_containers_engine_command_with_secrets_masked(engine: str):
    spec = spec_with_env()
    plan = launch_plan(spec, "container", engine)
    rows = plan["containers"]
    assert [r["container"] for r in rows] == list(range(len(spec.containers)))
    main = rows[0]
    assert main["env"]["API_KEY"] == "***" and main["env"]["MODE"] == "fast"
    assert main["engine_command"][:4] == [engine, "run", "--detach", "--init"]
    assert f"127.0.0.1:<host port>:{spec.main.port}" in main["engine_command"]
    assert "s3cret" not in json.dumps(plan)
    # what runs inside the image: the shell with the spec's text, not rewritten
    assert main["runs"][:2] == ["/bin/sh", "-c"] and (spec.main.command or spec.main.script or "") in main["runs"][2]
    assert all("--network" in r["engine_command"] for r in rows[1:])  # the others join the main one


def test_dry_run_of_a_process_shows_the_rewritten_command():
    doc = corpus("c01_docs_json_minimal")
    doc["containers"][0].pop("script", None)
    doc["containers"][0]["command"] = "python serve.py --port 8000 --model /mnt/data/m"
    doc["containers"][0]["port"] = 8000
    doc["storage"] = [{"mount_path": "/mnt/data", "oss": {"path": "oss://b/m/"}}]
    (row,) = launch_plan(parse_spec(doc), "process")["containers"]
    assert row["runs"][-1] == "exec python serve.py --port <replica port> --model <replica dir>/mnt/data/m"
    assert row["env"]["PORT"] == "<replica port>" and "engine_command" not in row


def test_normalized_spec_is_one_spelling_with_secrets_masked():
    doc = corpus("c10_sdk_group_dotted_rpc")
    doc["containers"][0]["env"] = [{"name": "HF_TOKEN", "value": "hf_x"}]
    out = normalized_spec(parse_spec(doc))
    assert out["metadata"]["name"] and "name" not in out  # the top-level name, moved
    assert not any("." in k for k in out["metadata"])  # dotted keys nested (rpc.keepalive → rpc)
    assert out["dockerAuth"] == "***" and out["containers"][0]["env"] == [{"name": "HF_TOKEN", "value": "***"}]


def with_changes(name: str, **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(corpus(name))
    for path, value in changes.items():
        cur = doc
        keys = path.split("__")
        for k in keys[:-1]:
            cur = cur[int(k)] if k.isdigit() else cur[k]
        cur[keys[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(with_changes("c02_docs_json_full", dockerAuth="<masked>"),
                     ["dockerAuth: must be the base64 encoding", "processor: 'tensorflow_cpu_1.12' is an EAS built-in"],
                     id="full-reference-masked-auth-also-hears-its-processor-is-built-in"),
        pytest.param(with_changes("p03_easyrec_builtin", dockerAuth="<masked>", metadata__instance=-1),
                     ["spec: processor 'easyrec-1.5' is not available", "metadata.instance:", "dockerAuth:"],
                     id="built-in-processor-and-field-errors"),
        pytest.param(with_changes("c01_docs_json_minimal", containers__0__port=0, metadata__instance=-1),
                     ["containers[0].port: must be 1..65535", "metadata.instance:"], id="several-field-errors"),
    ],
)  # fmt: skip
def test_every_error_at_once(doc: dict[str, Any], expected: list[str]):
    with pytest.raises(SpecError) as exc:
        parse_spec(doc)
    errors = exc.value.errors
    assert len(errors) == len(expected), errors
    for want in expected:
        assert any(e.startswith(want) for e in errors), (want, errors)

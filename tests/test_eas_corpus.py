"""The EAS corpus (tests/eas_corpus, sources in SOURCES.md): real service specs from public docs
and repositories. Every container spec and every Python-processor spec parses, round-trips
exactly and validates (listing what it sets that OpenEAS keeps but does not use); every other
processor spec gets its one precise message."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from typer.testing import CliRunner

from openeas.cli.main import app
from openeas.errors import SpecError
from openeas.sdk import ApiError
from openeas.spec import parse_spec
from tests.harness import Server, new_server, stop_and_reap, wait_for

CORPUS_DIR = Path(__file__).parent / "eas_corpus"
FILES = sorted(CORPUS_DIR.glob("*.json"))
CORPUS_NAS = "example-nas.example-region.nas.example.com"
RUNS = [f for f in FILES if f.name.startswith("c") or f.name in ("p09_python_tutorial.json", "p10_python_sdk_zip.json")]


def load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _exactly(data: Any) -> str:
    """Canonical JSON text: key order aside, equal texts mean equal specs (30 is not 30.0)."""
    return json.dumps(data, sort_keys=True)


def test_the_corpus_has_fifteen_specs_or_more_each_with_its_source():
    sources = (CORPUS_DIR / "SOURCES.md").read_text()
    assert len(FILES) >= 15
    missing = [f.name for f in FILES if f"`{f.name}`" not in sources]
    assert missing == []


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_spec_parses_and_round_trips_exactly(path: Path):
    written = load(path)
    spec = parse_spec(written)
    assert _exactly(spec.to_dict()) == _exactly(written)  # nothing dropped, nothing added
    again = parse_spec(spec.to_dict())  # what the store keeps parses to the same spec
    assert _exactly(again.to_dict()) == _exactly(written)
    assert again.main.command == spec.main.command


# What each spec sets that OpenEAS keeps without acting on it (a subset: the list is longer where
# a spec is long; `unused_fields` itself is checked exactly in test_spec_eas.py).
UNUSED = {
    "c01_docs_json_minimal": set(),
    # (its autoscaler.strategies and containers[0].prepare are used: the autoscaler, pythonRequirements)
    "c02_docs_json_full": {"cloud.networking", "confidential", "features", "networking", "sinker", "unit",
                           "processor", "metadata.scheduling", "metadata.shm_size",
                           "metadata.rpc.worker_threads", "metadata.resource"},
    "c03_mount_storage_kinds": {"storage[0].oss.endpoint"},
    "c04_rag_front_proxy": {"labels", "cloud.networking", "metadata.enable_webservice"},
    "c05_llm_dedicated_gateway": {"networking", "cloud.networking", "metadata.workspace_id"},
    "c06_health_checks": set(),
    "c07_sd_webui_memory_cache": set(),
    # the queue block is used (issue 10) except the resources EAS gives the queue itself
    "c08_async_queue": {"queue.cpu", "queue.memory", "metadata.rpc.worker_threads"},
    "c09_prepare_requirements_path": set(),
    "c10_sdk_group_dotted_rpc": {"metadata.release", "metadata.rpc.batching"},  # metadata.group is used (issue 9)
    "p09_python_tutorial": {"metadata.region", "metadata.resource"},
    "p10_python_sdk_zip": {"oss_endpoint"},
}  # fmt: skip


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_validate_lists_what_is_kept_but_not_used(path: Path):
    spec = parse_spec(load(path))
    unused = spec.unused_fields()
    assert UNUSED[path.stem] <= set(unused)
    if spec.python_processor:  # its own fields are used: it runs
        assert not {"processor_type", "processor_path", "processor_entry", "model_path"} & set(unused)
    else:  # a container spec's processor fields (c02 writes them empty) are kept, not used
        assert {"processor_type", "model_path"} & set(unused) == {"processor_type", "model_path"} & set(load(path))
    r = CliRunner().invoke(app, ["validate", "-f", str(path)])
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == f"spec is valid: service {spec.name}"
    if unused:
        assert lines[1] == f"accepted, not used by this runtime: {', '.join(unused)}"


BUILTIN = "is not available: OpenEAS runs model servers, not EAS's built-in processors"
COMPILED = "is not available: OpenEAS runs custom processors written in Python (processor_type 'python'), not C++ ones"
REFUSED = {
    "p01_cpp_echo": f"processor_type 'cpp' {COMPILED}",
    "p02_cpp_terraform_workspace": f"processor_type 'cpp' {COMPILED}",
    "p03_easyrec_builtin": f"processor 'easyrec-1.5' {BUILTIN}",
    "p04_easyrec_custom_cpp": f"processor_type 'cpp' {COMPILED}",
    "p05_torcheasyrec": f"processor 'easyrec-torch-2.4' {BUILTIN}",
    "p06_triton": f"processor 'triton' {BUILTIN}",
    "p07_tensorflow_savedmodel": f"processor 'tensorflow_cpu_1.14' {BUILTIN}",
    "p08_pmml_mount_storage": f"processor 'pmml' {BUILTIN}",
}
# Besides the processor, the other real problems of the spec are reported with it, all at once.
ALSO = {"p08_pmml_mount_storage": ["storage[2]: image: "]}


@pytest.mark.parametrize("path", [f for f in FILES if f not in RUNS], ids=lambda p: p.stem)
def test_processor_that_cannot_run_gets_one_precise_message(path: Path):
    with pytest.raises(SpecError) as exc:
        parse_spec(load(path))
    also = ALSO.get(path.stem, [])
    # one reason for the processor, not a cascade of field errors about missing containers
    assert len(exc.value.errors) == 1 + len(also), exc.value.errors
    for want, got in zip(also, exc.value.errors[1:], strict=True):
        assert got.startswith(want), exc.value.errors
    assert exc.value.errors[0].startswith(f"spec: {REFUSED[path.stem]}"), exc.value.errors
    assert "deploy a container that serves the model instead" in exc.value.errors[0]
    r = CliRunner().invoke(app, ["validate", "-f", str(path)])
    assert r.exit_code == 2
    assert REFUSED[path.stem] in r.output


# --- deploying the corpus ------------------------------------------------------------------
# Every container spec deploys on a real server unchanged but for its containers' commands: the
# images cannot run here, so each `command` (or `script`) becomes the built-in test server on the
# container's own port. The server has no container engine (OPENEAS_CONTAINER_ENGINE=none), so
# `replica_runtime: auto` runs the commands on this host. The Python processors run as written,
# with a processor written the EAS way placed at their processor_path.

TUTORIAL_PROCESSOR = """\
# -*- coding: utf-8 -*-
import allspark


class MyProcessor(allspark.BaseProcessor):
    def initialize(self):
        self.model = lambda x, y: float(len(x) + len(y))

    def pre_proccess(self, data):
        x, y = data.split(b' ')
        return x, y

    def process(self, data):
        x, y = self.pre_proccess(data)
        return self.model(x, y), 0


if __name__ == '__main__':
    runner = MyProcessor(worker_threads=10)
    runner.run()
"""
SDK_PROCESSOR = """\
import os
import allspark


class CustomPythonProcessor(allspark.BaseProcessor):
    def __init__(self, *args, **kwargs):
        super(CustomPythonProcessor, self).__init__(*args, **kwargs)
        self.model = None

    def initialize(self):
        self.model = sorted(os.listdir(self.get_model_path()))

    def process(self, data):
        return ",".join(self.model).encode() + b"|" + data, 200


if __name__ == "__main__":
    CustomPythonProcessor(worker_processes=2, endpoint="0.0.0.0:8000").run()
"""
PROCESSOR_CODE = {
    "p09_python_tutorial": ("oss://example-bucket/processors/tutorial/", {"app.py": TUTORIAL_PROCESSOR}),
    "p10_python_sdk_zip": ("oss://example-bucket/processors/model.ak.zip", {"main.py": SDK_PROCESSOR}),
}
# What one request through the gateway gets: (method, sub path, body) → (status, body start).
PROCESSOR_CALL = {
    "p09_python_tutorial": (b"abc de", 200, b"5.0"),
    "p10_python_sdk_zip": (b"hello", 200, b"model.xml|hello"),
}


# pythonRequirements pinned for the image's own, older Python (c02: numpy==1.16.4 has no build for
# this Python 3.11): replaced, like the image's command, by what runs here; the unedited list is
# checked to fail with pip's reason (test_unrunnable_requirements_fail_with_pips_reason).
IMAGE_BOUND_REQUIREMENTS = {"c02_docs_json_full"}


def with_test_server(spec: dict[str, Any], stem: str = "") -> dict[str, Any]:
    """The spec with each container's command (or script) replaced by the test server on its port
    (and requirements bound to the image's Python emptied, see IMAGE_BOUND_REQUIREMENTS)."""
    out = json.loads(json.dumps(spec))
    for c in out.get("containers") or []:
        key = "script" if "script" in c else "command"
        c[key] = f"python -m openeas.testserver --host 127.0.0.1 --port {c.get('port', 8000)}"
        if stem in IMAGE_BOUND_REQUIREMENTS and isinstance(c.get("prepare"), dict):
            c["prepare"]["pythonRequirements"] = []
    return out


def stock_object_storage(oss_root: Path, spec: dict[str, Any], stem: str) -> None:
    """Put something at every oss:// path the spec reads (the server's oss root stands in for OSS)."""
    urls = [m["oss"]["path"] for m in spec.get("storage") or [] if "oss" in m]
    urls += [spec[k] for k in ("model_path",) if str(spec.get(k, "")).startswith("oss://")]
    for url in urls:
        local = oss_root / url[len("oss://") :]
        if Path(url).suffix and not url.endswith("/"):  # a file: model.xml, warmup.bin...
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("model")
        else:
            local.mkdir(parents=True, exist_ok=True)
            (local / "README").write_text("corpus test data")
            (local / "requirements.txt").write_text("# nothing to install\n")
    if stem in PROCESSOR_CODE:
        url, files = PROCESSOR_CODE[stem]
        local = oss_root / url[len("oss://") :]
        if url.endswith(".zip"):
            local.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(local, "w") as z:
                for name, text in files.items():
                    z.writestr(name, text)
        else:
            for name, text in files.items():
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                (local / name).write_text(text)


@pytest.fixture(scope="module")
def engine_less_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = new_server(tmp_path_factory.mktemp("corpus") / "data")
    srv.extra_env = {"OPENEAS_CONTAINER_ENGINE": "none"}
    # The corpus asks for a cloud node's resources (up to 16 cores, 60000 MB a replica): this one offers
    # them; and the corpus's NAS export ({"server": ..., "path": "/"}), mounted on this node as the operator would.
    nas = tmp_path_factory.mktemp("nas")
    srv.extra_args = ["--node-cpu", "64", "--node-memory", "262144", "--nfs-export", f"{CORPUS_NAS}:/={nas}"]
    srv.start()
    yield srv
    stop_and_reap(srv)


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_spec_deploys_and_serves_through_the_gateway(engine_less_server: Server, path: Path):
    srv = engine_less_server
    written = load(path)
    spec = with_test_server(written, path.stem)
    stock_object_storage(srv.data_dir / "oss", written, path.stem)
    name = parse_spec(spec).name
    c = srv.client
    c.deploy(spec)
    # metadata.instance replicas, or what its autoscaler's bounds make of it (c02: min 2)
    detail = c.wait_ready(name, None, timeout_s=120)
    replicas = detail["desired_replicas"]
    assert replicas >= 1 and [r["runtime"] for r in detail["replicas"]] == ["process"] * replicas
    info = c.call_info(name)
    auth = {"Authorization": info["token"]}
    if path.stem in PROCESSOR_CALL:
        body, status, start = PROCESSOR_CALL[path.stem]
        r = requests.post(info["endpoint"], data=body, headers=auth, timeout=30)
        assert (r.status_code, r.content[: len(start)]) == (status, start), r.text
    elif (parse_spec(spec).metadata.type or "").lower() == "async":  # queued: a request id, then its result
        r = requests.post(info["endpoint"], data=b"{}", headers=auth, timeout=30)
        rid = r.headers["X-Eas-Queueservice-Request-Id"]
        sink = requests.get(info["endpoint"] + "/sink", params={"requestId": rid, "_timeout_": "30s"},
                            headers=auth, timeout=40)  # fmt: skip
        assert sink.status_code == 200, sink.text  # the test server answered through the queue
    else:
        r = requests.get(info["endpoint"] + "/health", headers=auth, timeout=30)
        assert r.status_code == 200, r.text  # the test server answered through the gateway
    shown = json.loads(json.dumps({k: v for k, v in spec.items() if k != "token"}))  # the token is kept apart
    if "dockerAuth" in shown:
        shown["dockerAuth"] = "***"  # never returned
    for box in shown.get("containers") or []:  # nor env values (issue 18 §3)
        env = box.get("env")
        if isinstance(env, dict):
            box["env"] = dict.fromkeys(env, "***")
        elif isinstance(env, list):
            box["env"] = [{**e, "value": "***"} if "value" in e else e for e in env]
    assert c.describe(name)["spec"] == shown  # as deployed, in the user's spelling
    c.delete(name, force=True)  # it may carry a group's traffic (metadata.group): the 48-hour rule


@pytest.mark.slow
@pytest.mark.parametrize("path", [f for f in FILES if f not in RUNS], ids=lambda p: p.stem)
def test_processor_that_cannot_run_is_refused_by_the_server_with_its_message(engine_less_server: Server, path: Path):
    with pytest.raises(ApiError) as exc:
        engine_less_server.client.deploy(load(path))
    assert exc.value.status == 400
    assert REFUSED[path.stem] in str(exc.value)


@pytest.mark.slow
def test_unrunnable_requirements_fail_with_pips_reason(engine_less_server: Server):
    """c02's requirements as written (for the image's older Python) fail clearly here, not silently."""
    path = next(f for f in FILES if f.stem in IMAGE_BOUND_REQUIREMENTS)
    written = load(path)
    spec = json.loads(json.dumps(written))
    for c in spec["containers"]:
        c["command"] = f"python -m openeas.testserver --host 127.0.0.1 --port {c.get('port', 8000)}"
    stock_object_storage(engine_less_server.data_dir / "oss", written, path.stem)
    for where in (spec, spec.get("metadata") or {}):  # the name, in whichever spelling c02 uses
        if "name" in where:
            where["name"] = "c02_requirements_as_written"
    c = engine_less_server.client
    c.deploy(spec)

    def failed() -> dict[str, Any] | None:
        reps = c.describe("c02_requirements_as_written")["replicas"]
        return next((r for r in reps if r["phase"] == "Failed" and r["message"]), None)

    rep = wait_for(failed, 300, what="the replica Failed with pip's reason")
    assert "pip install failed" in rep["message"], rep["message"]
    assert "PrepareFailed" in [e["reason"] for e in c.events("c02_requirements_as_written", limit=100)]
    c.delete("c02_requirements_as_written")

"""The EAS corpus (tests/eas_corpus, sources in SOURCES.md): real service specs from public docs
and repositories. Every container spec and every Python-processor spec parses, round-trips
exactly and validates (listing what it sets that OpenEAS keeps but does not use); every other
processor spec gets its one precise message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from openeas.cli.main import app
from openeas.errors import SpecError
from openeas.spec import parse_spec

CORPUS_DIR = Path(__file__).parent / "eas_corpus"
FILES = sorted(CORPUS_DIR.glob("*.json"))
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
    "c02_docs_json_full": {"cloud.networking", "confidential", "features", "networking", "sinker", "unit",
                           "processor", "autoscaler.strategies", "metadata.scheduling", "metadata.shm_size",
                           "metadata.rpc.worker_threads", "metadata.resource", "containers[0].prepare"},
    "c03_mount_storage_kinds": {"storage[0].oss.endpoint"},
    "c04_rag_front_proxy": {"labels", "cloud.networking", "metadata.enable_webservice"},
    "c05_llm_dedicated_gateway": {"networking", "cloud.networking", "metadata.workspace_id"},
    "c06_health_checks": set(),
    "c07_sd_webui_memory_cache": set(),
    "c08_async_queue": {"queue", "metadata.rpc.worker_threads"},
    "c09_prepare_requirements_path": set(),
    "c10_sdk_group_dotted_rpc": {"metadata.group", "metadata.release", "metadata.rpc.batching"},
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


@pytest.mark.parametrize("path", [f for f in FILES if f not in RUNS], ids=lambda p: p.stem)
def test_processor_that_cannot_run_gets_one_precise_message(path: Path):
    with pytest.raises(SpecError) as exc:
        parse_spec(load(path))
    assert len(exc.value.errors) == 1  # one reason, not a cascade of field errors
    assert exc.value.errors[0].startswith(f"spec: {REFUSED[path.stem]}"), exc.value.errors
    assert "deploy a container that serves the model instead" in exc.value.errors[0]
    r = CliRunner().invoke(app, ["validate", "-f", str(path)])
    assert r.exit_code == 2
    assert REFUSED[path.stem] in r.output

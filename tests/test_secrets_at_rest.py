"""Secrets at rest (issue 18 §3): env values and dockerAuth sealed in the store, masked by the API.

A real server: the secret is deployed, the replica gets it in its environment, and neither the
database, its WAL, the server's log nor any API answer (describe, dry-run, an update, a rollback)
holds it in clear.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openeas.spec import parse_spec
from openeas.spec.secrets import masked
from openeas.store import Store
from openeas.store.spec_secrets import SEALED, seal, seal_plain, unseal
from openeas.tokens import TokenCipher
from tests.harness import Server, new_server, read_proc, service_spec, stop_and_reap, wait_for

SECRET = "s3cr3t-9f8e7d6c5b4a"
AUTH = base64.b64encode(f"robot:{SECRET}-pw".encode()).decode()

DOCS = [
    pytest.param({"containers": [{"command": "x", "env": [{"name": "K", "value": SECRET}]}]},
                 {"containers": [{"command": "x", "env": [{"name": "K", "value": "***"}]}]}, id="env-list"),
    pytest.param({"containers": [{"command": "x", "env": {"K": SECRET, "N": ""}}, {"command": "y", "env": {"J": "v"}}]},
                 {"containers": [{"command": "x", "env": {"K": "***", "N": "***"}}, {"command": "y", "env": {"J": "***"}}]},
                 id="env-mapping-two-containers"),
    pytest.param({"containers": [{"command": "x"}], "dockerAuth": AUTH},
                 {"containers": [{"command": "x"}], "dockerAuth": "***"}, id="docker-auth"),
    pytest.param({"containers": [{"command": "x", "env": [{"name": "K", "value": SEALED + "looks sealed"}]}]},
                 {"containers": [{"command": "x", "env": [{"name": "K", "value": "***"}]}]},
                 id="value-that-looks-sealed"),
    pytest.param({"processor_type": "python", "processor_path": "oss://b/p/"},
                 {"processor_type": "python", "processor_path": "oss://b/p/"}, id="nothing-secret"),
]  # fmt: skip


@pytest.mark.parametrize(("doc", "shown"), DOCS)
def test_sealed_exactly_and_masked(tmp_path: Path, doc: dict[str, Any], shown: dict[str, Any]) -> None:
    cipher = TokenCipher(tmp_path / "secret.key")
    sealed = seal(doc, cipher)
    assert SECRET not in json.dumps(sealed) and AUTH not in json.dumps(sealed)
    assert unseal(sealed, cipher) == doc  # exactly as written
    assert seal_plain(sealed, cipher) == sealed  # the migration leaves sealed values alone
    assert masked(doc) == shown


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = new_server(tmp_path_factory.mktemp("secrets") / "data")
    srv.extra_env = {"OPENEAS_CONTAINER_ENGINE": "none"}
    srv.start()
    yield srv
    stop_and_reap(srv)


def _in_clear(data_dir: Path) -> list[str]:
    """The store's files (and the server's log) that hold the secret in clear."""
    files = [*data_dir.glob("openeas.db*"), data_dir / "server.out"]
    return [p.name for p in files if p.exists() and (SECRET.encode() in p.read_bytes())]


def test_secret_reaches_the_replica_and_nothing_else(server: Server) -> None:
    c = server.client
    spec = service_spec("sealed", dockerAuth=AUTH)
    spec["containers"][0]["env"] = [{"name": "API_KEY", "value": SECRET}, {"name": "MODE", "value": "x"}]
    assert c.dry_run(spec)["spec"]["containers"][0]["env"] == [
        {"name": "API_KEY", "value": "***"}, {"name": "MODE", "value": "***"}]  # fmt: skip
    c.deploy(spec)
    detail = c.wait_ready("sealed", 1, timeout_s=60)
    shown = detail["spec"]
    assert shown["containers"][0]["env"] == [{"name": "API_KEY", "value": "***"}, {"name": "MODE", "value": "***"}]
    assert shown["dockerAuth"] == "***"
    # everything else round-trips as written
    assert {k: v for k, v in shown.items() if k not in ("containers", "dockerAuth")} == {
        k: v for k, v in spec.items() if k not in ("containers", "dockerAuth")
    }
    proc = read_proc(detail["replicas"][0]["pid"])
    assert proc is not None and proc.env.get("API_KEY") == SECRET  # the replica gets the value itself

    c.update("sealed", spec | {"metadata": {**spec["metadata"], "instance": 0}})
    c.rollback("sealed", 1)
    for answer in (c.describe("sealed"), c.versions("sealed"), c.events("sealed")):
        assert SECRET not in json.dumps(answer) and AUTH not in json.dumps(answer)
    assert _in_clear(server.data_dir) == []
    # the stored versions hold the sealed form; the store reads it back exactly
    store_spec = parse_spec(spec)
    assert Store(server.data_dir).version_spec("sealed", 3).main.env_dict() == store_spec.main.env_dict()
    c.delete("sealed")
    wait_for(lambda: not any(s["name"] == "sealed" for s in c.list()), 30, what="deleted")

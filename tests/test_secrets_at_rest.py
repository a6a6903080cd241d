"""Secrets at rest (issue 18 §3): env values and dockerAuth sealed in the store, masked by the API.

A real server: the secret is deployed, the replica gets it in its environment, and neither the
database, its WAL, the server's log nor any API answer (describe, dry-run, an update, a rollback)
holds it in clear.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openeas.runtime.base import PullError
from openeas.runtime.container import ContainerRuntime
from openeas.runtime.engine import Engine
from openeas.sdk import ApiError
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
    assert shown["containers"][0]["env"] == [
        {"name": "API_KEY", "value": "***"},
        {"name": "MODE", "value": "***"},
    ]
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


PASSWORD = f"{SECRET}-pw"  # dockerAuth's password, as a pull would use it
FAILING_STARTS = [
    pytest.param("crashprint", {"command": "sh -c 'echo key=$API_KEY; echo key=$API_KEY >&2; exit 3'"},
                 "StartFailed", id="exits-after-printing-its-env"),
    pytest.param("noexec", {"command": "/nonexistent/serve --token=${API_KEY}"}, "StartFailed",
                 id="command-not-found-naming-the-env"),
    pytest.param("pullauth", {"image": "registry.example.invalid/team/model:1", "command": "serve --key $API_KEY"},
                 None, id="image-and-docker-auth-without-an-engine"),
]  # fmt: skip


def _leaks(text: str) -> bool:
    return SECRET in text or AUTH in text or PASSWORD in text


@pytest.mark.parametrize(("name", "container", "reason"), FAILING_STARTS)
def test_a_failing_start_never_echoes_a_secret(
    server: Server, name: str, container: dict[str, Any], reason: str | None
) -> None:
    """Issue 18 §3: env values and dockerAuth reach neither the server's log nor events nor any
    API answer, even when the start fails (a message that echoes the command line or the env)."""
    c = server.client
    spec = service_spec(name, dockerAuth=AUTH)
    spec["containers"][0] = {
        **spec["containers"][0],
        **container,
        "env": [{"name": "API_KEY", "value": SECRET}],
    }
    try:
        c.deploy(spec)
    except ApiError as exc:  # refused at deploy (no engine for an image): the refusal holds no secret
        assert not _leaks(str(exc) + json.dumps(exc.errors)), exc
    else:
        if reason is not None:
            wait_for(lambda: any(e["reason"] == reason for e in c.events(name, limit=1000)), 60, what=reason)
        else:  # whatever the start did, it is over (a Warning event) before the files are read
            wait_for(lambda: any(e.get("type") == "Warning" for e in c.events(name, limit=1000)), 60,
                     what="a failed start")  # fmt: skip
        for answer in (c.events(name, limit=1000), c.describe(name), c.versions(name), c.list()):
            assert not _leaks(json.dumps(answer)), answer
        c.delete(name, force=True)
    # Nothing under the data dir holds it in clear (the store, its WAL, the server's and the
    # gateway's logs, run files), except what the replica itself wrote to its own log.
    found = [
        str(p.relative_to(server.data_dir))
        for p in server.data_dir.rglob("*")
        if p.is_file() and not p.is_symlink() and _leaks(p.read_bytes().decode(errors="replace"))
    ]
    assert [f for f in found if not f.startswith("replicas/")] == [], found
    assert all(f.endswith(".log") for f in found), found


FAKE_ENGINE = """#!/bin/sh
# A stand-in for podman: records its arguments, keeps the auth file it was given, refuses the pull.
echo "$@" >> "$FAKE_DIR/argv"
[ "$1" = image ] && exit 1
cp "$3" "$FAKE_DIR/auth.json" && stat -c %a "$3" > "$FAKE_DIR/mode"
echo "Trying to pull $4..."
echo "Error: initializing source docker://$4: unauthorized: authentication required"
exit 125
"""


def test_a_failed_pull_with_docker_auth_echoes_no_secret(tmp_path: Path) -> None:
    """dockerAuth reaches the engine only in a private auth file, deleted after the pull; neither
    the engine's argument list nor the failure (the PullFailed event's message) holds it."""
    binary = tmp_path / "podman"
    binary.write_text(FAKE_ENGINE)
    binary.chmod(0o755)
    runtime = ContainerRuntime(
        Engine("podman", str(binary), "5", {"FAKE_DIR": str(tmp_path)}), tmp_path / "data"
    )
    image = "registry.example.invalid/team/model:1"
    with pytest.raises(PullError) as exc:
        asyncio.run(runtime.pull(image, docker_auth=("robot", PASSWORD)))
    assert (
        str(exc.value)
        == f"Error: initializing source docker://{image}: unauthorized: authentication required"
    )
    argv = (tmp_path / "argv").read_text()
    assert "--authfile" in argv and not _leaks(argv)
    auths = json.loads((tmp_path / "auth.json").read_text())["auths"]
    assert auths == {
        "registry.example.invalid": {"auth": base64.b64encode(f"robot:{PASSWORD}".encode()).decode()}
    }
    assert (tmp_path / "mode").read_text().strip() == "600"
    assert list((tmp_path / "data" / "run").glob("pull-*")) == []  # deleted after the pull

"""The container runtime's pulls through a fake engine CLI (``tests/fake_engine.py``): the real
:class:`ContainerRuntime` code, the engine's command line faked (no registry is reachable here).
One pull per image however many replicas ask at once; ``dockerAuth`` reaches the engine as a
private credentials file in the shape each engine reads, never in an argument, and is gone after."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest

from openeas.runtime.container import ContainerRuntime
from openeas.runtime.engine import Engine

FAKE = Path(__file__).with_name("fake_engine.py")
IMAGE = "registry.example:5000/team/server:1"


def runtime(tmp_path: Path, engine: str) -> tuple[ContainerRuntime, Path]:
    state = tmp_path / "engine"
    state.mkdir()
    shim = tmp_path / engine  # the engine's "binary": the fake under the engine's name
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    shim.chmod(0o755)
    eng = Engine(name=engine, binary=str(shim), version="fake", env={"FAKE_ENGINE_STATE": str(state)})
    return ContainerRuntime(eng, tmp_path / "data"), state


def pulls(state: Path) -> list[dict]:
    path = state / "pulls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("engine", ["podman", "docker"])
async def test_five_replicas_at_once_pull_the_image_once(tmp_path: Path, engine: str):
    rt, state = runtime(tmp_path, engine)
    results = await asyncio.gather(*(rt.pull(IMAGE) for _ in range(5)))
    assert [p["argv"] for p in pulls(state)] == [["pull", IMAGE]]  # a double pull fails here
    assert sum(r.pulled for r in results) == 1
    assert (await rt.pull(IMAGE)).pulled is False  # the next version of the service: cached


AUTH = {"auths": {"registry.example:5000": {"auth": base64.b64encode(b"robot:pa55").decode()}}}


@pytest.mark.parametrize(
    ("engine", "shape"),
    [
        pytest.param("podman", ["pull", "--authfile", "<file>", IMAGE], id="podman-authfile"),
        pytest.param("docker", ["--config", "<folder>", "pull", IMAGE], id="docker-config-folder"),
    ],
)
async def test_docker_auth_reaches_the_engine_privately_and_is_removed(
    tmp_path: Path, engine: str, shape: list[str]
):
    rt, state = runtime(tmp_path, engine)
    seen: list[str] = []
    result = await rt.pull(IMAGE, docker_auth=("robot", "pa55"), progress=seen.append)
    assert result.pulled and seen == [f"Trying to pull {IMAGE}..."]
    (rec,) = pulls(state)
    assert rec["auth"] == AUTH  # containers-auth.json / docker config.json: the same shape
    assert rec["auth_mode"] == "0o600" and rec["folder_mode"] == "0o700"
    argv = [
        a if "/run/pull-" not in a else ("<file>" if a.endswith(".json") else "<folder>") for a in rec["argv"]
    ]
    assert argv == shape
    assert "pa55" not in " ".join(rec["argv"]) and "cm9ib3Q6cGE1NQ" not in " ".join(rec["argv"])
    assert list((tmp_path / "data" / "run").iterdir()) == []  # deleted after the pull


async def test_docker_gets_the_servers_credential_file_as_config_json(tmp_path: Path):
    rt, state = runtime(tmp_path, "docker")
    server_file = tmp_path / "auth.json"
    server_file.write_text(json.dumps(AUTH))
    rt.registry_auth = server_file
    await rt.pull(IMAGE)
    (rec,) = pulls(state)
    assert rec["argv"][:1] == ["--config"] and rec["auth"] == AUTH
    assert list((tmp_path / "data" / "run").iterdir()) == []

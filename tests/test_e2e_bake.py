"""End to end: ``openeas bake`` with podman (docs/cold-start.md, "Baked images"). A service of the
local test image whose code and weights come from an object-storage mount is baked: the image
holds the mount's content, the new version mounts nothing and its replica (a container of the
baked image) fetches nothing and answers through the gateway; a spec without an image is refused
naming the field. Skipped where podman does not answer, a failure with
``OPENEAS_REQUIRE_CONTAINERS=1`` (scripts/test.sh)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.harness import new_server, service_spec, wait_for
from tests.test_e2e_container import (
    REQUIRED,
    EngineCLI,
    _engine,
    bucket_with_testserver,
    containers,
    eas_spec,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def podman() -> EngineCLI:
    found = _engine("podman")
    if isinstance(found, str):
        if REQUIRED:
            pytest.fail(f"OPENEAS_REQUIRE_CONTAINERS=1 but {found}")
        pytest.skip(found)
    return found


def _ready_v(srv: object, name: str, version: int) -> dict | None:
    d = srv.client.describe(name)  # type: ignore[attr-defined]
    live = [r for r in d["replicas"] if not r.get("stopping")]
    ok = live and all(r["version"] == version and r["phase"] == "Ready" for r in live)
    return d if ok else None


def test_bake_layers_the_mounts_into_the_image_and_rolls_out_a_version_that_uses_it(
    tmp_path: Path, podman: EngineCLI
) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from test_image import ensure_image

    image = str(ensure_image("podman"))
    srv = new_server(tmp_path / "data")
    srv.extra_env = {"OPENEAS_CONTAINER_ENGINE": "podman"}
    srv.start()
    baked_tag = None
    try:
        c = srv.client
        bucket = bucket_with_testserver(tmp_path)
        weights = sum(f.stat().st_size for f in bucket.rglob("*") if f.is_file())
        c.deploy(eas_spec("baked", bucket, image, replicas=1, token="baked-token-0123456789"))
        c.wait_ready("baked", 1, timeout_s=120)
        res = subprocess.run(
            [sys.executable, "-m", "openeas.cli", "bake", "baked", "--json", "--data-dir", str(srv.data_dir)],
            capture_output=True, text=True, timeout=300, env=srv.env(),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        baked_tag = out["image"]
        assert baked_tag.startswith("localhost/openeas-baked/baked:v1-") and out["base_image"] == image
        assert out["baked"] == [{"storage": "storage[0]", "mount_path": "/mnt/data/", "bytes": weights}]
        assert out["from_version"] == 1 and out["version"] == 2 and out["build_s"] > 0
        # The weights are in the image, where the mount was.
        ls = podman("run", "--rm", baked_tag, "python3", "-c",
                    "import os; print(os.path.getsize('/mnt/data/weights.bin'))")  # fmt: skip
        assert ls.stdout.strip() == "4096"
        d = wait_for(lambda: _ready_v(srv, "baked", 2), 120, what="version 2 Ready")
        assert d["spec"]["storage"] == [] and d["spec"]["containers"][0]["image"] == baked_tag
        assert d["desired_replicas"] == 1  # a bake keeps the scale
        (rep,) = [r for r in d["replicas"] if not r.get("stopping")]
        (box,) = [x for x in containers(podman, srv.data_dir, all_states=False) if x["replica"] == rep["id"]]
        assert not [m for m in box["mounts"] if m["Destination"].rstrip("/") == "/mnt/data"]
        fetch = rep["cold_start"]["fetch"]  # nothing fetched: the weights came with the image
        assert fetch["mounts"] == [] and fetch["bytes"] == 0
        info = c.call_info("baked")
        got = requests.post(info["endpoint"], json={}, headers={"Authorization": info["token"]}, timeout=30)
        assert got.status_code == 200
        assert any(e["reason"] == "Baked" and baked_tag in e["message"] for e in c.events("baked"))
        # No image to layer onto: refused, naming the field.
        c.deploy(service_spec("plain", storage=[{"mount_path": "/mnt/data/", "oss": {"path": bucket.as_uri() + "/"}}]))
        bad = requests.post(
            f"{srv.api_url}/api/v1/services/plain/bake",
            headers={"Authorization": f"Bearer {srv.info['admin_token']}"}, json={}, timeout=60,
        )  # fmt: skip
        assert bad.status_code == 400 and "containers[0].image" in bad.text and "--base-image" in bad.text
    finally:
        srv.stop()
        for x in containers(podman, srv.data_dir):
            podman("rm", "--force", x["id"], check=False)
        if baked_tag:
            podman("rmi", "--force", baked_tag, check=False)

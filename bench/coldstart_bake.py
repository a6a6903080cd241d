"""Cold start: a replica started from a baked image against one that mounts its weights (issue
23's bake goal; docs/cold-start.md, "Baked images"), run by bench/coldstart.py.

A service of the local test image (scripts/test_image.py) whose code and ``size_mb`` of weights
come from an object-storage mount is deployed with podman; its replica's cold start is read;
then ``openeas bake`` and the baked version's replica's cold start. Both are printed phase by
phase (pull, fetch, start, total) with the bake's own build time: the trade in one table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from tests.harness import Server, new_server, stop_and_reap, wait_for  # noqa: E402
from tests.test_e2e_container import bucket_with_testserver, eas_spec  # noqa: E402


def available() -> str | None:
    """None when podman can run the bench here, else why not."""
    if shutil.which("podman") is None or os.geteuid() != 0:
        return "rootful podman is not available (scripts/setup.sh installs it as root)"
    return None


def _ready(srv: Server, name: str, version: int) -> dict[str, Any] | None:
    live = [r for r in srv.client.describe(name)["replicas"] if not r.get("stopping")]
    ok = live and all(r["version"] == version and r["phase"] == "Ready" for r in live)
    return live[0] if ok else None


def bake_vs_mount(work: Path, size_mb: int) -> dict[str, Any]:
    """The mounted replica's and the baked replica's cold-start records, and the bake's answer."""
    from test_image import ensure_image

    image = str(ensure_image("podman"))
    bucket = bucket_with_testserver(work)
    (bucket / "weights.bin").write_bytes(os.urandom(size_mb << 20))
    srv = new_server(work / "data")
    srv.extra_env = {"OPENEAS_CONTAINER_ENGINE": "podman"}
    srv.start()
    tag = None
    try:
        c = srv.client
        c.deploy(eas_spec("bakebench", bucket, image, replicas=1))
        mounted = wait_for(lambda: _ready(srv, "bakebench", 1), 300, what="the mounted replica")
        admin = {"Authorization": f"Bearer {srv.info['admin_token']}"}
        url = f"{srv.api_url}/api/v1/services/bakebench/bake"
        bake = requests.post(url, json={}, headers=admin, timeout=1900)
        bake.raise_for_status()
        tag = bake.json()["image"]
        baked = wait_for(lambda: _ready(srv, "bakebench", 2), 300, what="the baked replica")
        c.delete("bakebench")
        c.wait_deleted("bakebench", timeout_s=120)
        return {"mounted": mounted["cold_start"], "baked": baked["cold_start"], "bake": bake.json()}
    finally:
        stop_and_reap(srv)  # the gateway too: it outlives a server that dies uncleanly
        if tag is not None:
            subprocess.run(["podman", "rmi", "--force", tag], capture_output=True, check=False)

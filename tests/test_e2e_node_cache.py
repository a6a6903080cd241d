"""The node cache end to end (issue 23): a version's object-storage mount is pre-fetched when the
version is created, so its first (autoscaled) replica hits the cache; `openeas cache ls / prune`;
the cache's size and hit ratio on /metrics. A real server, real replica processes, a local bucket."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import requests
from typer.testing import CliRunner

from openeas.cli.main import app
from tests.harness import Server, event, service_spec, wait_for

SIZE = 256 * 1024


def cli(srv: Server, *args: str) -> Any:
    r = CliRunner().invoke(app, ["--data-dir", str(srv.data_dir), *args], env={"OPENEAS_DATA_DIR": None})
    assert r.exit_code == 0, r.output
    return r.output


def test_prefetch_then_the_first_replica_hits(server: Server, tmp_path: Path) -> None:
    bucket = tmp_path / "bucket" / "model"
    bucket.mkdir(parents=True)
    (bucket / "weights.bin").write_bytes(os.urandom(SIZE))
    spec = service_spec("pre", replicas=0)
    spec["containers"][0]["command"] = (
        "test -f /mnt/m/weights.bin && exec python -m openeas.testserver --host 127.0.0.1 --port 8000"
    )
    spec["storage"] = [{"mount_path": "/mnt/m", "oss": {"path": str(bucket)}}]
    c = server.client
    c.deploy(spec)
    # No replica yet: the version's mount is copied into the node cache anyway.
    got = wait_for(lambda: event(server, "pre", "Prefetched"), 30, what="the Prefetched event")
    assert f"{SIZE} bytes copied" in got["message"], got
    view = c.request("GET", "/api/v1/cache")
    [entry] = view["entries"]
    assert (entry["bytes"], entry["files"], entry["in_use"]) == (SIZE, 1, False)
    assert view["stats"]["prefetches"] == 1 and view["limit_bytes"] == 20 * 1024**3  # the default
    # The first replica (a scale-out from zero) finds it: a hit, nothing copied.
    c.scale("pre", 1)
    [rep] = c.wait_ready("pre", 1, timeout_s=60)["replicas"]
    fetch = rep["cold_start"]["fetch"]
    assert fetch["cache_hit"] is True and fetch["bytes"] == 0
    view = c.request("GET", "/api/v1/cache")
    assert view["entries"][0]["in_use"] is True
    assert (view["stats"]["hits"], view["stats"]["misses"], view["stats"]["hit_ratio"]) == (1, 0, 1.0)
    headers = {"Authorization": server.info["admin_token"]}
    metrics = requests.get(f"{server.api_url}/metrics", headers=headers, timeout=5).text
    assert f"openeas_node_cache_bytes {SIZE:.1f}" in metrics
    assert "openeas_node_cache_hit_ratio 1.0" in metrics
    assert "openeas_node_cache_prefetches_total 1.0" in metrics
    # The CLI: the entry, in use; prune keeps it.
    text = cli(server, "cache", "ls")
    assert "hit ratio 100% (1 hits, 0 misses" in text and "yes" in text and str(bucket) in text
    assert json.loads(cli(server, "cache", "prune", "--json")) == {"evicted": [], "freed_bytes": 0}
    # No replica uses it any more and its last use is an hour old: prune evicts it.
    c.scale("pre", 0)
    wait_for(lambda: not c.describe("pre")["replicas"], 60, what="the replica to stop")
    for meta in server.data_dir.glob("cache/**/meta/*.json"):
        old = time.time() - 3600
        os.utime(meta, (old, old))
    assert "pruned 1 entries, freed 256.0 KiB" in cli(server, "cache", "prune")
    assert json.loads(cli(server, "cache", "ls", "--json"))["entries"] == []

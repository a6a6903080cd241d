"""The control plane's node-cache API (docs/cold-start.md):

- ``GET /api/v1/cache``: the node cache's entries (owner, url, bytes, last use, in use or not),
  its size against its limit, and the counters since the server started (hit ratio…);
- ``POST /api/v1/cache/prune``: evict every entry no running replica uses (and none used in the
  last minute); what went and the bytes freed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import FastAPI, HTTPException

from openeas.api.control import ControlPlane
from openeas.storage import NodeCache
from openeas.storage.cache_index import keys_in_use


def _node_cache(cp: ControlPlane) -> NodeCache:
    cache = cp.node_cache
    if cache is None:
        raise HTTPException(503, "no node cache: this control plane runs no replicas")
    return cache


def cache_view(cache: NodeCache, in_use: set[str]) -> dict[str, Any]:
    entries = sorted(cache.entries(), key=lambda e: e.last_used, reverse=True)
    total = sum(e.bytes for e in entries)
    return {
        "limit_bytes": cache.limit_bytes,
        "bytes": total,
        "over_limit_bytes": max(0, total - cache.limit_bytes) if cache.limit_bytes is not None else 0,
        "entries": [{**e.as_dict(), "in_use": e.key in in_use} for e in entries],
        "stats": cache.stats.as_dict(),
    }


def add_cache_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    @app.get("/api/v1/cache", dependencies=auth, tags=["cache"])
    async def cache_list() -> dict[str, Any]:
        """The node cache: entries, size against the limit, hit ratio."""
        cache = _node_cache(cp)
        in_use = keys_in_use(cp.store.replicas())
        return await asyncio.to_thread(cache_view, cache, in_use)

    @app.post("/api/v1/cache/prune", dependencies=auth, tags=["cache"])
    async def cache_prune() -> dict[str, Any]:
        """Evict every entry no running replica uses."""
        cache = _node_cache(cp)
        in_use = keys_in_use(cp.store.replicas())
        gone = await asyncio.to_thread(cache.prune, in_use, time.time())
        return {"evicted": [e.as_dict() for e in gone], "freed_bytes": sum(e.bytes for e in gone)}

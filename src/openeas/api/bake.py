"""``POST /api/v1/services/{name}/bake`` (docs/cold-start.md, "Baked images"): build an image
with the current version's object-storage mounts baked in (controller/bake.py) and, unless
``rollout`` is false, roll out a version that uses it. The build runs in a thread; the answer
comes when it is done (a model of gigabytes takes the engine's copy time)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from openeas.api.control import ControlPlane
from openeas.api.errors import responses


class BakeBody(BaseModel):
    base_image: str | None = Field(
        None, min_length=1, max_length=1024, description="the image the weights go onto (default: the spec's)"
    )
    rollout: bool = Field(True, description="roll out a version that uses the baked image")


def add_bake_routes(app: FastAPI, cp: ControlPlane, auth: list[Any]) -> None:
    @app.post("/api/v1/services/{name}/bake", dependencies=auth, responses=responses(400, 404, 409))
    async def bake(name: str, body: BakeBody | None = None) -> dict[str, Any]:
        """Bake the current version's object-storage mounts into an image; roll it out."""
        baker = cp.baker
        if baker is None:
            raise HTTPException(503, "no baker: this control plane runs no replicas")
        b = body or BakeBody.model_validate({})
        out = await asyncio.to_thread(baker.bake, name, base_image=b.base_image, rollout=b.rollout)
        if b.rollout:
            cp.wake()
        return out

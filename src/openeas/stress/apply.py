"""``--apply``: the recommendation written as the service's ``autoscaling`` block, as a new
version of its spec (``autoscaling: {metric, target, min_replicas, max_replicas}``, the form
the autoscaler reads). Everything else in the spec stays as deployed, the replica count too.
"""

from __future__ import annotations

import copy
from typing import Any

from openeas.sdk.client import Client


def with_autoscaling(
    spec: dict[str, Any], autoscaling: dict[str, Any], replicas: int | None
) -> dict[str, Any]:
    """``spec`` with ``autoscaling`` set (pure). ``replicas`` (the current desired count) is kept
    as ``metadata.instance`` so that the new version does not rescale the service."""
    out = copy.deepcopy(spec)
    out["autoscaling"] = dict(autoscaling)
    if replicas is not None:
        out.setdefault("metadata", {})["instance"] = replicas
    return out


def apply_recommendation(client: Client, name: str, recommendation: dict[str, Any]) -> dict[str, Any]:
    """Write ``recommendation`` into ``name``'s spec as a new version; returns the new detail."""
    detail = client.describe(name)
    auto = {k: recommendation[k] for k in ("metric", "target", "min_replicas", "max_replicas")}
    spec = with_autoscaling(detail["spec"], auto, detail.get("desired_replicas"))
    return client.update(name, spec)

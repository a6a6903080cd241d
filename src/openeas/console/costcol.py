"""The Services page's cost column: each service's monthly estimate (what
``GET /api/v1/services/{name}/cost`` answers, docs/cost.md), kept per service version for
``COST_TTL_S`` so the live loop does not price every service twice a second."""

from __future__ import annotations

import time
from collections.abc import Callable

from openeas.api.control import ControlPlane
from openeas.api.cost import cost_of

COST_TTL_S = 60.0
"""Seconds a service version's estimate is kept (a catalog edit shows within this)."""


def cost_text(cost: dict[str, object]) -> str | None:
    """An estimate as the column's text: ``1,234.56 RMB``; None when it has no total."""
    total = cost.get("monthly_total")
    if not isinstance(total, int | float):
        return None
    return f"{total:,.2f} {cost.get('currency', '')}".strip()


def monthly_cost(
    cp: ControlPlane, clock: Callable[[], float] = time.monotonic
) -> Callable[[str, int], str | None]:
    """The Live view's cost hook over ``cp``'s store and the server's catalog: ``(service,
    version)`` → text; the store is read only when the version's estimate is not kept."""
    kept: dict[str, tuple[int, float, str | None]] = {}  # name -> (version, when, text)

    def of(name: str, version: int) -> str | None:
        now = clock()
        hit = kept.get(name)
        if hit is not None and hit[0] == version and now - hit[1] < COST_TTL_S:
            return hit[2]
        text = cost_text(cost_of(cp.store.version_spec(name, version)))
        kept[name] = (version, now, text)
        return text

    return of

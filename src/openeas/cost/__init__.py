"""Economics: the instance catalog, the monthly estimate of a spec, its traps, the meter of what
ran and the idle-spend alarm (docs/cost.md).

Pure logic only: imports spec and the standard library, never the store, gateway or runtime.
"""

from openeas.cost.catalog import (
    SHIPPED_CATALOG,
    Catalog,
    InstanceType,
    Pricing,
    load_catalog,
    map_resources,
    map_spec,
    parse_catalog,
)
from openeas.cost.estimate import Estimate, TrafficProfile, estimate, parse_traffic, render_text, traps

__all__ = [
    "SHIPPED_CATALOG",
    "Catalog",
    "Estimate",
    "Idle",
    "IdleState",
    "InstanceType",
    "Pricing",
    "Report",
    "TrafficProfile",
    "Usage",
    "estimate",
    "load_catalog",
    "map_resources",
    "map_spec",
    "meter",
    "observe",
    "parse_catalog",
    "parse_traffic",
    "render_text",
    "traps",
]

"""Which values of a spec document are secrets: ``containers[].env`` values (list or mapping
spelling) and ``dockerAuth``. The API shows them masked (:func:`masked`); the store keeps them
sealed (openeas.store.spec_secrets). Pure."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any


def _env_lists(doc: dict[str, Any]) -> list[Any]:
    containers = doc.get("containers")
    if not isinstance(containers, list):
        return []
    return [c["env"] for c in containers if isinstance(c, dict) and isinstance(c.get("env"), list | dict)]


def map_secrets(doc: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of ``doc`` with ``fn`` applied to each env value and to dockerAuth (strings only)."""
    out = copy.deepcopy(doc)
    for env in _env_lists(out):
        if isinstance(env, dict):
            for name, value in env.items():
                if isinstance(value, str):
                    env[name] = fn(value)
        else:
            for item in env:
                if isinstance(item, dict) and isinstance(item.get("value"), str):
                    item["value"] = fn(item["value"])
    if isinstance(out.get("dockerAuth"), str):
        out["dockerAuth"] = fn(out["dockerAuth"])
    return out


MASK = "***"


def masked(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as the API shows it: env values and dockerAuth replaced by ``***``."""
    return map_secrets(doc, lambda _v: MASK)

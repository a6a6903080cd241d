"""The spellings real EAS specs use, brought to one model, and given back as written.

EAS accepts the same setting in several spellings, and users write all of them:

- the service name at the top level (``"name": "chat"``), in ``metadata.name``, or both (equal);
- a nested key (``metadata.rpc.keepalive``) or a dotted key inside ``metadata``
  (``"rpc.keepalive": 5000``, ``"eas.termination_grace_period": 30``), or both (equal);
- ``null`` for a list that is absent (``"storage": null``, ``"env": null``).

:func:`normalize` (pure) rewrites a spec document into the one canonical shape the models
validate, and returns a :data:`Layout`: the list of what it moved, so that :func:`restore` gives
the spec back in the user's own spelling (``describe`` shows the spec as it was deployed). Two
spellings of one setting with different values are an error naming both.
"""

from __future__ import annotations

import copy
from typing import Any

Path = tuple[str, ...]
# ("move", from, to): the value was written at `from`, the model reads it at `to`.
# ("both", from, to): written at both (equal values); the model reads `to`.
# ("null", at): the list at `at` was written as null.
# ("made", at): the dict at `at` did not exist; normalizing created it.
Layout = list[tuple[str, Path] | tuple[str, Path, Path]]

# Lists a spec may write as null for "none".
NULLABLE_LISTS: tuple[Path, ...] = (("storage",),)
NULLABLE_CONTAINER_LISTS = ("env",)


class SpellingConflict(ValueError):
    """Two spellings of one setting disagree."""


_MISSING = object()


def _lookup(doc: dict[str, Any], path: Path) -> Any:
    """The value at ``path`` in ``doc``; ``_MISSING`` when some key on the way is absent."""
    cur: Any = doc
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return _MISSING
        cur = cur[key]
    return cur


def _get(doc: dict[str, Any], path: Path) -> Any:
    value = _lookup(doc, path)
    return None if value is _MISSING else value


def _has(doc: dict[str, Any], path: Path) -> bool:
    return _lookup(doc, path) is not _MISSING


def _set(doc: dict[str, Any], path: Path, value: Any, layout: Layout) -> None:
    cur = doc
    for i, key in enumerate(path[:-1]):
        if key not in cur:
            cur[key] = {}
            layout.append(("made", path[: i + 1]))
        nxt = cur[key]
        if not isinstance(nxt, dict):
            raise SpellingConflict(f"{'.'.join(path[: i + 1])}: must be an object to hold {'.'.join(path)}")
        cur = nxt
    cur[path[-1]] = value


def _pop(doc: dict[str, Any], path: Path) -> Any:
    parent = _get(doc, path[:-1]) if len(path) > 1 else doc
    if isinstance(parent, dict):
        return parent.pop(path[-1], None)
    return None


def _unify(doc: dict[str, Any], src: Path, dst: Path, layout: Layout, what: str) -> None:
    """Bring the value written at ``src`` to ``dst`` (see the module docstring)."""
    value = _pop(doc, src)
    if _has(doc, dst):
        if _get(doc, dst) != value:
            raise SpellingConflict(
                f"{what} ({value!r}) and {'.'.join(dst)} ({_get(doc, dst)!r}) disagree: write one of them"
            )
        layout.append(("both", src, dst))
        return
    _set(doc, dst, value, layout)
    layout.append(("move", src, dst))


def normalize(data: dict[str, Any]) -> tuple[dict[str, Any], Layout]:
    """The canonical document (a copy) and how to give it back as written (pure)."""
    doc = copy.deepcopy(data)
    layout: Layout = []
    if "name" in doc:
        _unify(doc, ("name",), ("metadata", "name"), layout, "name")
    md = doc.get("metadata")
    if isinstance(md, dict):
        for key in [k for k in md if isinstance(k, str) and "." in k]:
            parts = tuple(p for p in key.split(".") if p)
            if len(parts) < 2:
                continue
            _unify(doc, ("metadata", key), ("metadata", *parts), layout, f"metadata.{key!r}")
    for path in NULLABLE_LISTS:
        if _has(doc, path) and _get(doc, path) is None:
            _pop(doc, path)
            layout.append(("null", path))
    containers = doc.get("containers")
    if isinstance(containers, list):
        for i, c in enumerate(containers):
            for key in NULLABLE_CONTAINER_LISTS:
                if isinstance(c, dict) and key in c and c[key] is None:
                    del c[key]
                    layout.append(("null", ("containers", str(i), key)))
    return doc, layout


def _get_any(doc: Any, path: Path) -> Any:
    cur = doc
    for key in path:
        if isinstance(cur, list) and key.isdigit() and int(key) < len(cur):
            cur = cur[int(key)]
        elif isinstance(cur, dict) and key in cur:
            cur = cur[key]
        else:
            return None
    return cur


def restore(out: dict[str, Any], layout: Layout) -> dict[str, Any]:
    """``out`` (a canonical document, changed in place) in the spelling ``layout`` recorded."""
    for entry in reversed(layout):
        kind = entry[0]
        if kind == "null":
            parent = _get_any(out, entry[1][:-1]) if len(entry[1]) > 1 else out
            if isinstance(parent, dict):
                parent[entry[1][-1]] = None
        elif kind == "made":
            if _get(out, entry[1]) == {}:
                _pop(out, entry[1])
        elif kind in ("move", "both"):
            src, dst = entry[1], entry[2]  # type: ignore[misc]
            if not _has(out, dst):
                continue
            value = _get(out, dst) if kind == "both" else _pop(out, dst)
            parent = _get(out, src[:-1]) if len(src) > 1 else out
            if isinstance(parent, dict):
                parent[src[-1]] = value
    return out

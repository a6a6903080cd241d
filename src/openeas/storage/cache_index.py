"""The node cache's bookkeeping: what each entry holds, when it was last used, what may go.

Every complete entry ``<root>/objects/<key>/`` has a record ``<root>/meta/<key>.json`` written
before the entry is renamed into place (its url, files with their sizes and sha256, total bytes,
creation time); the record's modification time is the entry's last use (a hit touches it). The
node's cache spans its own root and one root per service uid (``<root>/u<uid>``): :func:`scan`
lists them all.

The bound: :func:`plan_eviction` is a pure decision. When the entries take more than the limit,
the least recently used entries that no running replica uses (and that were not used in the last
``grace_s`` seconds: a replica between its fetch and its start is not in the store's view yet)
are evicted, oldest first, until the total fits. Entries in use are never evicted; when they alone
exceed the limit the cache stays over it, and says so (:class:`Eviction.over_by`).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openeas.errors import SpecError
from openeas.kernel.states import ReplicaPhase
from openeas.store import ReplicaRow

# A node's cache when the server is not told otherwise (`openeas server --cache-limit`), bytes.
DEFAULT_LIMIT_BYTES = 20 * 1024**3
# An entry used less than this many seconds ago is never evicted (its replica may be starting).
EVICTION_GRACE_S = 60.0
META_SUFFIX = ".json"
# `openeas server --cache-limit` hands its value to the server's process here.
ENV_LIMIT = "OPENEAS_CACHE_LIMIT"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def parse_limit(text: str | None, where: str = "--cache-limit") -> int | None:
    """Bytes from ``20GiB``, ``500MB``, ``1073741824``; ``none`` is unbounded; None/"" the default."""
    if text is None or not text.strip():
        return DEFAULT_LIMIT_BYTES
    t = text.strip().lower()
    if t == "none":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", t)
    if m is None or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise SpecError([f"{where}: {text!r} is not a size (write 20GiB, 500MB, a byte count, or none)"])
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def limit_from_env() -> int | None:
    """The limit the server was started with (``--cache-limit``), else the default."""
    return parse_limit(os.environ.get(ENV_LIMIT), "--cache-limit")


def keys_in_use(rows: Iterable[ReplicaRow]) -> set[str]:
    """The cache keys that replicas still alive use (from their cold-start fetch record)."""
    keys: set[str] = set()
    for r in rows:
        if r.phase == ReplicaPhase.STOPPED:
            continue
        for m in ((r.cold_start or {}).get("fetch") or {}).get("mounts") or []:
            if isinstance(m, dict) and m.get("key"):
                keys.add(str(m["key"]))
    return keys


@dataclass(frozen=True)
class EntryInfo:
    """One complete cache entry as its record describes it."""

    root: Path  # the cache root holding it (the node's, or one service uid's)
    key: str
    url: str
    bytes: int
    files: int
    created: float  # wall-clock seconds
    last_used: float  # wall-clock seconds (the record's mtime)

    @property
    def owner(self) -> str:
        """``u<uid>`` for a service's cache, ``-`` for the node's own root."""
        return self.root.name if self.root.name.startswith("u") else "-"

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "owner": self.owner,
            "url": self.url,
            "bytes": self.bytes,
            "files": self.files,
            "created": self.created,
            "last_used": self.last_used,
        }


@dataclass(frozen=True)
class Eviction:
    """What :func:`plan_eviction` decided."""

    evict: tuple[EntryInfo, ...]
    total_bytes: int  # before eviction
    kept_bytes: int  # after eviction
    over_by: int  # bytes above the limit that entries in use (or in grace) still hold; 0 if none


def plan_eviction(
    entries: Iterable[EntryInfo],
    in_use: set[str],
    limit_bytes: int | None,
    now: float,
    *,
    grace_s: float = EVICTION_GRACE_S,
) -> Eviction:
    """The entries to evict so the cache fits ``limit_bytes`` (None: unbounded); see the module
    docstring. ``in_use``: the keys running replicas use; ``now``: wall-clock seconds."""
    ordered = sorted(entries, key=lambda e: (e.last_used, e.key, str(e.root)))
    total = sum(e.bytes for e in ordered)
    kept = total
    chosen: list[EntryInfo] = []
    if limit_bytes is not None:
        for e in ordered:
            if kept <= limit_bytes:
                break
            if e.key in in_use or now - e.last_used < grace_s:
                continue
            chosen.append(e)
            kept -= e.bytes
    over = max(0, kept - limit_bytes) if limit_bytes is not None else 0
    return Eviction(tuple(chosen), total, kept, over)


def plan_prune(
    entries: Iterable[EntryInfo], in_use: set[str], now: float, *, grace_s: float = EVICTION_GRACE_S
) -> list[EntryInfo]:
    """``openeas cache prune``: every entry no running replica uses (and not used in ``grace_s``)."""
    return [e for e in entries if e.key not in in_use and now - e.last_used >= grace_s]


def read_entry(root: Path, meta: Path) -> EntryInfo | None:
    """The entry a record describes; None when the record is unreadable or its entry is gone."""
    key = meta.name.removesuffix(META_SUFFIX)
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
        mtime = meta.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not (root / "objects" / key).is_dir():
        return None
    return EntryInfo(
        root=root,
        key=key,
        url=str(data.get("url", "")),
        bytes=int(data.get("bytes", 0)),
        files=len(data.get("files") or {}),
        created=float(data.get("created", mtime)),
        last_used=mtime,
    )


def scan(node_root: Path) -> list[EntryInfo]:
    """Every complete entry of the node's cache: its own root and each service uid's."""
    roots = [node_root]
    if node_root.is_dir():
        roots += sorted(
            p for p in node_root.iterdir() if p.is_dir() and p.name[:1] == "u" and p.name[1:].isdigit()
        )
    out: list[EntryInfo] = []
    for root in roots:
        meta_dir = root / "meta"
        if not meta_dir.is_dir():
            continue
        for meta in sorted(meta_dir.glob(f"*{META_SUFFIX}")):
            info = read_entry(root, meta)
            if info is not None:
                out.append(info)
    return out


@dataclass
class CacheStats:
    """Counters of one server's node cache (since the server started), shared by every owner's cache."""

    hits: int = 0  # materializations that copied nothing (found, or copied by a concurrent start)
    misses: int = 0  # materializations that copied
    shared: int = 0  # of the hits: waited for another start's copy of the same key (single-flight)
    prefetches: int = 0  # copies made ahead of a replica (a new version), not counted as misses
    evictions: int = 0
    torn: int = 0  # entries found incomplete or damaged and fetched again
    bytes_fetched: int = 0
    dirty: bool = False  # something was added since the last enforcement of the limit
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    @property
    def hit_ratio(self) -> float | None:
        n = self.hits + self.misses
        return None if n == 0 else self.hits / n

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "shared": self.shared,
            "prefetches": self.prefetches,
            "evictions": self.evictions,
            "torn": self.torn,
            "bytes_fetched": self.bytes_fetched,
            "hit_ratio": self.hit_ratio,
        }


def touch(meta: Path) -> None:
    """Mark an entry used now."""
    try:
        os.utime(meta)
    except OSError:
        pass

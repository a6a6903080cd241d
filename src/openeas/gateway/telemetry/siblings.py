"""Owns what the workers of one gateway (``--workers N``, gateway/workers.py) show as one:
``GET /metrics`` and ``GET /groups/<group>``.

A request reaches one worker (SO_REUSEPORT picks). Each worker writes a snapshot of its counters
every `SNAPSHOT_S` seconds to ``worker.K.json`` in the supervisor's folder (``--worker-dir``, a
private temporary folder removed when the supervisor stops): its pid, its /metrics text, its
groups' member counters, and the worker that answers adds its siblings' latest snapshots:

- /metrics: every sample gets a ``worker="K"`` label, families merged (one HELP/TYPE each), so a
  restarted worker's counters restart a series of their own; ``sum without (worker) (…)`` is the
  gateway's figure.
- /groups/<group>: the members' counters summed (for people: group describe, compare; the staged
  rollout sums the workers' counters datagrams instead, each worker sending its own).

A sibling's share is at most `SNAPSHOT_S` old; a sibling whose process is gone is left out.
Standard library only (the gateway process imports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from openeas.gateway.groups.group_metrics import COMPARE_SAMPLES
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.procfs import pid_alive

SNAPSHOT_S = 1.0  # seconds between two snapshots of a worker's counters

Members = dict[str, dict[str, Any]]  # member service → MemberMetrics.to_dict()


def snapshot_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"worker.{index}.json"


# --- /metrics ------------------------------------------------------------------------------------


def with_worker(sample: str, worker: int) -> str:
    """A Prometheus sample line with ``worker="K"`` as its first label."""
    cut = min((i for i in (sample.find("{"), sample.find(" ")) if i >= 0), default=len(sample))
    name, rest = sample[:cut], sample[cut:]
    if rest.startswith("{"):
        sep = "" if rest.startswith("{}") else ","
        return f'{name}{{worker="{worker}"{sep}{rest[1:]}'
    return f'{name}{{worker="{worker}"}}{rest}'


def merge_expositions(parts: Iterable[tuple[int, str]]) -> str:
    """Prometheus texts of several workers as one: each family's HELP/TYPE once, then its samples
    from every worker, each labelled with its worker."""
    headers: dict[str, list[str]] = {}  # family → its HELP/TYPE lines (the first worker's)
    samples: dict[str, list[str]] = {}
    for worker, text in parts:
        family = ""
        seen: set[str] = set()
        for line in text.splitlines():
            if not line:
                continue
            if line.startswith("# "):
                kind, _, rest = line[2:].partition(" ")
                if kind not in ("HELP", "TYPE"):
                    continue
                family = rest.partition(" ")[0]
                samples.setdefault(family, [])
                if family not in headers or family in seen:
                    headers.setdefault(family, []).append(line)
                    seen.add(family)
                continue
            samples.setdefault(family, []).append(with_worker(line, worker))
    out: list[str] = []
    for family, lines in samples.items():
        out += headers.get(family, [])
        out += lines
    return "\n".join(out) + "\n"


# --- /groups/<group> -------------------------------------------------------------------------------


def _add_traffic(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    codes = dict(a.get("by_code") or {})
    for code, n in (b.get("by_code") or {}).items():
        codes[code] = codes.get(code, 0) + n
    ba, bb = list(a.get("buckets") or []), list(b.get("buckets") or [])
    size = max(len(ba), len(bb))
    ba, bb = ba + [0] * (size - len(ba)), bb + [0] * (size - len(bb))
    return {
        "by_code": dict(sorted(codes.items())),
        "buckets": [x + y for x, y in zip(ba, bb, strict=True)],
        "sum_s": a.get("sum_s", 0.0) + b.get("sum_s", 0.0),
        "count": a.get("count", 0) + b.get("count", 0),
    }


def add_member(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two workers' counters of one member (`MemberMetrics.to_dict`) as one."""
    dropped = dict(a.get("mirror_dropped") or {})
    for reason, n in (b.get("mirror_dropped") or {}).items():
        dropped[reason] = dropped.get(reason, 0) + n
    ca, cb = a.get("compare") or {}, b.get("compare") or {}
    compare = {k: ca.get(k, 0) + cb.get(k, 0) for k in ("pairs", "status_differ", "body_differ")}
    compare["latency_delta_sum_s"] = ca.get("latency_delta_sum_s", 0.0) + cb.get("latency_delta_sum_s", 0.0)
    compare["samples"] = [*(ca.get("samples") or []), *(cb.get("samples") or [])][-COMPARE_SAMPLES:]
    return {
        "live": _add_traffic(a.get("live") or {}, b.get("live") or {}),
        "mirror": _add_traffic(a.get("mirror") or {}, b.get("mirror") or {}),
        "mirror_in_flight": a.get("mirror_in_flight", 0) + b.get("mirror_in_flight", 0),
        "mirror_dropped": dict(sorted(dropped.items())),
        "compare": compare,
    }


def merge_members(parts: Iterable[Mapping[str, Mapping[str, Any]]]) -> Members:
    """Several workers' members of one group, summed member by member."""
    out: Members = {}
    for members in parts:
        for svc, m in members.items():
            out[svc] = add_member(out[svc], m) if svc in out else dict(m)
    return dict(sorted(out.items()))


# --- the snapshots ---------------------------------------------------------------------------------


def group_members(metrics: GatewayMetrics) -> dict[str, Members]:
    """This worker's groups: group → member → counters."""
    out: dict[str, Members] = {}
    for (group, svc), m in metrics.groups.items():
        out.setdefault(group, {})[svc] = m.to_dict()
    return out


class Siblings:
    """Worker ``index`` of ``workers``: writes its snapshot, reads its siblings' (loop thread)."""

    def __init__(self, folder: Path, index: int, workers: int, metrics: GatewayMetrics) -> None:
        self.folder = Path(folder)  # the supervisor's (--worker-dir)
        self.index = index
        self.workers = workers
        self.metrics = metrics
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.metrics.merge_text = self.merged_text
        self.metrics.merge_group = self.merged_group
        self._tick()

    def _tick(self) -> None:
        self.write()
        if self._loop is not None:
            self._timer = self._loop.call_later(SNAPSHOT_S, self._tick)

    def write(self) -> None:
        """This worker's snapshot (atomically: a reader never sees half of one)."""
        doc = {
            "pid": os.getpid(),
            "metrics": self.metrics.render().decode(),
            "groups": group_members(self.metrics),
        }
        path = snapshot_path(self.folder, self.index)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):  # a full disk loses a snapshot, never a request
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(tmp, path)

    def others(self) -> list[tuple[int, dict[str, Any]]]:
        """The latest snapshot of every sibling whose process still runs."""
        out = []
        for k in range(self.workers):
            if k == self.index:
                continue
            try:
                doc = json.loads(snapshot_path(self.folder, k).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(doc, dict) and pid_alive(doc.get("pid")) is not False:
                out.append((k, doc))
        return out

    def merged_text(self, own: bytes) -> bytes:
        parts = [(self.index, own.decode()), *((k, str(d.get("metrics", ""))) for k, d in self.others())]
        return merge_expositions(sorted(parts)).encode()

    def merged_group(self, group: str, own: Members) -> Members:
        others = [d.get("groups", {}).get(group) or {} for _, d in self.others()]
        return merge_members([own, *others])

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
        snapshot_path(self.folder, self.index).unlink(missing_ok=True)

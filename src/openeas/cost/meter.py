"""The meter: what replicas have cost, from their lifecycle (pure aggregation, docs/cost.md).

Input: one :class:`Usage` per replica (store/usage.py keeps them: billed from creation to Stopped,
every phase in between, as the cloud bills an instance), the catalog and ``now``. Output: a
:class:`Report` of rows keyed by service, UTC day or UTC month, and by instance type:

- **replica-seconds**: the part of each replica's billed interval inside the report's window (a
  replica still running counts up to ``now``), split at UTC midnights for ``by=day|month``;
- **compute**: replica-seconds / 3,600 x the type's hourly price (spot when the replica's
  ``cloud.computing.instances`` entry was spot);
- **cold starts** and **bytes fetched** (its mounts' copies from storage), counted in the bucket of
  the replica's creation; **reads**: bytes / 10^9 x the catalog's ``storage_read_per_gb``.

A replica whose resources map to no catalog type is reported unpriced (its seconds, and why),
never priced from a default. Amounts are exact; rendering rounds to 2 decimals.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from openeas.cost.catalog import Catalog, map_resources

By = Literal["service", "day", "month"]
BY_CHOICES: tuple[By, ...] = ("service", "day", "month")
BYTES_PER_GB = 10**9  # storage is billed in decimal GB
CSV_COLUMNS = (
    "key",
    "instance_type",
    "price_per_hour",
    "replica_seconds",
    "replica_hours",
    "compute",
    "cold_starts",
    "bytes_fetched",
    "reads",
    "total",
    "currency",
)


@dataclass(frozen=True)
class Usage:
    """One replica's billed life (a row of store/usage.py)."""

    service: str
    replica: str
    started_at: float  # epoch seconds
    ended_at: float | None  # None: still billed
    resources: dict[str, Any]
    cold_starts: int = 0
    bytes_fetched: int = 0


@dataclass
class Row:
    key: str
    instance_type: str | None  # None: unpriced
    price_per_hour: float | None
    replica_seconds: float = 0.0
    cold_starts: int = 0
    bytes_fetched: int = 0
    how: str = ""  # how it was priced, or why it was not

    def compute(self) -> float | None:
        return None if self.price_per_hour is None else self.replica_seconds / 3600 * self.price_per_hour

    def as_dict(self, catalog: Catalog) -> dict[str, Any]:
        compute = self.compute()
        reads = self.bytes_fetched / BYTES_PER_GB * catalog.storage_read_per_gb
        return {
            "key": self.key,
            "instance_type": self.instance_type,
            "price_per_hour": self.price_per_hour,
            "replica_seconds": round(self.replica_seconds, 3),
            "replica_hours": round(self.replica_seconds / 3600, 4),
            "compute": None if compute is None else round(compute, 2),
            "cold_starts": self.cold_starts,
            "bytes_fetched": self.bytes_fetched,
            "reads": round(reads, 2),
            "total": None if compute is None else round(compute + reads, 2),
            "currency": catalog.currency,
            "how": self.how,
        }


@dataclass(frozen=True)
class Report:
    by: By
    since: float | None
    until: float
    currency: str
    rows: list[dict[str, Any]]
    total: float  # every priced row's compute + every row's reads
    unpriced_seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "since": self.since,
            "until": self.until,
            "currency": self.currency,
            "rows": self.rows,
            "total": round(self.total, 2),
            "unpriced_replica_seconds": round(self.unpriced_seconds, 3),
            "notes": list(self.notes),
        }


def _bucket(by: By, service: str, t: float) -> str:
    if by == "service":
        return service
    d = datetime.fromtimestamp(t, UTC)
    return d.strftime("%Y-%m-%d") if by == "day" else d.strftime("%Y-%m")


def _next_boundary(by: By, t: float) -> float:
    """The next UTC midnight (day) or first of a month (month) after ``t``; inf for service."""
    if by == "service":
        return float("inf")
    d = datetime.fromtimestamp(t, UTC)
    day = datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=1)
    if by == "month":
        day = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=UTC)
    return day.timestamp()


def split(by: By, service: str, start: float, end: float) -> list[tuple[str, float]]:
    """(bucket, seconds) of the interval [start, end) (pure)."""
    out: list[tuple[str, float]] = []
    t = start
    while t < end:
        stop = min(end, _next_boundary(by, t))
        out.append((_bucket(by, service, t), stop - t))
        t = stop
    return out


def meter(
    usages: Iterable[Usage],
    catalog: Catalog,
    now: float,
    *,
    by: By = "service",
    since: float | None = None,
    until: float | None = None,
) -> Report:
    """Aggregate ``usages`` over [since, until or now) (see the module doc)."""
    end_of_window = now if until is None else min(until, now)
    rows: dict[tuple[str, str | None, bool], Row] = {}
    for u in usages:
        pricing = map_resources(u.resources, catalog)
        type_name = pricing.instance.name if pricing.instance else None
        lo = u.started_at if since is None else max(u.started_at, since)
        hi = min(end_of_window, now if u.ended_at is None else u.ended_at)
        for key, secs in split(by, u.service, lo, hi):
            row = rows.setdefault(
                (key, type_name, pricing.spot), Row(key, type_name, pricing.per_hour, how=pricing.how)
            )
            row.replica_seconds += secs
        if (since is None or u.started_at >= since) and u.started_at < end_of_window:
            key = _bucket(by, u.service, u.started_at)
            row = rows.setdefault(
                (key, type_name, pricing.spot), Row(key, type_name, pricing.per_hour, how=pricing.how)
            )
            row.cold_starts += u.cold_starts
            row.bytes_fetched += u.bytes_fetched
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or "", k[2]))]
    dicts = [r.as_dict(catalog) for r in ordered]
    total = sum(
        (r.compute() or 0.0) + r.bytes_fetched / BYTES_PER_GB * catalog.storage_read_per_gb for r in ordered
    )
    unpriced = sum(r.replica_seconds for r in ordered if r.price_per_hour is None)
    notes = sorted({f"{r.key}: unpriced ({r.how})" for r in ordered if r.price_per_hour is None})
    return Report(by, since, end_of_window, catalog.currency, dicts, total, unpriced, notes)


def render_csv(report: dict[str, Any]) -> str:
    """The report's rows as CSV (:data:`CSV_COLUMNS`), for a spreadsheet."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in report["rows"]:
        w.writerow({k: "" if row.get(k) is None else row.get(k) for k in CSV_COLUMNS})
    return buf.getvalue()


def render_text(report: dict[str, Any]) -> str:
    """The report as ``openeas cost report`` prints it."""
    cur = report["currency"]
    head = ("KEY", "INSTANCE TYPE", "REPLICA-H", "COMPUTE", "STARTS", "READS", "TOTAL")
    out = ["{:<20} {:<24} {:>10} {:>12} {:>6} {:>10} {:>12}".format(*head)]
    for r in report["rows"]:
        compute = "unpriced" if r["compute"] is None else f"{r['compute']:,.2f}"
        total = "unpriced" if r["total"] is None else f"{r['total']:,.2f}"
        out.append(
            f"{r['key']:<20} {r['instance_type'] or '-':<24} {r['replica_hours']:>10,.2f} {compute:>12} "
            f"{r['cold_starts']:>6} {r['reads']:>10,.2f} {total:>12}"
        )
    out.append(f"total: {report['total']:,.2f} {cur}")
    out += [f"note: {n}" for n in report.get("notes") or []]
    return "\n".join(out)

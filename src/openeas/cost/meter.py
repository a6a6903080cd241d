"""The meter: what replicas have cost, from their lifecycle (pure aggregation, docs/cost.md).

Input: one :class:`Usage` per replica (store/usage.py keeps them: billed from creation to Stopped,
every phase in between, as the cloud bills an instance), the catalog and ``now``. Output: a
:class:`Report` of rows keyed by service, UTC day or UTC month, and by instance type:

- **replica-seconds**: the part of each replica's billed interval inside the report's window (a
  replica still running counts up to ``now``), split at UTC midnights for ``by=day|month``;
- **compute**: replica-seconds / 3,600 x the type's hourly price (spot when the replica's
  ``cloud.computing.instances`` entry was spot);
- **cold starts** and **bytes fetched** (its mounts' copies from storage), counted in the bucket of
  the replica's creation; **reads**: bytes / 10^9 x the catalog's ``storage_read_per_gb``;
- **requests** (one :class:`Requests` per service and UTC hour, the gateways' counts), in the
  bucket of their hour, on the key's first row (or a row of their own when no replica was billed
  there); **fees**: requests x the catalog's ``per_request_fee``. A window's ``since`` takes the
  hours that end after it whole (requests are known to the hour).

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
    "requests",
    "fees",
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


@dataclass(frozen=True)
class Requests:
    """Requests a service received in one UTC hour (a row of store/request_usage.py)."""

    service: str
    hour: float  # epoch seconds of the hour's start
    requests: int


@dataclass
class Row:
    key: str
    instance_type: str | None  # None: unpriced
    price_per_hour: float | None
    replica_seconds: float = 0.0
    cold_starts: int = 0
    bytes_fetched: int = 0
    how: str = ""  # how it was priced, or why it was not
    requests: int = 0

    def compute(self) -> float | None:
        return None if self.price_per_hour is None else self.replica_seconds / 3600 * self.price_per_hour

    def as_dict(self, catalog: Catalog) -> dict[str, Any]:
        compute = self.compute()
        reads = self.bytes_fetched / BYTES_PER_GB * catalog.storage_read_per_gb
        fees = self.requests * catalog.per_request_fee
        priced = compute is not None or self.replica_seconds == 0
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
            "requests": self.requests,
            "fees": round(fees, 2),
            "total": round((compute or 0.0) + reads + fees, 2) if priced else None,
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
    requests: Iterable[Requests] = (),
) -> Report:
    """Aggregate ``usages`` and ``requests`` over [since, until or now) (see the module doc)."""
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
    ordered = _add_requests(ordered, requests, by, since, end_of_window)
    dicts = [r.as_dict(catalog) for r in ordered]
    total = sum(
        (r.compute() or 0.0)
        + r.bytes_fetched / BYTES_PER_GB * catalog.storage_read_per_gb
        + r.requests * catalog.per_request_fee
        for r in ordered
    )
    unpriced = sum(r.replica_seconds for r in ordered if r.price_per_hour is None)
    notes = sorted(
        {
            f"{r.key}: unpriced ({r.how})"
            for r in ordered
            if r.price_per_hour is None and r.replica_seconds > 0
        }
    )
    return Report(by, since, end_of_window, catalog.currency, dicts, total, unpriced, notes)


def _add_requests(
    ordered: list[Row], requests: Iterable[Requests], by: By, since: float | None, end: float
) -> list[Row]:
    """Each hour's requests on the first row of its bucket's key; a row of their own when the key
    has none (no replica billed there). Hours ending after ``since`` and starting before ``end``."""
    first: dict[str, Row] = {}
    for r in ordered:
        first.setdefault(r.key, r)
    extra: list[Row] = []
    for q in requests:
        if (since is not None and q.hour + 3600 <= since) or q.hour >= end:
            continue
        key = _bucket(by, q.service, q.hour)
        row = first.get(key)
        if row is None:
            row = first[key] = Row(key, None, None, how="requests only: no replica billed")
            extra.append(row)
        row.requests += q.requests
    if not extra:
        return ordered
    return sorted([*ordered, *extra], key=lambda r: (r.key, r.instance_type or "", r.replica_seconds == 0))


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
    head = ("KEY", "INSTANCE TYPE", "REPLICA-H", "COMPUTE", "STARTS", "READS", "REQUESTS", "FEES", "TOTAL")
    out = ["{:<20} {:<24} {:>10} {:>12} {:>6} {:>10} {:>10} {:>10} {:>12}".format(*head)]
    for r in report["rows"]:
        compute = "unpriced" if r["compute"] is None else f"{r['compute']:,.2f}"
        if r["compute"] is None and not r["replica_seconds"]:
            compute = "-"  # a row of requests only
        total = "unpriced" if r["total"] is None else f"{r['total']:,.2f}"
        out.append(
            f"{r['key']:<20} {r['instance_type'] or '-':<24} {r['replica_hours']:>10,.2f} {compute:>12} "
            f"{r['cold_starts']:>6} {r['reads']:>10,.2f} {r.get('requests', 0):>10,} "
            f"{r.get('fees', 0.0):>10,.2f} "
            f"{total:>12}"
        )
    out.append(f"total: {report['total']:,.2f} {cur}")
    out += [f"note: {n}" for n in report.get("notes") or []]
    return "\n".join(out)

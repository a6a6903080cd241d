"""The monthly estimate of a spec: the field guide's spreadsheet, each line with its arithmetic.

Lines (each shown only when its inputs are known, never from a default the user did not see):

- **min-replica baseline**: min replicas x price per hour x hours per month (720 unless the
  traffic profile says otherwise; the line prints the number it used);
- **burst replicas**: extra replicas x price per hour x business hours per day x days per month;
- **per-request fees**: QPS x 3,600 x hours per day x days per month x the catalog's fee;
- **cold-start reads**: cold starts per month x model GB x the catalog's read price per GB.

Amounts are kept exact and printed to 2 decimals; the total is the sum of the exact lines.
The traps the field guide warns about are :func:`traps` (pure; each names the field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from openeas.cost.catalog import Catalog, Pricing, map_spec
from openeas.errors import SpecError
from openeas.spec.autoscaling import AutoscalingPolicy, normalise
from openeas.spec.load import format_errors
from openeas.spec.models import ServiceSpec

HOURS_PER_MONTH = 720.0  # 30 days x 24 h: the cloud's billing month
# "far above": min_replicas at least twice what the average load needs, max_replicas at least
# three times what the peak needs (headroom above a peak is wanted), and 2 replicas more either way
MIN_FAR_ABOVE = 2
MAX_FAR_ABOVE = 3
LLM_ENGINES = (
    "vllm",
    "sglang",
    "text-generation-inference",
    "llama-server",
    "llama.cpp",
    "lmdeploy",
    "ollama",
    "tensorrt-llm",
    "trtllm",
    "llama_cpp",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Burst(_Model):
    replicas: int = Field(ge=0, description="replicas above the minimum while busy")
    hours_per_day: float = Field(gt=0, le=24)
    days_per_month: float = Field(gt=0, le=31)


class Requests(_Model):
    qps: float = Field(ge=0, description="average requests per second while traffic flows")
    hours_per_day: float = Field(default=24, gt=0, le=24)
    days_per_month: float = Field(gt=0, le=31)


class ColdStarts(_Model):
    per_month: float = Field(ge=0, description="cold starts (replica starts) per month")
    model_gb: float = Field(ge=0, description="GB each cold start reads from storage")


class TrafficProfile(_Model):
    hours_per_month: float = Field(default=HOURS_PER_MONTH, gt=0, le=744)
    burst: Burst | None = None
    requests: Requests | None = None
    cold_starts: ColdStarts | None = None
    peak_qps: float | None = Field(default=None, ge=0, description="the highest QPS to expect")


def parse_traffic(data: Any, source: str = "traffic") -> TrafficProfile:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{source}: must be a mapping (hours_per_month, burst, requests, cold_starts)"])
    try:
        return TrafficProfile.model_validate(data)
    except ValidationError as exc:
        raise SpecError([f"{source}: {e}" for e in format_errors(exc)]) from None


@dataclass(frozen=True)
class Line:
    name: str
    arithmetic: str
    amount: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arithmetic": self.arithmetic, "amount": round(self.amount, 2)}


@dataclass(frozen=True)
class Estimate:
    pricing: Pricing
    lines: list[Line]
    total: float | None  # None: the spec maps to no price
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines not estimated, and why

    def as_dict(self) -> dict[str, Any]:
        return {
            "pricing": self.pricing.as_dict(),
            "currency": self.pricing.currency,
            "lines": [ln.as_dict() for ln in self.lines],
            "monthly_total": None if self.total is None else round(self.total, 2),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
        }


def money(v: float) -> str:
    return f"{v:,.2f}"


def _n(v: float) -> str:
    return f"{v:,.10g}"


def bounds(spec: ServiceSpec) -> tuple[int, int, AutoscalingPolicy | None]:
    """(min replicas, max replicas, policy): the policy's bounds, else metadata.instance twice."""
    policy = normalise(spec.autoscaler, spec.autoscaling, spec.cronScaler, spec.metadata.instance)
    if policy is None:
        return spec.metadata.instance, spec.metadata.instance, None
    return policy.min_replicas, policy.max_replicas, policy


def _lines(
    price: float, cur: str, lo: int, hi: int, t: TrafficProfile, catalog: Catalog
) -> tuple[list[Line], list[str], list[str]]:
    lines, notes, warns = [], [], []
    h = t.hours_per_month
    lines.append(
        Line("min-replica baseline", f"{lo} replicas x {_n(price)} {cur}/h x {_n(h)} h", lo * price * h)
    )
    if t.burst is None:
        notes.append("burst replicas: not estimated (no burst in the traffic profile)")
    else:
        b = t.burst
        extra = min(b.replicas, max(0, hi - lo))
        if extra < b.replicas:
            warns.append(
                f"traffic.burst.replicas: {b.replicas} burst replicas, but max_replicas {hi} - "
                f"min_replicas {lo} allows {extra}: estimated with {extra}"
            )
        lines.append(
            Line(
                "burst replicas",
                f"{extra} replicas x {_n(price)} {cur}/h x {_n(b.hours_per_day)} h x "
                f"{_n(b.days_per_month)} days",
                extra * price * b.hours_per_day * b.days_per_month,
            )
        )
    if t.requests is None:
        notes.append("per-request fees: not estimated (no requests in the traffic profile)")
    else:
        r, fee = t.requests, catalog.per_request_fee
        secs = r.hours_per_day * 3600
        lines.append(
            Line(
                "per-request fees",
                f"{_n(r.qps)} QPS x {_n(secs)} s x {_n(r.days_per_month)} days x {_n(fee)} {cur}",
                r.qps * secs * r.days_per_month * fee,
            )
        )
    if t.cold_starts is None:
        notes.append("cold-start reads: not estimated (no cold_starts in the traffic profile)")
    else:
        c, gb = t.cold_starts, catalog.storage_read_per_gb
        lines.append(
            Line(
                "cold-start reads",
                f"{_n(c.model_gb)} GB x {_n(c.per_month)} cold starts x {_n(gb)} {cur}/GB",
                c.model_gb * c.per_month * gb,
            )
        )
    return lines, notes, warns


def estimate(spec: ServiceSpec, catalog: Catalog, traffic: TrafficProfile | None = None) -> Estimate:
    """The monthly estimate of ``spec`` under ``traffic`` (None: the baseline only)."""
    t = traffic or TrafficProfile()
    pricing = map_spec(spec, catalog)
    lo, hi, _ = bounds(spec)
    warns = traps(spec, pricing, t if traffic is not None else None)
    price = pricing.per_hour
    if price is None:
        return Estimate(pricing, [], None, warns, [f"no estimate: {pricing.how}"])
    lines, notes, more = _lines(price, pricing.currency, lo, hi, t, catalog)
    if traffic is None:
        notes.insert(0, "no traffic profile (--traffic): the baseline alone, at 720 h a month")
    return Estimate(pricing, lines, sum(ln.amount for ln in lines), warns + more, notes)


def is_llm(spec: ServiceSpec) -> bool:
    """A server the field guide calls an LLM server: a known LLM engine in an image or command."""
    text = " ".join(f"{c.image or ''} {c.command or ''} {c.script or ''}" for c in spec.containers).lower()
    return any(engine in text for engine in LLM_ENGINES)


def _need(load: float, per_replica: float) -> int:
    return max(1, math.ceil(load / per_replica - 1e-9))


def traps(spec: ServiceSpec, pricing: Pricing, traffic: TrafficProfile | None) -> list[str]:
    """The field guide's traps, each a warning naming the field (pure)."""
    lo, hi, policy = bounds(spec)
    kinds = {m.kind: m for m in policy.metrics} if policy else {}
    out: list[str] = []
    field_name = f"{policy.source}" if policy else "metadata.instance"
    if "qps" in kinds and is_llm(spec):
        out.append(
            f"{field_name}: qps is the scaling metric of an LLM server: requests differ by "
            "thousands of tokens; scale on concurrent_requests (or the engine's queue)"
        )
    gpus = int(spec.metadata.gpu or 0) or (pricing.instance.gpus if pricing.instance else 0)
    if "cpu" in kinds and gpus > 0:
        out.append(
            f"{field_name}: cpu is the scaling metric of a GPU server: the GPU saturates while "
            "the CPU idles; scale on concurrent_requests or qps"
        )
    qps = kinds.get("qps")
    if traffic is None or qps is None:
        return out
    per = qps.target
    if traffic.requests is not None:
        need = _need(traffic.requests.qps, per)
        if lo >= MIN_FAR_ABOVE * need and lo - need >= 2:
            out.append(
                f"{field_name}: min_replicas {lo} is far above what {_n(traffic.requests.qps)} QPS "
                f"needs at {_n(per)} QPS per replica ({need}): {lo - need} replicas paid to idle"
            )
    if traffic.peak_qps is not None:
        peak = _need(traffic.peak_qps, per)
        if hi >= MAX_FAR_ABOVE * peak and hi - peak >= 2:
            out.append(
                f"{field_name}: max_replicas {hi} is far above what the peak of "
                f"{_n(traffic.peak_qps)} QPS needs at {_n(per)} QPS per replica ({peak})"
            )
    return out


def render_text(est: Estimate) -> str:
    """The table as ``cost estimate`` and ``deploy`` print it."""
    cur = est.pricing.currency
    rows = [f"instance: {est.pricing.how}"]
    width = max((len(ln.name) for ln in est.lines), default=0)
    for ln in est.lines:
        rows.append(f"  {ln.name:<{width}}  {ln.arithmetic} = {money(ln.amount)} {cur}")
    if est.total is not None:
        rows.append(f"  {'monthly total':<{width}}  {money(est.total)} {cur}/month")
    rows += [f"  note: {n}" for n in est.notes]
    rows += [f"  warning: {w}" for w in est.warnings]
    return "\n".join(rows)

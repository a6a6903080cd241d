"""Autoscaling in the spec: the EAS shapes and the field guide's shape, normalised into one policy.

Three blocks are accepted, each as its authors write it:

- ``autoscaler`` (EAS): ``{min, max, scaleStrategies: [{metricName, threshold}], behavior:
  {scaleUp|scaleDown: {stabilizationWindowSeconds}, onZero: {scaleDownGracePeriodSeconds,
  scaleUpActivationReplicas}}}``, and the older map form ``strategies: {"qps": 10}``;
- ``cronScaler`` (OpenEAS's place for EAS's cron-scaler body, unchanged): ``{ScaleJobs: [{Name,
  Schedule, TargetSize, TimeZone}], ExcludeDates: [...]}`` with 6-field schedules, seconds first;
- ``autoscaling`` (the field guide): ``{metric, target, min_replicas, max_replicas,
  scale_up_stabilization_window, scale_down_stabilization_window, custom: {metric, aggregate},
  rules: [{name, cron, min_replicas, max_replicas}]}`` plus ``metrics: [...]`` for several
  metrics and the tuning fields below.

:meth:`ServiceSpec.autoscaling_policy` turns whichever was given into one frozen
:class:`AutoscalingPolicy` — the only thing the autoscaler reads. Every default is in
:data:`DEFAULTS`, with its reason. Errors name the field: ``autoscaling.metric: unknown metric
'tps'; one of ...``.
"""

from __future__ import annotations

import datetime as dt
import re
import typing
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from openeas.spec.base import SpecModel, is_stored

Number = int | float

MetricKind = Literal["qps", "concurrent_requests", "cpu", "memory", "gpu_memory", "backlog", "custom"]
METRIC_KINDS: tuple[str, ...] = typing.get_args(MetricKind)

# What each metric's target means, per replica (shown by describe and the docs).
METRIC_UNITS: dict[str, str] = {
    "qps": "requests/s per replica",
    "concurrent_requests": "requests in flight per replica",
    "cpu": "% of the replica's cores (metadata.cpu, else one core)",
    "memory": "MiB resident per replica",
    "gpu_memory": "MiB of GPU memory per replica",
    "backlog": "queued async requests per replica",
    "custom": "value of the scraped metric per replica",
}

# Names EAS and users write → our metric kind. Lower-cased before lookup.
METRIC_ALIASES: dict[str, str] = {
    "qps": "qps",
    "rps": "qps",
    "concurrent_requests": "concurrent_requests",
    "concurrency": "concurrent_requests",
    "cpu": "cpu",
    "memory": "memory",
    "gpu_memory": "gpu_memory",
    "gpu[memory]": "gpu_memory",
    "backlog": "backlog",
    "queue[backlog]": "backlog",
    "custom": "custom",
}

PROM_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_CUSTOM_RE = re.compile(r"custom\[(?P<name>[^\]]+)\]")


class Defaults:
    """Defaults of a policy, each with its reason (docs/autoscaling.md repeats them)."""

    SCALE_UP_WINDOW_S = 0.0
    """HPA's default: capacity is added as soon as the load needs it. A late scale-up costs a
    cold start on top of the lateness; the panic rule below already guards against bursts."""
    SCALE_DOWN_WINDOW_S = 300.0
    """HPA's and EAS's default: keep the highest recommendation of the last 5 minutes, so a
    lull between bursts does not stop replicas that the next burst needs (no flapping)."""
    TOLERANCE = 0.1
    """EAS's 10%: no change while the metric is within ±10% of what the current count can take."""
    METRIC_WINDOW_S = 10.0
    """Averaging window of a metric. Shorter than Knative's 60 s stable window because the
    stabilization windows above already smooth the decisions; long enough to span a few 2 s
    requests so concurrency is not read as 0 between them."""
    PANIC_WINDOW_S = 2.0
    """Knative's panic idea with a short window: a burst is seen within 2 s. 0 means the latest
    reading (the fastest reaction, e.g. with a 0 s up window)."""
    PANIC_THRESHOLD = 2.0
    """Knative's 200%: load at least twice what the Ready replicas can take skips the up window."""
    SCALE_TO_ZERO_GRACE_S = 600.0
    """EAS onZero.scaleDownGracePeriodSeconds: 10 minutes without a request before 0 replicas."""
    ACTIVATION_REPLICAS = 1
    """EAS onZero.scaleUpActivationReplicas: replicas started when a request finds none."""
    MAX_SCALE_UP_RATE = 2.0
    """HPA's 100% per period: at most double the count per `RATE_PERIOD_S`..."""
    MAX_SCALE_UP_STEP = 4
    """...or add 4 replicas (HPA's 4 pods), whichever is more."""
    RATE_PERIOD_S = 15.0
    """HPA's period for the two limits above."""
    TIMEZONE = "UTC"
    """Cron rules without a time zone run in UTC: the same on every machine."""
    PRESCALE_FALLBACK_S = 30.0
    """Lead of a cron rule's pre-scaling before any cold start was measured."""


def parse_duration(v: Any) -> Any:
    """Seconds from a number or a string: ``60``, ``"60s"``, ``"10m"``, ``"1h"``, ``"500ms"``."""
    if isinstance(v, bool):
        raise ValueError("must be a duration such as 60, '60s', '10m' or '1h'")
    if isinstance(v, int | float):
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", v)
        if m:
            n = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
            return int(n) if n == int(n) else n
    raise ValueError(f"{v!r} is not a duration: write seconds (60) or '500ms', '60s', '10m', '1h'")


Duration = Annotated[Number, BeforeValidator(parse_duration), Field(ge=0)]


def check_timezone(tz: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} (an IANA name: 'UTC', 'Asia/Shanghai')") from None
    return tz


def check_cron(expr: str, *, seconds_first: bool | None) -> bool:
    """Validate ``expr``; whether it has a seconds field first (6 fields). ``seconds_first``: True
    requires 6 fields (EAS ScaleJobs), None accepts 5 (minute first) or 6 (seconds first)."""
    n = len(expr.split())
    if seconds_first and n != 6:
        raise ValueError(f"{expr!r}: EAS schedules have 6 fields, seconds first ('0 0 9 * * MON-FRI')")
    if n not in (5, 6):
        raise ValueError(f"{expr!r}: a cron expression has 5 fields (minute first) or 6 (seconds first)")
    six = n == 6
    if not croniter.is_valid(expr, second_at_beginning=six):
        raise ValueError(f"{expr!r} is not a valid cron expression")
    return six


def metric_kind(name: str) -> tuple[str, str | None]:
    """(kind, custom metric name) for a metric name as written; ValueError when unknown.

    A Prometheus name with a colon (``vllm:num_requests_running``) or ``custom[<name>]`` is a
    custom metric scraped from the replicas' /metrics."""
    kind = METRIC_ALIASES.get(name.strip().lower())
    if kind is not None:
        return kind, None
    m = _CUSTOM_RE.fullmatch(name.strip())
    if m and PROM_NAME_RE.fullmatch(m.group("name")):
        return "custom", m.group("name")
    if ":" in name and PROM_NAME_RE.fullmatch(name):
        return "custom", name
    raise ValueError(
        f"unknown metric {name!r}; one of {', '.join(METRIC_KINDS)} (EAS: qps, cpu, gpu[memory], "
        "queue[backlog]), a Prometheus name with a colon such as 'vllm:num_requests_running', "
        "or custom[<prometheus name>]"
    )


# ---- EAS: autoscaler ------------------------------------------------------------------------------


class ScaleStrategy(SpecModel):
    metricName: str
    threshold: Number = Field(gt=0, description="target value per replica (EAS: the threshold)")
    service: str | None = None

    @field_validator("metricName")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        # A version stored by a release that did not check metric names still loads; its unknown
        # metrics are left out of the policy (see :func:`normalise`).
        if not is_stored(info):
            metric_kind(v)
        return v


class StabilizationWindow(SpecModel):
    stabilizationWindowSeconds: Number = Field(ge=0, description="seconds")


class OnZero(SpecModel):
    scaleDownGracePeriodSeconds: Number = Field(
        default=Defaults.SCALE_TO_ZERO_GRACE_S, ge=0, description="seconds without requests before 0 replicas"
    )
    scaleUpActivationReplicas: int = Field(
        default=Defaults.ACTIVATION_REPLICAS, ge=1, description="replicas started when a request finds none"
    )


class Behavior(SpecModel):
    scaleUp: StabilizationWindow | None = None
    scaleDown: StabilizationWindow | None = None
    onZero: OnZero | None = None


class Autoscaler(SpecModel):
    """EAS's autoscaler block (acted on by the autoscaler; see :class:`AutoscalingPolicy`)."""

    min: int = Field(default=1, ge=0)
    max: int = Field(default=1, ge=1)
    scaleStrategies: list[ScaleStrategy] = Field(default_factory=list)
    strategies: dict[str, Number] | None = Field(
        default=None, description='older EAS form: {"qps": 10} (metric name → threshold)'
    )
    behavior: Behavior = Field(default_factory=Behavior)

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: dict[str, Number] | None, info: ValidationInfo) -> dict[str, Number] | None:
        for name, threshold in (v or {}).items():
            if not is_stored(info):
                metric_kind(name)
            if not threshold > 0:
                raise ValueError(f"{name}: threshold must be greater than 0")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaler:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


# ---- EAS: cron scaler -----------------------------------------------------------------------------


class ScaleJob(SpecModel):
    Name: str = Field(min_length=1)
    Schedule: str = Field(description="6 fields, seconds first: '0 0 9 * * MON-FRI'")
    TargetSize: int = Field(ge=0, le=1000, description="replicas from this time on")
    TimeZone: str | None = Field(default=None, description="IANA name; default UTC")

    @field_validator("Schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        check_cron(v, seconds_first=True)
        return v

    @field_validator("TimeZone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)


def check_exclude(v: str) -> str:
    """An excluded date: ``YYYY-MM-DD`` or a 6-field cron expression (EAS) matching the days."""
    try:
        dt.date.fromisoformat(v)
        return v
    except ValueError:
        pass
    try:
        check_cron(v, seconds_first=True)
    except ValueError:
        raise ValueError(
            f"{v!r}: an excluded date is YYYY-MM-DD or a 6-field cron expression ('* * * 25 12 *')"
        ) from None
    return v


class CronScaler(SpecModel):
    """EAS's cron-scaler body: jobs that set the replica count at their times."""

    ScaleJobs: list[ScaleJob] = Field(min_length=1)
    ExcludeDates: list[str] = Field(default_factory=list, description="days on which no job fires")

    @field_validator("ExcludeDates")
    @classmethod
    def _excludes(cls, v: list[str]) -> list[str]:
        return [check_exclude(x) for x in v]


# ---- the field guide: autoscaling -----------------------------------------------------------------


class CustomMetric(SpecModel):
    metric: str = Field(description="Prometheus metric name on each replica's /metrics")
    aggregate: Literal["avg", "max"] = Field(
        default="avg", description="how the replicas' values combine: their mean, or the largest"
    )

    @field_validator("metric")
    @classmethod
    def _name(cls, v: str) -> str:
        if not PROM_NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a Prometheus metric name")
        return v


class MetricSpec(SpecModel):
    metric: str
    target: Number = Field(gt=0, description="per replica, in the metric's unit")
    custom: CustomMetric | None = None

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str) -> str:
        metric_kind(v)
        return v

    @model_validator(mode="after")
    def _custom(self) -> MetricSpec:
        _check_custom(self.metric, self.custom)
        return self


def _check_custom(metric: str, custom: CustomMetric | None) -> None:
    kind, _ = metric_kind(metric)
    if metric.strip().lower() == "custom" and custom is None:
        raise ValueError("metric 'custom' needs custom: {metric: <prometheus name>}")
    if kind != "custom" and custom is not None:
        raise ValueError(f"custom: only for metric 'custom' (metric is {metric!r})")


class ScaleRule(SpecModel):
    name: str = Field(min_length=1)
    cron: str = Field(description="when the rule starts: 5 fields (minute first) or 6 (seconds first)")
    min_replicas: int = Field(ge=0, le=1000)
    max_replicas: int = Field(ge=0, le=1000)
    timezone: str | None = Field(default=None, description="IANA name; default autoscaling.timezone")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        check_cron(v, seconds_first=None)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)

    @model_validator(mode="after")
    def _bounds(self) -> ScaleRule:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        return self


class Autoscaling(SpecModel):
    """The field guide's block (an OpenEAS extension: EAS does not use this name)."""

    metric: str | None = None
    target: Number | None = Field(default=None, gt=0, description="per replica, in the metric's unit")
    custom: CustomMetric | None = None
    metrics: list[MetricSpec] = Field(default_factory=list, description="several metrics: the highest wins")
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=1, ge=0, le=1000)
    scale_up_stabilization_window: Duration | None = None
    scale_down_stabilization_window: Duration | None = None
    tolerance: float | None = Field(default=None, ge=0, lt=1, description="fraction, 0.1 = ±10%")
    metric_window: Duration | None = None
    panic_window: Duration | None = None
    panic_threshold: float | None = Field(default=None, gt=1, description="load / capacity of Ready replicas")
    scale_to_zero_grace: Duration | None = None
    activation_replicas: int | None = Field(default=None, ge=1, le=1000)
    max_scale_up_rate: float | None = Field(default=None, ge=1, description="factor per rate period")
    timezone: str | None = None
    prescale_lead: Duration | None = Field(
        default=None, description="start a rule's replicas this early (default: measured p90 cold start)"
    )
    rules: list[ScaleRule] = Field(default_factory=list)

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        if v is not None:
            metric_kind(v)
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        return None if v is None else check_timezone(v)

    @model_validator(mode="after")
    def _shape(self) -> Autoscaling:
        if self.metric is not None:
            if self.target is None:
                raise ValueError("target: is required with metric (per replica)")
            _check_custom(self.metric, self.custom)
        elif self.target is not None or self.custom is not None:
            raise ValueError("metric: is required with target/custom")
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas ({self.max_replicas})"
            )
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"rules: names must be unique ({', '.join(sorted(dup))})")
        return self


# ---- the one policy -------------------------------------------------------------------------------


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricTarget(_Frozen):
    kind: str  # one of METRIC_KINDS
    target: float  # per replica, in METRIC_UNITS[kind]
    custom_metric: str | None = None  # Prometheus name when kind == "custom"
    aggregate: Literal["avg", "max"] = "avg"

    @property
    def key(self) -> str:
        """A stable name: ``concurrent_requests``, ``custom:vllm:num_requests_running``."""
        return f"custom:{self.custom_metric}" if self.kind == "custom" else self.kind


class CronRule(_Frozen):
    name: str
    cron: str
    seconds_first: bool  # 6 fields, seconds first (EAS); else 5 fields, minute first
    min_replicas: int
    max_replicas: int
    timezone: str
    exclude: tuple[str, ...] = ()  # YYYY-MM-DD or 6-field cron expressions: days it does not fire


class AutoscalingPolicy(_Frozen):
    """What the autoscaler acts on; every duration in seconds, every count in replicas."""

    source: Literal["autoscaler", "autoscaling", "cronScaler"]
    metrics: tuple[MetricTarget, ...]
    min_replicas: int
    max_replicas: int
    scale_up_window_s: float = Defaults.SCALE_UP_WINDOW_S
    scale_down_window_s: float = Defaults.SCALE_DOWN_WINDOW_S
    tolerance: float = Defaults.TOLERANCE
    metric_window_s: float = Defaults.METRIC_WINDOW_S
    panic_window_s: float = Defaults.PANIC_WINDOW_S
    panic_threshold: float = Defaults.PANIC_THRESHOLD
    scale_to_zero_grace_s: float = Defaults.SCALE_TO_ZERO_GRACE_S
    activation_replicas: int = Defaults.ACTIVATION_REPLICAS
    max_scale_up_rate: float = Defaults.MAX_SCALE_UP_RATE
    max_scale_up_step: int = Defaults.MAX_SCALE_UP_STEP
    rate_period_s: float = Defaults.RATE_PERIOD_S
    rules: tuple[CronRule, ...] = ()
    prescale_lead_s: float | None = None  # None: the measured p90 cold start

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


def _float(v: Number | None, default: float) -> float:
    return default if v is None else float(v)


def _known_name(name: str) -> bool:
    try:
        metric_kind(name)
    except ValueError:
        return False
    return True


def _target(name: str, threshold: Number, custom: CustomMetric | None = None) -> MetricTarget:
    kind, custom_name = metric_kind(name)
    if custom is not None:
        custom_name = custom.metric
    return MetricTarget(
        kind=kind,
        target=float(threshold),
        custom_metric=custom_name,
        aggregate=custom.aggregate if custom is not None else "avg",
    )


def _cron_rules(cron: CronScaler, base_max: int | None) -> list[CronRule]:
    """EAS jobs set the count: with an autoscaler, TargetSize becomes the floor (and the ceiling
    is raised to it if needed); alone, it is the count (min = max = TargetSize)."""
    return [
        CronRule(
            name=j.Name,
            cron=j.Schedule,
            seconds_first=True,
            min_replicas=j.TargetSize,
            max_replicas=j.TargetSize if base_max is None else max(base_max, j.TargetSize),
            timezone=j.TimeZone or Defaults.TIMEZONE,
            exclude=tuple(cron.ExcludeDates),
        )
        for j in cron.ScaleJobs
    ]


def normalise(
    autoscaler: Autoscaler | None,
    autoscaling: Autoscaling | None,
    cron: CronScaler | None,
    instance: int,
) -> AutoscalingPolicy | None:
    """The one policy of a spec (None: the count is what `instance` or `openeas scale` says)."""
    if autoscaler is not None:
        b = autoscaler.behavior
        written = [(s.metricName, s.threshold) for s in autoscaler.scaleStrategies]
        written += list((autoscaler.strategies or {}).items())
        # a stored version may name a metric this release does not know: it is left out
        metrics = [_target(n, t) for n, t in written if _known_name(n)]
        on_zero = b.onZero or OnZero()
        return AutoscalingPolicy(
            source="autoscaler",
            metrics=tuple(_dedupe(metrics)),
            min_replicas=autoscaler.min,
            max_replicas=autoscaler.max,
            scale_up_window_s=_float(
                b.scaleUp.stabilizationWindowSeconds if b.scaleUp else None, Defaults.SCALE_UP_WINDOW_S
            ),
            scale_down_window_s=_float(
                b.scaleDown.stabilizationWindowSeconds if b.scaleDown else None,
                Defaults.SCALE_DOWN_WINDOW_S,
            ),
            scale_to_zero_grace_s=float(on_zero.scaleDownGracePeriodSeconds),
            activation_replicas=on_zero.scaleUpActivationReplicas,
            rules=tuple(_cron_rules(cron, autoscaler.max)) if cron else (),
        )
    if autoscaling is not None:
        a = autoscaling
        metrics = [_target(a.metric, a.target, a.custom)] if a.metric and a.target else []
        metrics += [_target(m.metric, m.target, m.custom) for m in a.metrics]
        tz = a.timezone or Defaults.TIMEZONE
        rules = [
            CronRule(
                name=r.name,
                cron=r.cron,
                seconds_first=len(r.cron.split()) == 6,
                min_replicas=r.min_replicas,
                max_replicas=r.max_replicas,
                timezone=r.timezone or tz,
            )
            for r in a.rules
        ]
        if cron is not None:
            rules += _cron_rules(cron, a.max_replicas)
        return AutoscalingPolicy(
            source="autoscaling",
            metrics=tuple(_dedupe(metrics)),
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            scale_up_window_s=_float(a.scale_up_stabilization_window, Defaults.SCALE_UP_WINDOW_S),
            scale_down_window_s=_float(a.scale_down_stabilization_window, Defaults.SCALE_DOWN_WINDOW_S),
            tolerance=_float(a.tolerance, Defaults.TOLERANCE),
            metric_window_s=max(0.05, _float(a.metric_window, Defaults.METRIC_WINDOW_S)),
            panic_window_s=_float(a.panic_window, Defaults.PANIC_WINDOW_S),  # 0: the latest reading
            panic_threshold=_float(a.panic_threshold, Defaults.PANIC_THRESHOLD),
            scale_to_zero_grace_s=_float(a.scale_to_zero_grace, Defaults.SCALE_TO_ZERO_GRACE_S),
            activation_replicas=a.activation_replicas or Defaults.ACTIVATION_REPLICAS,
            max_scale_up_rate=_float(a.max_scale_up_rate, Defaults.MAX_SCALE_UP_RATE),
            rules=tuple(rules),
            prescale_lead_s=None if a.prescale_lead is None else float(a.prescale_lead),
        )
    if cron is not None:
        return AutoscalingPolicy(
            source="cronScaler",
            metrics=(),
            min_replicas=instance,
            max_replicas=instance,
            rules=tuple(_cron_rules(cron, None)),
        )
    return None


def _dedupe(metrics: list[MetricTarget]) -> list[MetricTarget]:
    """One target per metric: a metric written twice keeps its last target."""
    by_key = {m.key: m for m in metrics}
    return list(by_key.values())

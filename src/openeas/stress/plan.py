"""A stress test's plan: the EAS benchmark-task JSON and the CLI's options, validated.

Everything a run will do is decided here, before any request is sent: the steps (a ramp of
offered rates or of concurrency levels), the request bodies, the bounds. A bad plan raises
:class:`PlanError` with one ``field: reason`` line per problem, naming the field as the user wrote
it (``optional.minQPS``, ``data.path``, ``--max-qps``).

EAS benchmark-task JSON accepted (the fields OpenEAS acts on; units in brackets)::

    {"base":     {"duration": 600 [s], "qps": 100 [req/s, manual], "concurrency": 8 [manual]},
     "service":  {"serviceName": "svc"},
     "data":     {"path": "requests.jsonl", "content": "<one request per line>"},
     "http":     {"headers": {"X-A": "b"}, "timeout": 30000 [ms], "method": "POST", "path": "/v1/..."},
     "optional": {"mode": "auto|scan|manual", "minQPS": 10, "maxQPS": 500, "qpsGrowthDelta": 50,
                  "adjustInterval": 5 [s], "maxRT": 200 [ms], "faultTolerate": 0.01 [fraction],
                  "faultAction": "stop|continue"}}
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from openeas.errors import OpenEASError
from openeas.userfile import UserFileError, read_regular

MAX_DURATION_S = 3600.0
"""No stress test runs longer than an hour, whatever the plan says."""
MAX_REQUESTS_CAP = 10_000_000
"""No stress test sends more requests than this."""
MAX_QPS_CAP = 100_000.0
"""Offered rates above this are refused (one generator core does far less)."""
MAX_CONCURRENCY_CAP = 10_000
MAX_DATA_BYTES = 64 * 1024 * 1024
"""data.path: a larger file is refused while it is read (only regular files are read)."""
MAX_BODIES = 100_000


class PlanError(OpenEASError):
    """An invalid stress plan; ``errors`` holds one ``field: reason`` line per problem."""

    code = "invalid_stress_plan"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class Mode(StrEnum):
    AUTO = "auto"  # ramp until the knee (the saturation point), then stop
    SCAN = "scan"  # min → max by a fixed delta every step, stop at the knee or the last step
    MANUAL = "manual"  # one fixed rate (or concurrency) for the whole duration


class Load(StrEnum):
    RATE = "rate"  # open loop: requests at an offered rate, whatever came back
    CONCURRENCY = "concurrency"  # closed loop: N requests always in flight


class Arrival(StrEnum):
    CONSTANT = "constant"  # evenly spaced: 1/rate apart
    POISSON = "poisson"  # exponential gaps of mean 1/rate (independent users)


class FaultAction(StrEnum):
    STOP = "stop"  # end the ramp at the first step past faultTolerate
    CONTINUE = "continue"  # note it and go on to the end of the ramp


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a request target's path (it is written into the request line as
    is), or None: only visible ASCII (0x21..0x7e); a space, CR, LF, any other control character
    or a non-ASCII one must be percent-encoded."""
    for i, c in enumerate(path):
        if not "\x21" <= c <= "\x7e":
            return (
                f"character {c!r} at position {i} is not allowed (control characters, spaces and "
                "non-ASCII characters must be percent-encoded)"
            )
    return None


def _has_control(value: str) -> bool:
    """A header value with a control character other than a tab (CR and LF split the head)."""
    return any((c < " " and c != "\t") or c == "\x7f" for c in value)


class StressPlan(BaseModel):
    """One stress test, validated. Rates are requests per second, times seconds unless named."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(min_length=1, description="service (or group) name")
    mode: Mode = Mode.AUTO
    load: Load = Load.RATE
    arrival: Arrival = Arrival.CONSTANT
    min_qps: float = Field(default=10.0, gt=0, le=MAX_QPS_CAP, description="first step's rate, req/s")
    max_qps: float = Field(default=5000.0, gt=0, le=MAX_QPS_CAP, description="highest rate offered, req/s")
    qps_growth_delta: float | None = Field(
        default=None, gt=0, description="scan: req/s added each step (default: 10 steps from min to max)"
    )
    growth_factor: float = Field(
        default=0.25, gt=0, le=4, description="auto: each step offers (1 + this) x the previous rate"
    )
    qps: float | None = Field(default=None, gt=0, le=MAX_QPS_CAP, description="manual: the rate, req/s")
    min_concurrency: int = Field(default=1, ge=1, le=MAX_CONCURRENCY_CAP)
    max_concurrency: int = Field(default=256, ge=1, le=MAX_CONCURRENCY_CAP)
    concurrency: int | None = Field(default=None, ge=1, le=MAX_CONCURRENCY_CAP, description="manual")
    step_s: float = Field(default=5.0, ge=0.5, le=600, description="length of one step, s (adjustInterval)")
    duration_s: float = Field(default=300.0, gt=0, le=MAX_DURATION_S, description="the whole test's cap, s")
    max_requests: int = Field(default=1_000_000, ge=1, le=MAX_REQUESTS_CAP)
    max_rt_ms: float | None = Field(default=None, gt=0, description="p99 above this (ms) is past the knee")
    latency_factor: float = Field(
        default=3.0, gt=1, description="p99 above this x the first step's p99 is past the knee"
    )
    shortfall: float = Field(
        default=0.05, gt=0, lt=1, description="achieved below offered by more than this fraction: the knee"
    )
    fault_tolerate: float = Field(default=0.01, ge=0, le=1, description="error fraction tolerated per step")
    fault_action: FaultAction = FaultAction.STOP
    timeout_s: float = Field(default=30.0, gt=0, le=600, description="per request, s (http.timeout)")
    method: str = Field(default="POST", pattern=r"^[A-Z]{1,16}$")
    path: str = Field(default="", max_length=2048, description="sub path after /api/predict/<target>")
    headers: dict[str, str] = Field(default_factory=dict)
    data_path: str | None = None
    data_content: str | None = None
    body: str | None = Field(default=None, description="one request body used for every request")
    max_connections: int = Field(default=2000, ge=1, le=MAX_CONCURRENCY_CAP)
    expected_peak_qps: float | None = Field(default=None, gt=0, description="for max_replicas, req/s")
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> StressPlan:
        errs: list[str] = []
        if self.min_qps > self.max_qps:
            errs.append(f"optional.minQPS: {self.min_qps:g} is above optional.maxQPS ({self.max_qps:g})")
        if self.min_concurrency > self.max_concurrency:
            errs.append(
                f"min_concurrency: {self.min_concurrency} is above max_concurrency ({self.max_concurrency})"
            )
        if self.step_s > self.duration_s:
            errs.append(
                f"optional.adjustInterval: one step ({self.step_s:g} s) is longer than base.duration "
                f"({self.duration_s:g} s)"
            )
        if self.mode == Mode.SCAN and self.load == Load.RATE:
            n = len(self.rates())
            if n * self.step_s > self.duration_s:
                errs.append(
                    f"optional.qpsGrowthDelta: the scan from {self.min_qps:g} to {self.max_qps:g} req/s "
                    f"needs {n} steps x {self.step_s:g} s = {n * self.step_s:g} s, more than base.duration "
                    f"({self.duration_s:g} s)"
                )
            planned = sum(r * self.step_s for r in self.rates())
            if planned > self.max_requests:
                errs.append(
                    f"max_requests: the scan sends about {planned:.0f} requests, more than the cap "
                    f"({self.max_requests})"
                )
        if self.mode == Mode.AUTO and self.duration_s < 2 * self.step_s:
            errs.append(
                f"base.duration: auto mode needs room for 2 steps of {self.step_s:g} s at least, "
                f"got {self.duration_s:g} s"
            )
        if self.data_path and self.data_content:
            errs.append("data: give data.path or data.content, not both")
        if self.body is not None and (self.data_path or self.data_content):
            errs.append("--body: give a body template or a data file, not both")
        if self.path and not self.path.startswith("/"):
            errs.append(f"http.path: must start with '/', got {self.path!r}")
        bad = path_problem(self.path)
        if bad:
            errs.append(f"http.path: {bad}")
        for name in self.headers:
            if not name or any(c in name for c in ":\r\n ") or _has_control(self.headers[name]):
                errs.append(f"http.headers.{name}: not a valid header")
            elif name.lower() in ("host", "content-length", "connection", "transfer-encoding"):
                errs.append(f"http.headers.{name}: set by the generator, not by the plan")
        if errs:
            raise ValueError("\n".join(errs))
        return self

    # -- what the plan means ------------------------------------------------------------------------

    def rates(self) -> list[float]:
        """The offered rates of a scan (req/s): min, min + delta, … up to max (inclusive)."""
        if self.mode == Mode.MANUAL:
            return [self.qps or self.min_qps]
        delta = self.qps_growth_delta or max((self.max_qps - self.min_qps) / 10.0, 1e-9)
        out: list[float] = []
        r = self.min_qps
        while r <= self.max_qps * (1 + 1e-9) and len(out) < 10_000:
            out.append(round(r, 6))
            r += delta
        return out

    def concurrencies(self) -> list[int]:
        """The concurrency levels of a closed-loop ramp: doubling from min to max (inclusive)."""
        if self.mode == Mode.MANUAL:
            return [self.concurrency or self.min_concurrency]
        out: list[int] = []
        c = self.min_concurrency
        while c < self.max_concurrency:
            out.append(c)
            c *= 2
        out.append(self.max_concurrency)
        return out

    @property
    def stream(self) -> bool:
        """Whether the requests ask for a streamed answer (then TTFT/TPOT are measured)."""
        return any(b'"stream": true' in b or b'"stream":true' in b for b in load_bodies(self)[:50])


_ERR_PREFIX = {  # pydantic field → the name the user wrote, for messages
    "min_qps": "optional.minQPS",
    "max_qps": "optional.maxQPS",
    "qps_growth_delta": "optional.qpsGrowthDelta",
    "step_s": "optional.adjustInterval",
    "duration_s": "base.duration",
    "max_rt_ms": "optional.maxRT",
    "fault_tolerate": "optional.faultTolerate",
    "fault_action": "optional.faultAction",
    "mode": "optional.mode",
    "timeout_s": "http.timeout (s)",
    "qps": "base.qps",
    "concurrency": "base.concurrency",
}


def make_plan(values: dict[str, Any]) -> StressPlan:
    """Validate ``values`` (StressPlan's field names) into a plan, or raise PlanError."""
    try:
        return StressPlan(**values)
    except ValidationError as exc:
        errors = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            where = _ERR_PREFIX.get(loc, loc)
            msg = str(e.get("msg", "invalid"))
            if not loc:  # the cross-field checks: one line each, already named
                errors += [line.removeprefix("Value error, ") for line in msg.split("\n")]
            else:
                errors.append(f"{where}: {msg.lower()}")
        raise PlanError(errors) from None


# -- the EAS benchmark-task JSON ------------------------------------------------------------------

# section → {EAS key → our field, or None = accepted and ignored (a cloud-only setting)}
_EAS_KEYS: dict[str, dict[str, str | None]] = {
    "base": {"duration": "duration_s", "qps": "qps", "concurrency": "concurrency", "name": None,
             "agentCount": None},
    "service": {"serviceName": "target", "requestToken": None},
    "data": {"path": "data_path", "content": "data_content", "dataType": None},
    "http": {"headers": "headers", "timeout": "timeout_s", "method": "method", "path": "path"},
    "optional": {"mode": "mode", "minQPS": "min_qps", "maxQPS": "max_qps",
                 "qpsGrowthDelta": "qps_growth_delta", "adjustInterval": "step_s",
                 "maxRT": "max_rt_ms", "maxRt": "max_rt_ms",
                 "faultTolerate": "fault_tolerate", "faultAction": "fault_action"},
}  # fmt: skip


def from_eas(doc: Any) -> dict[str, Any]:
    """The plan fields an EAS benchmark-task JSON sets (validated later by :func:`make_plan`)."""
    if not isinstance(doc, dict):
        raise PlanError(["task: must be a JSON object"])
    errors: list[str] = []
    out: dict[str, Any] = {}
    for section, value in doc.items():
        keys = _EAS_KEYS.get(section)
        if keys is None:
            errors.append(f"{section}: unknown section (known: {', '.join(_EAS_KEYS)})")
            continue
        if not isinstance(value, dict):
            errors.append(f"{section}: must be an object")
            continue
        for key, v in value.items():
            if section == "service" and key == "serviceUrl":
                errors.append(
                    "service.serviceUrl: OpenEAS stress-tests only its own services: name one with "
                    "service.serviceName"
                )
                continue
            if key not in keys:
                errors.append(f"{section}.{key}: unknown field (known: {', '.join(keys)})")
                continue
            field = keys[key]
            if field is None:
                continue
            if field == "timeout_s":  # EAS writes the request timeout in milliseconds
                if not isinstance(v, int | float) or isinstance(v, bool):
                    errors.append(f"http.timeout: must be a number of milliseconds, got {v!r}")
                    continue
                v = v / 1000.0
            out[field] = v
    if errors:
        raise PlanError(errors)
    return out


# -- request bodies ---------------------------------------------------------------------------------

_CHAT_DEFAULT = {
    "messages": [{"role": "user", "content": "Write one short sentence about the sea."}],
    "max_tokens": 32,
    "stream": True,
}


def default_body(path: str) -> bytes:
    """A body when the plan gives none: a streamed chat or completion for the OpenAI paths,
    else an empty JSON object."""
    if path.endswith("/chat/completions"):
        return json.dumps(_CHAT_DEFAULT).encode()
    if path.endswith("/completions"):
        return json.dumps({"prompt": "The sea is", "max_tokens": 32, "stream": True}).encode()
    return b"{}"


def _lines(text: str, where: str) -> list[bytes]:
    """One request per non-empty line; each must be one JSON value."""
    bodies: list[bytes] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlanError(
                [
                    f"{where}: line {i} is not one JSON request ({exc.msg}); the data holds one "
                    "request per line (JSON Lines)"
                ]
            ) from None
        bodies.append(line.strip().encode())
        if len(bodies) > MAX_BODIES:
            raise PlanError([f"{where}: more than {MAX_BODIES} requests"])
    if not bodies:
        raise PlanError([f"{where}: holds no request (one JSON request per line expected)"])
    return bodies


_BODY_CACHE: dict[tuple[str | None, str | None, str | None, str], list[bytes]] = {}


def load_bodies(plan: StressPlan) -> list[bytes]:
    """The request bodies, in the order they are sent (cycled). Raises PlanError for a data file
    that is missing, unreadable, too large or not one JSON request per line."""
    key = (plan.data_path, plan.data_content, plan.body, plan.path)
    if key in _BODY_CACHE:
        return _BODY_CACHE[key]
    if plan.data_path:
        p = str(Path(plan.data_path).expanduser())
        try:  # streaming and capped: /dev/zero, a FIFO or a directory is refused, not read
            raw = read_regular(p, "data.path", MAX_DATA_BYTES)
            text = raw.decode()
        except UserFileError as exc:
            raise PlanError([str(exc)]) from None
        except UnicodeDecodeError:
            raise PlanError([f"data.path: {p} is not text (one JSON request per line expected)"]) from None
        except OSError as exc:
            raise PlanError([f"data.path: cannot read {p}: {exc.strerror or exc}"]) from None
        bodies = _lines(text, "data.path")
    elif plan.data_content is not None:
        text = plan.data_content
        try:  # EAS sends data.content as base64; plain text lines are accepted too
            decoded = base64.b64decode(text, validate=True).decode()
            if decoded.strip():
                text = decoded
        except (binascii.Error, ValueError):
            pass
        bodies = _lines(text, "data.content")
    elif plan.body is not None:
        bodies = _lines(plan.body, "--body")[:1]
    else:
        bodies = [default_body(plan.path)]
    if len(_BODY_CACHE) > 16:
        _BODY_CACHE.clear()
    _BODY_CACHE[key] = bodies
    return bodies


def validate(plan: StressPlan) -> list[bytes]:
    """Every check that needs no server: the bodies load. Returns them."""
    return load_bodies(plan)


def build_plan(
    target: str,
    task: Any = None,
    options: dict[str, Any] | None = None,
    check_data_path: Callable[[str], list[str]] | None = None,
) -> StressPlan:
    """The plan for ``target`` from an EAS benchmark task (may be None) and options in
    StressPlan's own names (they win over the task). A task naming another service is an error.
    ``check_data_path``: the problems of ``data.path`` before it is read (the server's host-path
    rule; the CLI reads its own files and passes none)."""
    fields = from_eas(task) if task is not None else {}
    named = fields.pop("target", None)
    if named is not None and named != target:
        raise PlanError([f"service.serviceName: the task names '{named}', the test targets '{target}'"])
    fields.update({k: v for k, v in (options or {}).items() if v is not None})
    fields["target"] = target
    p = make_plan(fields)
    if p.data_path and check_data_path is not None and (problems := check_data_path(p.data_path)):
        raise PlanError(problems)
    load_bodies(p)  # a missing or malformed data file is an error now, before any load
    return p

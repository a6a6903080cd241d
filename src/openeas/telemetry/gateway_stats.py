"""The gateway's per-service counters as the control plane sees them: the wire format, the
receiver, and time windows over what was received (`GatewayStats`).

Every gateway samples, per service, ``arrivals`` (cumulative requests received), ``in_flight``
(being proxied to a replica) and ``held`` (waiting for a replica), per replica its requests
in flight and whether its routing table sends it new ones (`ReplicaSample`), and per service
group member its live answers by status and their latency histogram (`MemberSample`, what the
staged rollout compares), per service its answers likewise (the console's rates), every
`SEND_INTERVAL_S`, and sends them in a datagram to ``DATA/run/control.sock``, plus one at once
when it holds a request (the autoscaler scales from zero on it) or when a service's in-flight count jumps
(it reaches `JUMP_MIN_IN_FLIGHT` or twice what the gateway last sent; such datagrams are at least
`JUMP_GAP_S` apart and name the services that jumped: the autoscaler decides at once on them
instead of at its next tick). The control plane binds that socket (`receive`) and
feeds a `GatewayStats`, which the autoscaler reads through a narrow API: rates and mean
concurrency over a window, the current held count; the drain and scale-in read the replicas and
the staged rollout the group members (`GatewayStats.group`). Everything takes ``now`` from an injected
clock (tests drive it by hand).

How counters become windows:

- A gateway's id is unique per process start; its counters start at 0. A datagram that says the
  gateway started recently (``uptime_s`` at most `FRESH_S`) adds a zero sample at its start, so
  the requests of its first moments are counted; an older gateway (one that ran before this
  control plane) is measured from its first datagram on.
- Between two datagrams a counter is unchanged (a step function). A gateway is alive while its
  datagrams keep coming (it sends every `SEND_INTERVAL_S` even when nothing changed); after
  ``stale_s`` without one it is gone: it counts no more in-flight or held requests, and what it
  counted while it lived still counts in the windows.
- A counter that goes down (a restart under the same id) is a reset: the new value counts from 0,
  so a rate is never negative (Prometheus's ``increase`` does the same).
- Several gateways: their increases and gauges add up.
- "No data" is ``None``, never 0: a service no gateway reported, or whose gateways were all gone
  for the whole window.

Standard library only: the gateway process imports this module (for `encode`, `socket_path`)
and must not import pydantic or SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from bisect import bisect_right
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from openeas.telemetry.answers import EMPTY, MemberSample, add_into, from_wire, minus, to_wire
from openeas.unixdgram import BoundSocket

log = logging.getLogger("openeas.telemetry.gateway_stats")

SOCKET_NAME = "control.sock"  # DATA/run/control.sock, bound by the control plane
SEND_INTERVAL_S = 0.2  # seconds between two datagrams of one gateway (also when nothing changed)
# A service's in-flight count "jumps" when it reaches twice what the gateway last sent, and at
# least this (requests): 0 → 1 is every idle service's first request, 1 → 2 already exceeds a
# concurrency target of 1. A gateway then sends at once, outside its SEND_INTERVAL_S cadence.
JUMP_MIN_IN_FLIGHT = 2
# Seconds between two datagrams sent for jumps (at most 20 a second per gateway, however many
# services jump): a jump inside the gap is sent when the gap ends, not lost.
JUMP_GAP_S = 0.05
# A gateway silent this long is gone (seconds): 15 missed datagrams, far more than a busy event
# loop delays one, and short enough that a dead gateway's held requests stop waking the autoscaler.
DEFAULT_STALE_S = 3.0
# A gateway whose first datagram says it started at most this long ago (seconds) counted from 0 at
# its start; an older one (it ran before this control plane) is counted from its first datagram.
FRESH_S = 2.0
DEFAULT_HORIZON_S = 900.0  # seconds of samples kept: the longest window anyone asks for
MAX_DATAGRAM_BYTES = 32 * 1024  # bytes; more services than fit go in several datagrams
_RECV_BYTES = 64 * 1024
_WIRE_VERSION = 1


def socket_path(data_dir: Path) -> Path:
    """Where the control plane of the server on ``data_dir`` receives gateway counters."""
    return Path(data_dir) / "run" / SOCKET_NAME


@dataclass(frozen=True)
class ServiceSample:
    """One gateway's counters for one service at one instant."""

    arrivals: int  # requests received for the service since the gateway started (cumulative)
    in_flight: int  # requests being proxied to a replica right now
    held: int  # requests waiting for a replica (the service has no routable replica yet)


@dataclass(frozen=True)
class ReplicaSample:
    """One gateway's (or all live gateways' summed) view of one replica at one instant."""

    in_flight: int  # requests sent to the replica and not yet answered
    routed: bool  # the routing table sends it new requests


# --- wire format ----------------------------------------------------------------------------------


def encode(
    gateway_id: str,
    uptime_s: float,
    samples: Mapping[str, ServiceSample],
    jumped: Collection[str] = (),
    *,
    replicas: Mapping[str, ReplicaSample] | None = None,
    groups: Mapping[str, Mapping[str, MemberSample]] | None = None,
    answers: Mapping[str, MemberSample] | None = None,
) -> list[bytes]:
    """The datagrams that carry ``samples`` (one unless they do not fit in MAX_DATAGRAM_BYTES).

    ``{"v": 1, "g": gateway id, "up": seconds since the gateway started,
    "s": {service: [arrivals, in_flight, held]}, "j": [service, …]}``; ``"j"`` (the services in
    ``jumped`` that the datagram carries) only when there are some: a decoder that does not know
    it reads the counters all the same. ``"r": {replica: [in_flight, routed 0/1]}``: every replica
    the gateway knows, in the first datagram only (absent: a gateway that reports no replicas).
    ``"m": {group: {member: [{status: answers}, [latency buckets]]}}``: every group member's live
    traffic, in the first datagram too (absent: a gateway that reports no groups).
    ``"a": {service: [{status: answers}, [latency buckets]]}``: the answers of each service in
    ``answers`` (cumulative, buckets over SERVICE_LATENCY_BUCKETS_S), in the datagram that carries
    its counters (absent: a service not answered yet).
    """
    head = {"v": _WIRE_VERSION, "g": gateway_id, "up": round(uptime_s, 3)}
    out: list[bytes] = []
    part: dict[str, list[int]] = {}
    answered: dict[str, list[object]] = {}
    size = 0
    first: dict[str, object] = {}
    if replicas is not None:
        first["r"] = {rid: [r.in_flight, int(r.routed)] for rid, r in replicas.items()}
        size = sum(len(rid) + 30 for rid in replicas)  # bytes: quotes, two numbers, separators
    if groups is not None:
        first["m"] = {g: {name: to_wire(m) for name, m in members.items()} for g, members in groups.items()}
        # bytes: names, codes and buckets (an upper bound: 12 digits a number)
        size += sum(len(g) + len(n) + 16 * (len(m.by_code) + len(m.buckets)) + 20
                    for g, members in groups.items() for n, m in members.items())  # fmt: skip

    def flush() -> None:
        msg: dict[str, object] = {**head, **({} if out else first), "s": part}
        if answered:
            msg["a"] = answered
        jumps = [name for name in part if name in jumped]
        if jumps:
            msg["j"] = jumps
        out.append(json.dumps(msg, separators=(",", ":")).encode())

    for name, s in samples.items():
        entry = [s.arrivals, s.in_flight, s.held]
        # bytes: quotes, three numbers, separators (an upper bound), the name again if it jumped
        cost = len(name) + 40 + (len(name) + 4 if name in jumped else 0)
        a = answers.get(name) if answers is not None else None
        if a is not None:  # bytes: the name again, codes and buckets (12 digits a number at most)
            cost += len(name) + 16 * (len(a.by_code) + len(a.buckets)) + 20
        if part and size + cost > MAX_DATAGRAM_BYTES:
            flush()
            part, answered, size = {}, {}, 0
        part[name] = entry
        if a is not None:
            answered[name] = to_wire(a)
        size += cost
    flush()
    return out


def decode(data: bytes) -> tuple[str, float, dict[str, ServiceSample], list[str]]:
    """(gateway id, uptime seconds, samples, services that jumped) of a datagram; ValueError when
    it is not one."""
    d = decode_all(data)
    return d.gateway_id, d.uptime_s, d.samples, d.jumped


@dataclass(frozen=True)
class Datagram:
    """One decoded datagram of one gateway."""

    gateway_id: str
    uptime_s: float  # seconds since the gateway started
    samples: dict[str, ServiceSample]
    jumped: list[str]
    replicas: dict[str, ReplicaSample] | None  # None: the datagram has no replica report
    groups: dict[str, dict[str, MemberSample]] | None  # None: the datagram has no group report
    answers: dict[str, MemberSample]  # the services it carries that were answered


def decode_all(data: bytes) -> Datagram:
    """Everything a datagram carries; ValueError when it is not one."""
    try:
        msg = json.loads(data)
        if msg.get("v") != _WIRE_VERSION:
            raise ValueError(f"unknown version {msg.get('v')!r}")
        gid = str(msg["g"])
        up = float(msg["up"])
        samples = {}
        for name, (arrivals, in_flight, held) in msg["s"].items():
            samples[str(name)] = ServiceSample(int(arrivals), int(in_flight), int(held))
        jumped = [str(name) for name in msg.get("j", ())]
        replicas = None
        if "r" in msg:
            replicas = {str(rid): ReplicaSample(int(n), bool(on)) for rid, (n, on) in msg["r"].items()}
        groups = None
        if "m" in msg:
            groups = {str(g): from_wire(members) for g, members in msg["m"].items()}
        answers = from_wire(msg.get("a", {}))
    except (TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a gateway-stats datagram: {e!r}") from None
    return Datagram(gid, up, samples, jumped, replicas, groups, answers)


# --- time windows -----------------------------------------------------------------------------------

# One sample: (time s, arrivals, in_flight, held). Stored only when a value changed.
_Sample = tuple[float, int, int, int]
_T: Final = 0
_ARRIVALS: Final = 1
_IN_FLIGHT: Final = 2
_HELD: Final = 3


class _Series:
    """One gateway's samples of one service, oldest first; each differs from the one before."""

    __slots__ = ("samples", "times")

    def __init__(self) -> None:
        self.samples: list[_Sample] = []
        self.times: list[float] = []

    def add(self, sample: _Sample) -> None:
        last = self.samples[-1] if self.samples else None
        if last is not None and sample[1:] == last[1:]:
            return  # unchanged: the step function already says so
        if last is not None and sample[_T] < last[_T]:
            return  # out of order (a clock that went back): keep what we have
        self.samples.append(sample)
        self.times.append(sample[_T])

    def trim(self, before: float) -> None:
        """Forget samples older than ``before``, but the last one of them (the value at ``before``)."""
        i = bisect_right(self.times, before) - 1
        if i > 0:
            del self.samples[:i]
            del self.times[:i]


class _Gateway:
    __slots__ = ("answers", "first_seen", "groups", "last_seen", "replicas", "replicas_at", "series")

    def __init__(self, now: float) -> None:
        self.first_seen = now  # time of its first datagram
        self.last_seen = now  # time of its last datagram
        self.series: dict[str, _Series] = {}
        self.replicas: dict[str, ReplicaSample] = {}  # its latest replica report
        self.replicas_at: float | None = None  # when that report was received; None: never
        self.groups: dict[str, dict[str, MemberSample]] | None = None  # its latest group report
        # service → (its answers when this control plane started counting them, the latest)
        self.answers: dict[str, tuple[MemberSample, MemberSample]] = {}

    def answered(self) -> dict[str, MemberSample]:
        """Each service's answers counted since this control plane started counting them."""
        return {service: minus(latest, base) for service, (base, latest) in self.answers.items()}


class GatewayStats:
    """Control-plane side: receives the gateways' samples and keeps a time window per service.

    Not thread-safe: the receiver and the readers run on one event loop.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        horizon_s: float = DEFAULT_HORIZON_S,
        on_demand: Callable[[str], None] | None = None,
        *,
        stale_s: float = DEFAULT_STALE_S,
    ) -> None:
        self.clock = clock  # seconds; `receive` stamps datagrams with it
        self.horizon_s = horizon_s  # seconds of samples kept
        self.stale_s = stale_s  # seconds without a datagram after which a gateway is gone
        # Called with a service's name whenever a datagram says requests are held for it (at
        # once when the gateway holds one, then with every datagram while any is held) or that
        # its in-flight count jumped. The autoscaler sets it (any time) to wake its loop: it
        # scales the service from zero, or up, without waiting for its next tick.
        self.on_demand = on_demand
        self._gateways: dict[str, _Gateway] = {}
        self._first_seen: dict[str, float] = {}  # service → time of its oldest sample kept
        self._retired: dict[str, MemberSample] = {}  # answers of gateways forgotten by `_trim`
        self._trimmed_at = -math.inf

    # --- input ----------------------------------------------------------------------------------
    def observe(
        self,
        gateway_id: str,
        samples: Mapping[str, ServiceSample],
        now: float,
        *,
        uptime_s: float | None = None,
        jumped: Collection[str] = (),
        replicas: Mapping[str, ReplicaSample] | None = None,
        groups: Mapping[str, Mapping[str, MemberSample]] | None = None,
        answers: Mapping[str, MemberSample] | None = None,
    ) -> None:
        """Record one datagram of ``gateway_id`` received at ``now``; ``uptime_s``: seconds since
        that gateway started (its counters were 0 then), when it said; ``jumped``: the services
        whose in-flight count jumped (the gateway sent at once for them); ``replicas``: its whole
        replica report, when the datagram carried one; ``groups``: its whole group report, likewise;
        ``answers``: the answers of the services it carried that were answered."""
        gw = self._gateways.get(gateway_id)
        if gw is None:
            gw = self._gateways[gateway_id] = _Gateway(now)
        if replicas is not None:
            gw.replicas, gw.replicas_at = dict(replicas), now
        if groups is not None:
            gw.groups = {g: dict(members) for g, members in groups.items()}
        # When the counters of a service this gateway did not report before were 0: at the
        # gateway's start if that was moments ago; at its previous datagram if it has reported for
        # a while (a service routed since); else unknown (a gateway older than this control plane,
        # or the other datagrams of its first round): its first sample is the baseline.
        if uptime_s is not None and 0 <= uptime_s <= FRESH_S:
            zero_at: float | None = now - uptime_s
        elif gw.last_seen - gw.first_seen > 2 * SEND_INTERVAL_S:
            zero_at = gw.last_seen
        else:
            zero_at = None
        for service, a in (answers or {}).items():
            had = gw.answers.get(service)
            gw.answers[service] = (had[0] if had else EMPTY if zero_at is not None else a, a)
        gw.last_seen = max(gw.last_seen, now)
        demand = []
        for service, s in samples.items():
            series = gw.series.get(service)
            if series is None:
                series = gw.series[service] = _Series()
                if zero_at is not None and zero_at < now:
                    series.add((zero_at, 0, 0, 0))
            series.add((now, s.arrivals, s.in_flight, s.held))
            first = series.times[0]
            if first < self._first_seen.get(service, math.inf):
                self._first_seen[service] = first
            if s.held > 0 or service in jumped:
                demand.append(service)
        if now - self._trimmed_at >= 1.0:
            self._trim(now)
        if self.on_demand is not None:
            for service in demand:
                try:
                    self.on_demand(service)
                except Exception:  # the autoscaler's problem must not stop the receiver
                    log.exception("on_demand(%r) failed", service)

    def _trim(self, now: float) -> None:
        self._trimmed_at = now
        before = now - self.horizon_s
        for gid, gw in list(self._gateways.items()):
            if gw.last_seen < before:  # gone for longer than any window: only its answers count
                add_into(self._retired, gw.answered())
                del self._gateways[gid]
                continue
            for series in gw.series.values():
                series.trim(before)
        first: dict[str, float] = {}
        for gw in self._gateways.values():
            for service, series in gw.series.items():
                first[service] = min(first.get(service, math.inf), series.times[0])
        self._first_seen = first

    # --- windows --------------------------------------------------------------------------------
    def _alive(self, gw: _Gateway, now: float) -> bool:
        return now - gw.last_seen <= self.stale_s

    def _reporting(self, service: str) -> Iterator[tuple[_Gateway, _Series]]:
        for gw in self._gateways.values():
            series = gw.series.get(service)
            if series is not None:
                yield gw, series

    def _span(self, service: str, window_s: float, now: float) -> tuple[float, float] | None:
        """The part of ``(now - window_s, now]`` the samples of ``service`` cover, or None."""
        first = self._first_seen.get(service)
        if first is None:
            return None
        end = -math.inf
        for gw, _ in self._reporting(service):
            end = max(end, now if self._alive(gw, now) else min(gw.last_seen, now))
        start = max(now - window_s, first)
        return (start, end) if end > start else None

    def arrival_rate(self, service: str, window_s: float, now: float) -> float | None:
        """Requests per second received for ``service`` over the last ``window_s`` seconds, all
        gateways together; None when no sample covers any of that window. A window of 0 is the
        latest reading: the rate over the last report interval (``SEND_INTERVAL_S``)."""
        span = self._span(service, window_s if window_s > 0 else SEND_INTERVAL_S, now)
        if span is None:
            return None
        start, end = span
        total = 0
        for _, series in self._reporting(service):
            total += _increase(series, start, end)
        return total / (end - start)

    def requests_between(self, service: str, start: float, end: float) -> int:
        """Requests received for ``service`` in ``(start, end]``, all gateways together (the
        request meter reads it every few seconds; ``start`` must be within the horizon)."""
        return sum(_increase(series, start, end) for _, series in self._reporting(service))

    def per_second(self, service: str, start: float, seconds: int) -> tuple[list[int], list[float]]:
        """Each second ``(start + i, start + i + 1]`` of ``seconds``: requests received and
        request-seconds spent in flight (∫ in-flight dt), all gateways together: a trace of the
        gateway's own counts (docs/simulate.md). Seconds older than the horizon count 0."""
        arrivals = [0] * seconds
        busy = [0.0] * seconds
        now = self.clock()
        for gw, series in self._reporting(service):
            until = now if self._alive(gw, now) else gw.last_seen  # a gone gateway has nothing in flight
            for i in range(seconds):
                lo, hi = start + i, start + i + 1
                arrivals[i] += _increase(series, lo, hi)
                busy[i] += _integral(series, _IN_FLIGHT, lo, max(lo, min(hi, until)))
        return arrivals, busy

    def mean_in_flight(self, service: str, window_s: float, now: float) -> float | None:
        """Mean number of requests being proxied to a replica of ``service`` over the last
        ``window_s`` seconds (time-weighted, all gateways together); None when no data. A window
        of 0 is the latest reading of every live gateway."""
        if window_s <= 0:
            latest = self.current(service, now)
            return float(latest.in_flight) if latest is not None else None
        span = self._span(service, window_s, now)
        if span is None:
            return None
        start, end = span
        area = 0.0
        for gw, series in self._reporting(service):
            gw_end = min(end, now if self._alive(gw, now) else gw.last_seen)
            area += _integral(series, _IN_FLIGHT, start, gw_end)
        return area / (end - start)

    def held(self, service: str, now: float) -> int:
        """Requests held for ``service`` now (latest value of every live gateway); 0 if none."""
        return sum(
            series.samples[-1][_HELD] for gw, series in self._reporting(service) if self._alive(gw, now)
        )

    def current(self, service: str, now: float) -> ServiceSample | None:
        """The latest counters of ``service`` summed over live gateways; None when none reports it."""
        latest = [series.samples[-1] for gw, series in self._reporting(service) if self._alive(gw, now)]
        if not latest:
            return None
        return ServiceSample(
            arrivals=sum(s[_ARRIVALS] for s in latest),
            in_flight=sum(s[_IN_FLIGHT] for s in latest),
            held=sum(s[_HELD] for s in latest),
        )

    def last_seen(self, service: str) -> float | None:
        """When a gateway last reported ``service`` (clock seconds); None if never."""
        seen = [gw.last_seen for gw, _ in self._reporting(service)]
        return max(seen) if seen else None

    # --- replicas -------------------------------------------------------------------------------
    def replica(self, replica_id: str, now: float, since: float) -> ReplicaSample | None:
        """``replica_id`` as every live gateway reported it after ``since`` (in flight summed,
        routed by any); a replica a gateway did not name is neither routed nor busy there. None
        while some live gateway has not reported its replicas after ``since``, or when no gateway
        is alive (nothing is known: the caller decides without the gateways)."""
        live = [gw for gw in self._gateways.values() if self._alive(gw, now)]
        if not live or any(gw.replicas_at is None or gw.replicas_at <= since for gw in live):
            return None
        seen = [gw.replicas.get(replica_id, ReplicaSample(0, False)) for gw in live]
        return ReplicaSample(sum(r.in_flight for r in seen), any(r.routed for r in seen))

    def replica_in_flight(self, now: float) -> dict[str, int]:
        """Each replica's requests in flight now, live gateways' latest reports summed (safe from
        another thread: it reads a snapshot; each report is replaced whole)."""
        out: dict[str, int] = {}
        for gw in list(self._gateways.values()):
            if self._alive(gw, now):
                for rid, r in gw.replicas.items():
                    out[rid] = out.get(rid, 0) + r.in_flight
        return out

    # --- groups ---------------------------------------------------------------------------------
    def group(self, group: str, now: float) -> dict[str, MemberSample] | None:
        """Each member of ``group`` with its live traffic, live gateways' latest reports summed
        (cumulative; a gateway that left takes its counts with it, which reads as a reset); a
        member no gateway counted is absent. None when no live gateway reported its groups, or
        none of them routes ``group`` (nothing is known). Safe from another thread: each report
        is replaced whole."""
        out: dict[str, MemberSample] = {}
        known = False
        for gw in list(self._gateways.values()):
            reported = gw.groups
            if reported is None or not self._alive(gw, now) or group not in reported:
                continue
            known = True
            add_into(out, reported[group])
        return out if known else None

    # --- answers --------------------------------------------------------------------------------
    def answers(self) -> dict[str, MemberSample]:
        """Each service's answers by status and latency (buckets over SERVICE_LATENCY_BUCKETS_S),
        summed over every gateway, counted as `arrival_rate` counts arrivals: from a fresh
        gateway's start, an older one's first datagram on; a gateway that left keeps its answers in
        the sum, so it never goes down (two readings' difference is what was answered between them)."""
        out = dict(self._retired)
        for gw in list(self._gateways.values()):
            add_into(out, gw.answered())
        return out

    def services(self) -> list[str]:
        """Every service some gateway reported (within the horizon)."""
        return sorted(self._first_seen)


def _increase(series: _Series, start: float, end: float) -> int:
    """Arrivals counted in ``(start, end]``: the sum of the counter's increases, a drop being a
    reset (the new value counts from 0). The value at ``start`` is the last sample at or before it;
    without one, the first sample is the baseline."""
    samples, times = series.samples, series.times
    i = bisect_right(times, start)
    j = bisect_right(times, end)
    if i == 0:
        if j == 0:
            return 0
        prev = samples[0][_ARRIVALS]
        i = 1
    else:
        prev = samples[i - 1][_ARRIVALS]
    total = 0
    for k in range(i, j):
        value = samples[k][_ARRIVALS]
        total += value - prev if value >= prev else value
        prev = value
    return total


def _integral(series: _Series, field: Literal[2, 3], start: float, end: float) -> float:
    """∫ field dt over ``[start, end]`` of the step function (0 before the first sample)."""
    if end <= start:
        return 0.0
    samples, times = series.samples, series.times
    i = bisect_right(times, start) - 1  # the sample in force at start (-1: none yet)
    area = 0.0
    t = start
    value = samples[i][field] if i >= 0 else 0
    for k in range(i + 1, len(samples)):
        tk = times[k]
        if tk >= end:
            break
        area += value * (tk - t)
        t, value = tk, samples[k][field]
    return area + value * (end - t)


# --- the receiver -----------------------------------------------------------------------------------


async def receive(data_dir: Path, stats: GatewayStats, stop: asyncio.Event) -> None:
    """Bind ``DATA/run/control.sock`` and feed ``stats`` with every datagram until ``stop`` is set.

    Datagrams are stamped with ``stats.clock()`` when read; malformed ones are ignored (counted
    in the log at debug level). A socket file left by a killed control plane is replaced."""
    bound = BoundSocket(socket_path(data_dir))
    sock = bound.sock
    loop = asyncio.get_running_loop()

    def readable() -> None:
        now = stats.clock()
        while True:
            try:
                data = sock.recv(_RECV_BYTES)
            except OSError:  # BlockingIOError: drained
                return
            try:
                d = decode_all(data)
            except ValueError as e:
                log.debug("ignored a datagram: %s", e)
                continue
            stats.observe(
                d.gateway_id, d.samples, now, uptime_s=d.uptime_s, jumped=d.jumped, replicas=d.replicas,
                groups=d.groups, answers=d.answers,
            )  # fmt: skip

    loop.add_reader(sock.fileno(), readable)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(sock.fileno())
        bound.close()

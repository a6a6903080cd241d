"""Owns load balancing: one small protocol, a registry by name, no if/elif factory.

A balancer picks one of a route's upstreams for each request. Upstreams in a connect cool-down or
in ``exclude`` (already failed for this request) are skipped; when every replica is cooling down
the balancer still picks one (trying beats a certain 503). After each pick, ``reason`` says why
(the `X-OpenEAS-Explain` answer header and the per-balancer counters on /metrics). A balancer
whose ``wants_key`` is set gets the request's affinity key (gateway/routing/affinity.py); the gateway
reads no body for the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence
from typing import ClassVar, Protocol

from openeas.gateway.routing.affinity import Ring, load_bound


class Candidate(Protocol):
    """What a balancer may read about an upstream."""

    name: str  # the replica's id and address: its place on an affinity ring
    outstanding: int  # requests sent to it and not yet answered (all services)
    cooldown_until: float  # loop time before which new connections are avoided
    # Read off the replica's own /metrics by the control plane and pushed (never fetched per
    # request); -1 when unknown: requests waiting in its engine, its KV cache use in [0, 1].
    waiting: float
    kv_usage: float


# What key a balancer wants: none (the body is not read), the prompt's prefix, or the session.
NO_KEY = ""
PREFIX = "prefix"
SESSION = "session"


class Balancer(Protocol):
    wants_key: ClassVar[str]  # NO_KEY, PREFIX or SESSION
    reason: str  # why the last pick chose what it chose
    outcome: str  # the same as a short fixed label (the /metrics counters)

    def pick(
        self,
        upstreams: Sequence[Candidate],
        now: float,
        exclude: Container[Candidate] = (),
        key: bytes | None = None,
    ) -> int:
        """Index into ``upstreams`` of the chosen one, or -1 when none is eligible."""
        ...


class UnknownBalancerError(ValueError):
    pass


_REGISTRY: dict[str, Callable[[], Balancer]] = {}


def register_balancer(name: str) -> Callable[[Callable[[], Balancer]], Callable[[], Balancer]]:
    def deco(factory: Callable[[], Balancer]) -> Callable[[], Balancer]:
        if name in _REGISTRY:
            raise ValueError(f"balancer {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def balancer_names() -> list[str]:
    return sorted(_REGISTRY)


def create_balancer(name: str) -> Balancer:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownBalancerError(
            f"unknown balancer {name!r}; known: {', '.join(balancer_names())}"
        ) from None
    return factory()


def _eligible(upstreams: Sequence[Candidate], now: float, exclude: Container[Candidate]) -> list[int]:
    idx = [i for i, u in enumerate(upstreams) if u not in exclude]
    warm = [i for i in idx if upstreams[i].cooldown_until <= now]
    return warm or idx


@register_balancer("least-request")
class LeastRequest:
    """Fewest outstanding requests; ties broken at random so equal replicas share the load."""

    wants_key: ClassVar[str] = NO_KEY
    reason = "fewest outstanding requests"
    outcome = "least"

    def pick(
        self,
        upstreams: Sequence[Candidate],
        now: float,
        exclude: Container[Candidate] = (),
        key: bytes | None = None,
    ) -> int:
        return least_outstanding(upstreams, now, exclude)


def least_outstanding(upstreams: Sequence[Candidate], now: float, exclude: Container[Candidate]) -> int:
    """The eligible upstream with the fewest outstanding requests, ties at random."""
    n = len(upstreams)
    if n == 1:  # the common small case, without allocations
        u = upstreams[0]
        return -1 if u in exclude else 0
    best = -1
    best_load = 0
    ties = 0
    for i in _eligible(upstreams, now, exclude):
        load = upstreams[i].outstanding
        if best < 0 or load < best_load:
            best, best_load, ties = i, load, 1
        elif load == best_load:
            ties += 1
            if random.random() * ties < 1.0:  # reservoir sampling: uniform among the ties
                best = i
    return best


@register_balancer("round-robin")
class RoundRobin:
    """Each eligible replica in turn."""

    wants_key: ClassVar[str] = NO_KEY
    reason = "next in turn"
    outcome = "turn"

    def __init__(self) -> None:
        self._next = 0

    def pick(
        self,
        upstreams: Sequence[Candidate],
        now: float,
        exclude: Container[Candidate] = (),
        key: bytes | None = None,
    ) -> int:
        eligible = _eligible(upstreams, now, exclude)
        if not eligible:
            return -1
        i = eligible[self._next % len(eligible)]
        self._next += 1
        return i


@register_balancer("power-of-two")
class PowerOfTwo:
    """Two eligible replicas at random, the one with fewer outstanding requests: near
    least-request's balance without looking at every replica (Mitzenmacher's two choices)."""

    wants_key: ClassVar[str] = NO_KEY
    reason = "fewer outstanding of two at random"
    outcome = "two-choices"

    def pick(
        self,
        upstreams: Sequence[Candidate],
        now: float,
        exclude: Container[Candidate] = (),
        key: bytes | None = None,
    ) -> int:
        eligible = _eligible(upstreams, now, exclude)
        if len(eligible) <= 1:
            return eligible[0] if eligible else -1
        a, b = random.sample(eligible, 2)
        return a if upstreams[a].outstanding <= upstreams[b].outstanding else b


class _Affinity:
    """A key to a replica on a consistent-hash ring with bounded load; no key: least-request."""

    wants_key: ClassVar[str] = PREFIX
    label: ClassVar[str] = "prefix"

    def __init__(self) -> None:
        self.reason = self.outcome = ""
        self._ring = Ring(())

    def pick(
        self,
        upstreams: Sequence[Candidate],
        now: float,
        exclude: Container[Candidate] = (),
        key: bytes | None = None,
    ) -> int:
        if key is None:
            self.reason = f"no {self.label} key: fewest outstanding requests"
            self.outcome = "no-key"
            return least_outstanding(upstreams, now, exclude)
        ring = self._ring
        if len(ring.names) != len(upstreams) or any(
            a != u.name for a, u in zip(ring.names, upstreams, strict=True)
        ):
            ring = self._ring = Ring([u.name for u in upstreams])
        eligible = set(_eligible(upstreams, now, exclude))
        bound = load_bound(sum(u.outstanding for u in upstreams), len(upstreams))
        first = -1
        for hop, i in enumerate(ring.walk(key)):
            if i not in eligible:
                continue
            if first < 0:
                first = i
            if upstreams[i].outstanding < bound:
                self.outcome = "owner" if hop == 0 else "spill"
                self.reason = (
                    f"{self.label} affinity: ring owner"
                    if hop == 0
                    else (f"{self.label} affinity: next on the ring (hop {hop}: owner busy or out)")
                )
                return i
        self.reason = f"{self.label} affinity: every replica at its load bound, first eligible on the ring"
        self.outcome = "all-bound"
        return first


@register_balancer("prefix-affinity")
class PrefixAffinity(_Affinity):
    """Requests sharing a prompt prefix meet on one replica (its prefix cache), within a bound."""

    wants_key: ClassVar[str] = PREFIX
    label: ClassVar[str] = "prefix"


@register_balancer("session-affinity")
class SessionAffinity(_Affinity):
    """Requests of one session (`X-OpenEAS-Session`, or a chat's `user`) meet on one replica."""

    wants_key: ClassVar[str] = SESSION
    label: ClassVar[str] = "session"


class _LeastSignal:
    """The eligible replica with the least of a signal its engine reports (pushed by the control
    plane), outstanding requests breaking ties; replicas whose signal is unknown count as 0 and
    the gateway's own outstanding count decides among them."""

    wants_key: ClassVar[str] = NO_KEY
    signal: ClassVar[str] = "waiting"

    def __init__(self) -> None:
        self.reason = self.outcome = ""

    def pick(
        self,
        upstreams: Sequence[Candidate],
        now: float,
        exclude: Container[Candidate] = (),
        key: bytes | None = None,
    ) -> int:
        eligible = _eligible(upstreams, now, exclude)
        if not eligible:
            return -1
        signal = self.signal

        def score(i: int) -> tuple[float, int, float]:
            u = upstreams[i]
            value = getattr(u, signal)
            return (max(value, 0.0), u.outstanding, random.random())

        best = min(eligible, key=score)
        value = getattr(upstreams[best], signal)
        if value >= 0:
            self.reason, self.outcome = f"least {signal} ({value:g})", "signal"
        else:
            self.reason, self.outcome = f"least {signal} (unknown: fewest outstanding)", "unknown"
        return best


@register_balancer("least-waiting")
class LeastWaiting(_LeastSignal):
    """Fewest requests waiting in the engine's own queue (vllm:num_requests_waiting,
    llamacpp:requests_deferred)."""

    signal: ClassVar[str] = "waiting"


@register_balancer("least-kv")
class LeastKv(_LeastSignal):
    """Least KV-cache use (vllm:kv_cache_usage_perc, llamacpp:kv_cache_usage_ratio)."""

    signal: ClassVar[str] = "kv_usage"

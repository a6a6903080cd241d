"""Owns load balancing: one small protocol, a registry by name, no if/elif factory.

A balancer picks one of a route's upstreams for each request. Upstreams in a connect cool-down or
in ``exclude`` (already failed for this request) are skipped; when every replica is cooling down
the balancer still picks one (trying beats a certain 503).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Container, Sequence
from typing import Protocol


class Candidate(Protocol):
    """What a balancer may read about an upstream."""

    outstanding: int  # requests sent to it and not yet answered (all services)
    cooldown_until: float  # loop time before which new connections are avoided


class Balancer(Protocol):
    def pick(self, upstreams: Sequence[Candidate], now: float, exclude: Container[Candidate] = ()) -> int:
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

    def pick(self, upstreams: Sequence[Candidate], now: float, exclude: Container[Candidate] = ()) -> int:
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
    def __init__(self) -> None:
        self._next = 0

    def pick(self, upstreams: Sequence[Candidate], now: float, exclude: Container[Candidate] = ()) -> int:
        eligible = _eligible(upstreams, now, exclude)
        if not eligible:
            return -1
        i = eligible[self._next % len(eligible)]
        self._next += 1
        return i

"""Answers by status code and latency (`MemberSample`): the shape the gateway counts per service
and per service group member, and their arithmetic (sum over gateways, increase between two
readings), and their form in the stats datagram. Standard library only: the gateway imports it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any


@dataclass(frozen=True)
class MemberSample:
    """Answers on one gateway, or all gateways summed: cumulative since each gateway started (a
    group member's live traffic, not its mirrored copies; or a service's answers)."""

    by_code: Mapping[str, int]  # answers by HTTP status ("200", "503"...)
    # answers by latency, non-cumulative: over GROUP_LATENCY_BUCKETS_S for a group member,
    # SERVICE_LATENCY_BUCKETS_S for a service (openeas.telemetry.latency)
    buckets: tuple[int, ...]


EMPTY = MemberSample({}, ())


def plus(a: MemberSample, b: MemberSample) -> MemberSample:
    """``a`` and ``b`` summed, code by code and bucket by bucket."""
    codes = dict(a.by_code)
    for code, n in b.by_code.items():
        codes[code] = codes.get(code, 0) + n
    return MemberSample(codes, tuple(x + y for x, y in zip_longest(a.buckets, b.buckets, fillvalue=0)))


def minus(new: MemberSample, old: MemberSample) -> MemberSample:
    """What ``new`` counted since ``old``, code by code and bucket by bucket; a counter that went
    down (a reset) counts from 0 (Prometheus's ``increase`` does the same)."""
    codes = {c: _increase(old.by_code.get(c, 0), n) for c, n in new.by_code.items()}
    old_buckets = old.buckets + (0,) * len(new.buckets)  # at least as long as new's
    buckets = tuple(_increase(o, n) for n, o in zip(new.buckets, old_buckets, strict=False))
    return MemberSample(codes, buckets)


def add_into(into: dict[str, MemberSample], samples: Mapping[str, MemberSample]) -> None:
    """Add each of ``samples`` to the one of the same name in ``into``."""
    for name, m in samples.items():
        old = into.get(name)
        into[name] = m if old is None else plus(old, m)


def _increase(before: int, after: int) -> int:
    return after - before if after >= before else after


def to_wire(m: MemberSample) -> list[Any]:
    """``[{status: answers}, [buckets]]``: a sample in the stats datagram's JSON."""
    return [dict(m.by_code), list(m.buckets)]


def from_wire(wire: Mapping[str, Any]) -> dict[str, MemberSample]:
    """``{name: [{status: answers}, [buckets]]}`` read back (TypeError, KeyError, AttributeError,
    ValueError when it is not that)."""
    return {
        str(name): MemberSample({str(c): int(n) for c, n in by_code.items()}, tuple(map(int, b)))
        for name, (by_code, b) in wire.items()
    }

"""Owns the activator: requests to a service with no routable replica are held, not failed, and
sent the moment the routing table offers a replica (scale from zero, a replica restarting).

A request the balancer cannot place (`Exchange.dispatch` found no replica, or every
replica refused the connection) goes through `hold`:

- a service its operator **stopped** answers 503 ``service_stopped`` at once: no replica is coming;
- else the request joins its service's `HoldQueue` (one per service on this gateway, oldest
  first), keeping what it has of its body (the bytes wait in the request's buffer; the route's
  body limit still applies, 413) and reading the rest as it comes;
- a full queue (``Route.max_held``, EAS's ``metadata.rpc.max_queue_size``) answers 429 with
  ``Retry-After``;
- every routing-table swap wakes the queues at once (`ProxyContext.wake_held`, the push path): a
  held request is sent as soon as its service has a routable replica, in arrival order, and
  streams like any other from then on. A timer per non-empty queue (`HOLD_POLL_S`) retries
  replicas that refused connections (the table did not change, the replica may be back) and
  answers the requests held past ``Route.hold_timeout_s`` with 503 ``no_ready_replica``;
- a ex that goes away while held leaves the queue (counted as abandoned).

Every held request ends in exactly one of: released (sent to a replica), timed out (503),
abandoned (the ex closed), ended (answered otherwise while held: service stopped or
deleted, the route's request timeout 408, a body over its limit 413, the gateway stopping: 503
with ``Retry-After``, its successor on the same port takes the retry). `HoldStats` counts them.

The queues hold the requests' `openeas.gateway.http.exchange.Exchange`s: `hold` and `unhold` are called
by the exchange, and a wake calls its `Exchange.resume`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openeas.gateway.errors import GatewayError
from openeas.gateway.telemetry.metrics import HoldStats

if TYPE_CHECKING:
    from openeas.gateway.context import ProxyContext
    from openeas.gateway.http.exchange import Exchange

HOLD_POLL_S = 0.05  # seconds between two looks of a non-empty queue at its replicas and deadlines
# Seconds a ex refused with 429 (hold queue full) is told to wait: the queue empties the moment
# a replica is routable, and spreading retries over a second is enough to not refill it at once.
RETRY_AFTER_S = 1

# How a held request left its queue (HoldStats counters).
RELEASED = "released"
TIMED_OUT = "timed_out"
ABANDONED = "abandoned"
ENDED = "ended"


@dataclass(slots=True)
class Held:
    """One held request: which of its connection's requests, why, and until when."""

    request_seq: int
    since: float  # loop time (s) it joined the queue
    deadline: float  # loop time (s) after which it gets a 503
    timeout_s: float  # the route's hold_timeout_s when it was held
    reason: GatewayError  # why it waits: no replica, or every replica refused


class HoldQueue:
    """One service's held requests on this gateway, oldest first. Loop thread only."""

    def __init__(self, service: str, stats: HoldStats, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.stats = stats
        self.loop = loop
        self.entries: dict[Exchange, Held] = {}  # insertion order = arrival order
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, ex: Exchange, held: Held) -> None:
        self.entries[ex] = held
        stats = self.stats
        stats.held = len(self.entries)
        stats.held_total += 1
        if self._timer is None:
            self._timer = self.loop.call_later(HOLD_POLL_S, self._tick, ex.client.ctx)

    def remove(self, ex: Exchange, outcome: str) -> Held | None:
        held = self.entries.pop(ex, None)
        if held is None:
            return None
        stats = self.stats
        stats.held = len(self.entries)
        if outcome == RELEASED:
            stats.released(self.loop.time() - held.since)
        elif outcome == TIMED_OUT:
            stats.timed_out += 1
        elif outcome == ABANDONED:
            stats.abandoned += 1
        else:
            stats.ended += 1
        return held

    def wake(self, ctx: ProxyContext) -> None:
        """Send what can be sent: when the service has a routable replica (or no longer takes
        requests: stopped or deleted), every held request looks at the routing table again."""
        route = ctx.routes.get(self.service)
        if route is not None and not route.upstreams and not route.route.stopped:
            return  # still nothing to send to: the requests wait
        for ex, held in list(self.entries.items()):
            if ex in self.entries:  # not answered meanwhile by an earlier one's doing
                ex.resume(held.request_seq)

    def _tick(self, ctx: ProxyContext) -> None:
        self._timer = None
        now = self.loop.time()
        for ex, held in list(self.entries.items()):
            if held.deadline <= now and self.remove(ex, TIMED_OUT) is not None:
                _detach(ex)
                ex.client.fail(hold_timed_out(held.reason, held.timeout_s))
        self.wake(ctx)
        if self.entries:
            self._timer = self.loop.call_later(HOLD_POLL_S, self._tick, ctx)

    def fail_all(self, err: GatewayError) -> None:
        """Answer every held request with ``err`` (the gateway stops: none will be released here)."""
        for ex in list(self.entries):
            if self.remove(ex, ENDED) is not None:
                _detach(ex)
                ex.client.fail(err, close=True)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _queue(ctx: ProxyContext, service: str, loop: asyncio.AbstractEventLoop) -> HoldQueue:
    queue = ctx.holds.get(service)
    if queue is None:
        metrics = ctx.metrics.service(service)
        if metrics.hold is None:
            metrics.hold = HoldStats()
        queue = ctx.holds[service] = HoldQueue(service, metrics.hold, loop)
    return queue


def _detach(ex: Exchange) -> None:
    attempts = ex.attempts
    if attempts is not None:
        attempts.held = None


# --- called by the exchange -----------------------------------------------------------------------------


def hold(ex: Exchange, reason: GatewayError) -> None:
    """No replica to send to now: hold the request for one (or refuse it: stopped, queue full)."""
    route = ex.route
    assert route is not None
    if route.route.stopped:
        ex.client.fail(service_stopped(route.service))
        return
    attempts = ex.attempts_made()
    queue = attempts.held
    if queue is not None:  # a wake found no replica that would take it: it keeps its place
        held = queue.entries.get(ex)
        if held is not None:
            held.reason = reason
        return
    ctx = ex.client.ctx
    now = ex.loop.time()
    if attempts.hold_since is None:
        attempts.hold_since = now  # a request held again after a failed release keeps its deadline
    timeout_s = route.route.hold_timeout_s
    deadline = attempts.hold_since + timeout_s
    if now >= deadline:
        ex.client.fail(hold_timed_out(reason, timeout_s))
        return
    queue = _queue(ctx, route.service, ex.loop)
    if len(queue) >= route.route.max_held:
        queue.stats.overflow += 1
        ex.client.fail(hold_queue_full(route.service, route.route.max_held))
        return
    attempts.held = queue
    queue.add(ex, Held(ex.client.request_seq, now, deadline, timeout_s, reason))
    if ctx.on_hold is not None:
        ctx.on_hold(route.service)  # the control plane hears of it at once (scale from zero)


def unhold(ex: Exchange, outcome: str) -> None:
    """The request leaves its hold queue: ``outcome`` RELEASED (written to a replica: called by
    `Exchange.send_to`), ABANDONED (the ex closed) or ENDED (answered otherwise)."""
    attempts = ex.attempts
    if attempts is not None and attempts.held is not None:
        queue = attempts.held
        attempts.held = None
        queue.remove(ex, outcome)


# --- the answers -------------------------------------------------------------------------------------


def service_stopped(service: str) -> GatewayError:
    message = f"service '{service}' is stopped; start it to serve requests (openeas start {service})"
    return GatewayError(503, "service_stopped", message)


def hold_queue_full(service: str, limit: int) -> GatewayError:
    message = (
        f"service '{service}' has no ready replica and already holds {limit} requests waiting for "
        f"one (max_queue_size); retry after {RETRY_AFTER_S} s"
    )
    return GatewayError(429, "hold_queue_full", message, retry_after_s=RETRY_AFTER_S)


def gateway_stopping(service: str) -> GatewayError:
    message = f"service '{service}' has no ready replica and this gateway is stopping; retry"
    return GatewayError(503, "gateway_stopping", message, retry_after_s=RETRY_AFTER_S)


def hold_timed_out(reason: GatewayError, timeout_s: float) -> GatewayError:
    message = f"{reason.message}; none became ready within {timeout_s:g} s (hold_timeout_ms)"
    return GatewayError(503, "no_ready_replica", message)

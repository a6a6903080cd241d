"""Owns what the proxy does after a replica failed a request: pure decisions (`after_loss`,
`next_attempt`) and one request's record of its attempts (`Attempts`). No I/O here; proxy.py acts
on the answers.

When may a request be sent again?

- **The connect failed**: nothing was sent. The request goes to another replica, whatever the
  service says, and is held (activator.py, up to the route's hold_timeout_s) when no replica
  is reachable.
- **The connection closed after (part of) the request was written and before any byte of the
  answer.** The replica may have read it and acted on it. `Route.resend_unanswered` (a per-service
  choice, on `RouteState` so the hot path reads one attribute) decides:
  - True, the default: resend to another replica (idempotent services, LLM inference).
  - False: answer 502 ``upstream_failed``; the client decides. One exception, below.
- **Part of the answer already went to the client**: nothing can be resent; the client
  connection is cut and 502 recorded.
- A request larger than the resend buffer (``REPLAY_LIMIT_BYTES`` in exchange.py) is never resent.

The stale keep-alive connection. A replica closes an idle pooled connection (its keep-alive
timeout) at the moment we take it from the pool: its FIN reaches our socket after the event loop
last looked, we write the request into a connection that is already gone, and read EOF or a reset.
To the application that is exactly what a replica that read the request and died before answering
looks like: same errors, same order, and timing proves nothing. TCP acknowledgements do tell them
apart. A replica that closed before our bytes arrived answers them with a reset and never
acknowledges them; one whose application read them had acknowledged them (at the latest in the FIN
its kernel sends when the process dies). So on this failure path, and only there (one system
call), the proxy asks the connection whether the replica's TCP stack acknowledged any byte of the
request (Linux ``TCP_INFO``: ``tcpi_bytes_acked``, compared with the bytes of the requests the
connection carried before). When it acknowledged none, the replica's application cannot have read
the request, and it is resent even when ``resend_unanswered`` is False. The converse is not exact:
a kernel acknowledges bytes its application never reads (a request still in the receive buffer or
the accept queue when the replica dies); those get a 502, the safe side for a service that asked
not to have requests resent. Where the count cannot be read (another OS, the socket already gone)
the request counts as delivered.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from openeas.gateway.errors import GatewayError
from openeas.gateway.http.pool import UpstreamState

if TYPE_CHECKING:
    from openeas.gateway.http.activator import HoldQueue


class AfterLoss(Enum):
    """What to do with a request whose replica connection closed before the answer ended."""

    RESEND = "resend"  # send it again: `next_attempt` says where
    FAIL = "fail"  # answer 502 upstream_failed (nothing of an answer went to the client)
    CUT = "cut"  # close the client connection: part of an answer already went out


def after_loss(
    *, answer_started: bool, resendable: bool, resend_unanswered: bool, acknowledged: bool | None
) -> AfterLoss:
    """Decide after a replica closed the connection of a request that was (at least partly) written.

    ``acknowledged``: whether the replica's TCP stack acknowledged any byte of the request (None:
    unknown, counts as yes).
    """
    if answer_started:
        return AfterLoss.CUT
    if not resendable:
        return AfterLoss.FAIL
    if resend_unanswered or acknowledged is False:
        return AfterLoss.RESEND
    return AfterLoss.FAIL


def unanswered(reason: str, service: str, *, not_resent: bool = False) -> GatewayError:
    """The 502 for a request a replica dropped before answering; ``not_resent``: the service's
    choice (not the lack of a replica) kept it from being resent."""
    message = f"{reason} before answering"
    if not_resent:
        message += (
            f"; not resent to another replica: service '{service}' does not resend unanswered "
            "requests (resend_unanswered)"
        )
    return GatewayError(502, "upstream_failed", message)


class NextAttempt(Enum):
    OTHER = "other"  # another replica (the balancer found one not tried yet)
    FRESH_SAME = "fresh-same"  # the same replica, over a new connection (once per request)
    HOLD = "hold"  # wait for the routing table to offer a replica, then 503
    FAIL = "fail"  # answer 502 upstream_failed


def next_attempt(*, found_other: bool, stale: bool, fresh_used: bool, connect_failed: bool) -> NextAttempt:
    """Where a request that must be sent again goes.

    ``stale``: the failed connection came from the idle pool; that says little about the replica,
    so once every replica was tried, one more try goes to it over a new connection.
    ``connect_failed``: no replica could even be reached, so waiting for a new one may help.
    """
    if found_other:
        return NextAttempt.OTHER
    if stale and not fresh_used:
        return NextAttempt.FRESH_SAME
    if connect_failed:
        return NextAttempt.HOLD
    return NextAttempt.FAIL


class Attempts:
    """One request's failed tries. Made on the first failure or hold; most requests never need one."""

    __slots__ = ("fresh_used", "held", "hold_since", "tried")

    def __init__(self) -> None:
        self.tried: list[UpstreamState] = []  # replicas that failed this request: skipped by the balancer
        self.fresh_used = False  # the one new-connection retry on the same replica is spent
        self.hold_since: float | None = None  # loop time (s) first held: its hold deadline counts from it
        self.held: HoldQueue | None = None  # the queue it waits in now (activator.py)

"""Owns what a client connection does when its replica fails it or takes too long: connect to a
replica (`connect`), resend the request elsewhere (`resend`; when: retry.py's pure decisions; with
no replica left, activator.py holds it), and the route's timeout (`on_timeout`).

These functions become methods of `openeas.gateway.proxy.ClientConnection` (assigned in its class
body): failure paths, kept out of the module that holds the hot path. A request being resent picks
from the current routing table (``ctx.routes``): during a rolling update, the new version's
replicas are there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openeas.gateway.errors import GatewayError
from openeas.gateway.guard import PROXYING
from openeas.gateway.pool import UpstreamState
from openeas.gateway.retry import Attempts, NextAttempt, next_attempt, unanswered

if TYPE_CHECKING:
    from openeas.gateway.proxy import ClientConnection

async def connect(client: ClientConnection, upstream: UpstreamState, request_seq: int) -> None:
    try:
        conn = await upstream.connect(client.loop)
    except OSError as e:
        upstream.cooldown_until = client.loop.time() + client.ctx.cooldown_s
        if request_seq == client.request_seq and client.upstream is upstream and client.phase is PROXYING:
            client._release_upstream()
            reason = f"connect to replica {upstream.name} failed: {e.strerror or e}"
            client._resend(upstream, reason, stale=False, connect_failed=True)
        return
    if request_seq != client.request_seq or client.upstream is not upstream or client.phase is not PROXYING:
        upstream.release(conn)  # the request went away meanwhile
        return
    client._send_to(upstream, conn)


def resend(
    client: ClientConnection, failed: UpstreamState, reason: str, *, stale: bool, connect_failed: bool
) -> None:
    """Send the waiting request again after ``failed`` failed it (see retry.py for when)."""
    route = client.route
    assert route is not None
    # The current table: during a rolling update, the new version's replicas are there.
    route = client.route = client.ctx.routes.get(route.service) or route
    assert route.balancer is not None
    attempts = client._attempts()
    attempts.tried.append(failed)
    i = route.balancer.pick(route.upstreams, client.loop.time(), attempts.tried)
    step = next_attempt(
        found_other=i >= 0, stale=stale, fresh_used=attempts.fresh_used, connect_failed=connect_failed
    )
    if step is NextAttempt.OTHER:
        client._send_to(route.upstreams[i])
    elif step is NextAttempt.FRESH_SAME:
        attempts.fresh_used = True
        client._send_to(failed, fresh=True)
    elif step is NextAttempt.HOLD:
        message = f"service '{route.service}' has no reachable replica: {reason}"
        client._hold(GatewayError(503, "no_ready_replica", message))
    else:
        client._fail(unanswered(reason, route.service))


def attempts_of(client: ClientConnection) -> Attempts:
    if client.attempts is None:
        client.attempts = Attempts()  # the first failure or hold of this request
    return client.attempts


def on_timeout(client: ClientConnection, request_seq: int) -> None:
    client.timer = None
    if request_seq != client.request_seq or client.phase is not PROXYING:
        return
    route = client.route
    assert route is not None
    conn = client.upstream_conn
    if conn is not None and conn.got_bytes:
        # The answer's head already went out: a 408 cannot follow it. Cut the connection.
        client._drop_upstream()
        client._record(408)
        client._close()
        return
    message = f"service '{route.service}' did not answer within {route.timeout_s:g} s (timeout_s)"
    client._fail(GatewayError(408, "timeout", message))

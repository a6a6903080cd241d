"""Owns the per-service state the proxy reads on every request (`RouteState`), derived from a
`RoutingTable` and rebuilt on every table swap.

Swapping keeps what must survive a swap: a replica's `UpstreamState` (pooled connections, load,
cool-down) and a service's balancer (round-robin position). Requests in flight keep the objects
they started with; replicas that left the table are retired (their idle connections closed).
"""

from __future__ import annotations

from dataclasses import dataclass

from openeas.gateway.auth import Credentials
from openeas.gateway.http.pool import UpstreamState
from openeas.gateway.routing.balancers import Balancer, UnknownBalancerError, create_balancer
from openeas.gateway.routing.ratelimit import TokenBucket
from openeas.gateway.routing.table import gc_paused
from openeas.gateway.telemetry.metrics import GatewayMetrics, ServiceMetrics
from openeas.kernel.queue import QueueSettings
from openeas.kernel.routing import Route, RoutingTable


@dataclass(slots=True)
class RouteState:
    """One service as the proxy sees it: plain attributes, one lookup each on the hot path."""

    service: str
    route: Route
    creds: Credentials | None  # None: the service needs no token
    upstreams: list[UpstreamState]
    balancer: Balancer | None  # None when the route names an unknown balancer (see balancer_error)
    balancer_error: str | None
    metrics: ServiceMetrics
    max_body_bytes: int  # bytes; a larger request body gets 413
    timeout_s: float | None  # seconds until 408; None = no limit
    # Resend a request whose replica closed the connection before answering (see retry.py).
    resend_unanswered: bool = True
    limiter: TokenBucket | None = None  # metadata.rpc.rate_limit; None = no limit
    queue: QueueSettings | None = None  # an async service (gateway/asyncq/protocol.py); None: proxied


UpstreamKey = tuple[str, str, int]


def build_routes(
    table: RoutingTable,
    old_routes: dict[str, RouteState],
    upstreams: dict[UpstreamKey, UpstreamState],
    metrics: GatewayMetrics,
    retired: list[UpstreamState] | None = None,
) -> dict[str, RouteState]:
    """New per-service states for ``table``; mutates ``upstreams`` (adds new, retires gone ones,
    appending those to ``retired`` when given).

    A service whose route did not change keeps its state object as it is (the store's source
    hands back the very same Route object for a service its read did not touch, so the check is
    one identity test; an equal route read again is kept too), so a change to one service of
    thousands builds one state, and only the replicas of the routes that changed or left are
    looked at for retirement."""
    with gc_paused():
        return _build(table, old_routes, upstreams, metrics, retired)


def _build(
    table: RoutingTable,
    old_routes: dict[str, RouteState],
    upstreams: dict[UpstreamKey, UpstreamState],
    metrics: GatewayMetrics,
    retired: list[UpstreamState] | None,
) -> dict[str, RouteState]:
    # Each replica in one route (the store's case: a replica has one service): then a replica of
    # a changed or removed route is held by no kept route. Else every route is looked through.
    one_route_each = sum(len(rs.upstreams) for rs in old_routes.values()) == len(upstreams)
    routes: dict[str, RouteState] = {}
    built: set[UpstreamState] = set()  # the replicas of the routes built anew
    for service, route in table.routes.items():
        old = old_routes.get(service)
        if old is not None and (old.route is route or old.route == route):
            routes[service] = old
            continue
        routes[service] = state = _route_state(service, route, old, upstreams, metrics)
        built.update(state.upstreams)
    if one_route_each:
        left = (rs for name, rs in old_routes.items() if routes.get(name) is not rs)
        gone = {st for rs in left for st in rs.upstreams if st not in built}
    else:
        live = {st for rs in routes.values() for st in rs.upstreams}
        gone = {st for st in upstreams.values() if st not in live}
    for st in gone:
        del upstreams[(st.upstream.replica_id, st.host, st.port)]
        st.retire()
    if retired is not None:
        retired.extend(gone)
    return routes


def _route_state(
    service: str,
    route: Route,
    old: RouteState | None,
    upstreams: dict[UpstreamKey, UpstreamState],
    metrics: GatewayMetrics,
) -> RouteState:
    """The state of a new or changed route (adds its new replicas to ``upstreams``)."""
    states = []
    get = upstreams.get
    for u in route.upstreams:
        # An Upstream is the tuple (replica_id, host, port): its own key (equal, same hash).
        st = get(u)
        if st is None:
            st = upstreams[u] = UpstreamState(u)
        states.append(st)
    balancer: Balancer | None = None
    error = None
    if old is not None and old.route.balancer == route.balancer and old.balancer is not None:
        balancer = old.balancer
    else:
        try:
            balancer = create_balancer(route.balancer)
        except UnknownBalancerError as e:
            error = f"service '{service}' is misconfigured: {e}"
    # The bucket survives a table swap while the limit stays the same (a swap must not refill it).
    limiter = None
    if route.rate_limit > 0:
        keep = old is not None and old.limiter is not None and old.route.rate_limit == route.rate_limit
        limiter = old.limiter if keep and old is not None else TokenBucket(route.rate_limit)
    return RouteState(
        service=service,
        route=route,
        creds=Credentials.from_token(route.token) if route.token else None,
        upstreams=states,
        balancer=balancer,
        balancer_error=error,
        metrics=metrics.service(service),
        max_body_bytes=_max_body(route),
        timeout_s=route.timeout_s,
        resend_unanswered=route.resend_unanswered,
        limiter=limiter,
        queue=route.queue,
    )


def _max_body(route: Route) -> int:
    """The body limit enforced while reading: an async service's queue limits (the input's and
    the sink's payload sizes) refuse a larger body at the limit, not after buffering it."""
    if route.queue is None:
        return route.max_body_bytes
    return min(route.max_body_bytes, max(route.queue.max_payload_bytes, route.queue.max_result_bytes))

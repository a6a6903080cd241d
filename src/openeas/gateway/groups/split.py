"""Owns how a service group's request finds its member: ``/api/predict/<group>`` (match rules
first, then the weighted pick) and ``/api/predict/<group>.<service>`` (that member), the group's
token, and the start of mirrored copies (mirror.py sends them).

The decisions are pure functions (`cumulative`, `pick`, `MatchRule.matches`, `choose`): the
weighted pick takes the random draw as an argument, so a seeded RNG tests it. `build_groups`
turns the routing table's groups into `GroupState`s at each table swap (the cumulative weights,
compiled rules and per-member metrics are ready before the first request); the client connection
calls `route_group` (it sets the member on the request's exchange): it runs only when the request target names
no service, so a service's own requests pay nothing for groups.
"""

from __future__ import annotations

import dataclasses
import random
import time
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from openeas.gateway.auth import AuthError, Credentials, authorize
from openeas.gateway.errors import GatewayError, error_response, plain_response
from openeas.gateway.groups.group_metrics import MemberMetrics, group_json
from openeas.gateway.groups.mirror import LiveOnly, MirrorCopy, Split, mirror_room
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.kernel.groups import GroupDef, MemberMatch
from openeas.linear_regex import LinearPattern

if TYPE_CHECKING:
    from openeas.gateway.http.proxy import ClientConnection
    from openeas.gateway.routing.routes import RouteState

_USER_AGENT = b"user-agent"
_random = random.random  # bound once: read as a fast global on the group path


@dataclass(frozen=True, slots=True)
class MatchRule:
    """A member's match rule, compiled once per table swap."""

    headers: tuple[tuple[bytes, bytes], ...]  # (lowercase name, exact value)
    user_agent: LinearPattern | None  # RE2: linear time; a User-Agent over 1024 chars never matches
    region: frozenset[bytes]
    region_header: bytes  # lowercase

    @staticmethod
    def compile(match: MemberMatch, region_header: str) -> MatchRule:
        return MatchRule(
            headers=tuple((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in match.headers),
            user_agent=_user_agent(match.user_agent),
            region=frozenset(r.encode("latin-1") for r in match.region),
            region_header=region_header.lower().encode("latin-1"),
        )

    def matches(self, headers: Mapping[bytes, bytes]) -> bool:
        """Every part given matches ``headers`` (lowercase name → value)."""
        for name, value in self.headers:
            if headers.get(name) != value:
                return False
        if self.user_agent is not None:
            ua = headers.get(_USER_AGENT)
            if ua is None or not self.user_agent.search(ua.decode("latin-1")):
                return False
        if self.region:
            region = headers.get(self.region_header)
            if region is None or region.strip() not in self.region:
                return False
        return True


def _user_agent(pattern: str | None) -> LinearPattern | None:
    if pattern is None:
        return None
    try:
        return LinearPattern(pattern)
    except ValueError:  # stored before RE2 was the engine: the rule cannot match (no crash)
        return LinearPattern(_NEVER)


_NEVER = r"[^\x00-\x{10FFFF}]"  # matches no text


def request_headers(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    """Lowercase name → value (the first of repeated ones) of the proxy's flat head
    ``[request line, name, b": ", value, CRLF, ...]``."""
    out: dict[bytes, bytes] = {}
    for i in range(1, len(flat) - 3, 4):
        out.setdefault(flat[i].lower(), flat[i + 2])
    return out


def cumulative(weights: Sequence[int]) -> list[int]:
    """Running sums of ``weights`` (the pick's table)."""
    out, total = [], 0
    for w in weights:
        total += w
        out.append(total)
    return out


def pick(cum: Sequence[int], r: float) -> int:
    """The index whose share of ``cum``'s total holds ``r`` (a draw in [0, 1)); -1 when the total
    is 0. Weights 900 and 100 → cum (900, 1000): r < 0.9 picks 0, else 1."""
    if not cum or cum[-1] <= 0:
        return -1
    return bisect_right(cum, r * cum[-1])


@dataclass(slots=True)
class MemberState:
    """One member as the group's requests see it."""

    service: str
    route: RouteState  # the service's routes, its token left to the group (creds None)
    weight: int  # effective: the route's weight (customized) or its routable replicas (auto)
    mirror_percent: int  # percent of the group's requests copied to it
    rule: MatchRule | None
    metrics: MemberMetrics
    plain: LiveOnly  # the split state of its requests that are not mirrored (shared)
    header: bytes  # the header line naming it on the answers it serves (`member_header`)


@dataclass(slots=True)
class GroupState:
    name: str
    creds: Credentials | None
    members: dict[str, MemberState]  # by service: members whose service is routed
    ruled: list[MemberState]  # members with a match rule, in route order
    available: list[MemberState]  # weighted members with a routable replica
    available_cum: list[int]
    weighted: list[MemberState]  # weighted members (the pick when none has a replica: held)
    weighted_cum: list[int]
    mirrors: list[MemberState]


def choose(group: GroupState, headers: Mapping[bytes, bytes] | None, r: float) -> MemberState | None:
    """The member a request goes to: the first whose match rule matches, else the weighted pick
    among members with a routable replica, else among all weighted members (the request is then
    held for a replica, as a service's would be); None when no member has weight."""
    if headers is not None:
        for m in group.ruled:
            if m.rule is not None and m.rule.matches(headers):
                return m
    i = pick(group.available_cum, r)
    if i >= 0:
        return group.available[i]
    i = pick(group.weighted_cum, r)
    return group.weighted[i] if i >= 0 else None


MEMBER_HEADER = "X-OpenEAS-Member"
"""Added by the gateway to the answer of every request to a group's endpoint that a member's
replica answered: the member's service name (``openeas stress <group>`` attributes each answer
by it). An answer the gateway gives itself (401, 404, 503...) has none."""


def member_header(service: str) -> bytes:
    """The header line (CRLF included) naming ``service`` as the member that answered."""
    return f"{MEMBER_HEADER}: {service}\r\n".encode("latin-1")


def build_groups(
    groups: Mapping[str, GroupDef], routes: Mapping[str, RouteState], metrics: GatewayMetrics
) -> dict[str, GroupState]:
    """The groups' states for a new table; members whose service is not routed are left out."""
    out = {}
    for name, g in groups.items():
        members: dict[str, MemberState] = {}
        ruled, available, weighted, mirrors = [], [], [], []
        for m in g.members:
            route = routes.get(m.service)
            if route is None:
                continue
            if g.traffic_mode == "auto":
                weight = 0 if m.mirror_weight else len(route.upstreams)
            else:
                weight = m.weight
            member_metrics = metrics.group_member(name, m.service)
            state = MemberState(
                service=m.service,
                route=dataclasses.replace(route, creds=None),
                weight=weight,
                mirror_percent=m.mirror_weight,
                rule=MatchRule.compile(m.match, g.region_header) if m.match is not None else None,
                metrics=member_metrics,
                plain=LiveOnly(member_metrics.live),
                header=member_header(m.service),
            )
            members[m.service] = state
            if state.rule is not None:
                ruled.append(state)
            if weight > 0:
                weighted.append(state)
                if route.upstreams:
                    available.append(state)
            if m.mirror_weight > 0:
                mirrors.append(state)
        out[name] = GroupState(
            name=name,
            creds=Credentials.from_token(g.token) if g.token else None,
            members=members,
            ruled=ruled,
            available=available,
            available_cum=cumulative([m.weight for m in available]),
            weighted=weighted,
            weighted_cum=cumulative([m.weight for m in weighted]),
            mirrors=mirrors,
        )
    return out


# --- called by the client connection -------------------------------------------------------------


def route_group(client: ClientConnection, name: str) -> RouteState | None:
    """The member route for a request to group ``name`` (or ``group.service``), with its split
    state set on its exchange; None when the request was answered (404, 401, 503)."""
    ctx = client.ctx
    group_name, _, member_name = name.partition(".")
    group = ctx.groups.get(group_name)
    if group is None:
        client.local_error(GatewayError(404, "service_not_found", f"service '{name}' not found"))
        return None
    if member_name:
        chosen = group.members.get(member_name)
        if chosen is None:
            message = f"group '{group_name}' has no member '{member_name}'"
            client.local_error(GatewayError(404, "member_not_found", message))
            return None
        own = ctx.routes[member_name].creds  # the member's own token opens its member endpoint too
        if not _authorized(client, group, own, name):
            return None
        client.ex.member(chosen.plain, chosen.header)
        return chosen.route
    creds = group.creds
    if (
        creds is not None
        and not creds.fast_match(client.authorization)
        and not _authorized(client, group, None, name)
    ):
        return None
    headers = request_headers(client.headers) if group.ruled else None
    chosen = choose(group, headers, _random())
    if chosen is None:
        message = f"group '{group_name}' has no member with weight > 0, and no match rule matched"
        client.local_error(GatewayError(503, "no_weighted_member", message))
        return None
    client.ex.member(chosen.plain, chosen.header)
    if group.mirrors and client.upgrade is None:
        _mirror(client, group, chosen)
    return chosen.route


def _mirror(client: ClientConnection, group: GroupState, chosen: MemberState) -> None:
    """Draw the copies of this request (each mirror member: its mirror_percent of the requests)."""
    split: Split | None = None
    for m in group.mirrors:
        if m is not chosen and _random() * 100 < m.mirror_percent:
            if not m.route.upstreams:
                m.metrics.drop("no_replica")
            elif not mirror_room(m.metrics):
                m.metrics.drop("in_flight_limit")
            else:
                if split is None:
                    split = Split(chosen.metrics)
                    client.ex.member(split, chosen.header)
                split.add(MirrorCopy(m.service, m.route, m.metrics, chosen.service, client.loop), client.ex)


def authorize_client(
    client: ClientConnection, creds: Credentials, service: str, method: bytes
) -> bytes | str | None:
    """Check the client's request against ``creds`` of ``service`` (a token in any form, or a
    signature): the body's expected Content-MD5 for a signed request, else None; raises
    `AuthError` when the request is refused."""
    return authorize(
        creds,
        service,
        client.authorization,
        method=method,
        content_md5=client.content_md5,
        content_type=client.content_type,
        date=client.date,
        path=client.url.partition(b"?")[0],
        now=time.time(),
        max_skew_s=client.ctx.max_date_skew_s,
    )


def _authorized(client: ClientConnection, group: GroupState, own: Credentials | None, name: str) -> bool:
    """The group's token (or, for ``group.service``, that service's own) in any form the gateway
    accepts; False when the request was answered 401."""
    creds = group.creds
    if creds is None:
        return True
    auth = client.authorization
    if creds.fast_match(auth) or (own is not None and own.fast_match(auth)):
        return True
    error: AuthError | None = None
    for c in (creds, own):
        if c is None:
            continue
        try:
            expected_md5 = authorize_client(client, c, name, client.parser.get_method())
        except AuthError as e:
            error = error or e
            continue
        if expected_md5 is not None:
            client.ex.signed(expected_md5)
        return True
    assert error is not None
    client.local_error(error)
    return False


# --- GET /groups/<group>: the group's counters, for people (describe, compare) ---------------------

GROUP_STATS_PREFIX = b"/groups/"


def group_stats_answer(client: ClientConnection, method: bytes, path: bytes) -> bytes:
    """Every member's live and mirrored counters and the mirrored pairs' comparison (bodies
    included, so the group's token is required)."""
    name = path[len(GROUP_STATS_PREFIX) :].decode("latin-1")
    group = client.ctx.groups.get(name)
    close = not client.keep_alive
    if method != b"GET" or group is None:
        err = GatewayError(404, "not_found", f"no group '{name}' on this gateway")
        client.ctx.metrics.unrouted(404)
        return error_response(err, close=close)
    if group.creds is not None and not group.creds.fast_match(client.authorization):
        client.ctx.metrics.unrouted(401)
        err = GatewayError(401, "unauthorized", f"group '{name}' requires its token")
        return error_response(err, close=close)
    members = {svc: m.metrics.to_dict() for svc, m in group.members.items()}
    merge = client.ctx.metrics.merge_group  # every worker's counters with --workers N
    if merge is not None:
        members = merge(name, members)
    return plain_response(200, group_json(name, members), b"application/json", close=close)

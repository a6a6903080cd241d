"""Service groups, the pure parts: the weighted pick (tables and a chi-square test of a 90/10
split with a seeded RNG), match rules, the member choice, the group spec's validation, the
latency quantiles and the body comparison of mirrored pairs."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from openeas.errors import SpecError
from openeas.gateway.groups.group_metrics import CompareStats, bodies_agree, group_json
from openeas.gateway.groups.mirror import response_body
from openeas.gateway.groups.split import MatchRule, build_groups, choose, cumulative, pick, request_headers
from openeas.gateway.routing.routes import build_routes
from openeas.gateway.telemetry.metrics import GatewayMetrics
from openeas.gateway.telemetry.stats import group_samples
from openeas.kernel.groups import GroupDef, GroupMember, MemberMatch
from openeas.kernel.routing import Route, RoutingTable, Upstream
from openeas.spec.group import parse_group
from openeas.telemetry.gateway_stats import MemberSample, decode_all, encode
from openeas.telemetry.latency import GROUP_LATENCY_BUCKETS_S, bucket_delta, quantile, success_ratio

# Chi-square critical value for 1 degree of freedom at p = 0.001: a correct 90/10 pick fails the
# test once in a thousand seeds; the seed below is fixed, so the test is deterministic.
CHI2_1DF_P001 = 10.828


@pytest.mark.parametrize(
    ("weights", "r", "expected"),
    [
        ([900, 100], 0.0, 0),
        ([900, 100], 0.8999, 0),  # 0.8999 * 1000 = 899.9 < 900
        ([900, 100], 0.9, 1),  # 900 is not < 900: the second member's share starts here
        ([900, 100], 0.9999, 1),
        ([0, 1000], 0.0, 1),  # a zero weight owns no share, not even r = 0
        ([500, 0, 500], 0.5, 2),  # 500 → past the first and the empty second
        ([1], 0.99, 0),
        ([0, 0], 0.3, -1),  # no weight at all: nothing to pick
        ([], 0.3, -1),
    ],
    ids=["r0", "just-below-90", "at-90", "top", "zero-first", "zero-middle", "single", "all-zero", "empty"],
)
def test_pick(weights: list[int], r: float, expected: int) -> None:
    assert pick(cumulative(weights), r) == expected


def test_a_90_10_split_passes_a_chi_square_test() -> None:
    rng = random.Random(20261128)
    cum = cumulative([900, 100])
    n = 10_000
    counts = [0, 0]
    for _ in range(n):
        counts[pick(cum, rng.random())] += 1
    expected = [0.9 * n, 0.1 * n]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(counts, expected, strict=True))
    assert chi2 < CHI2_1DF_P001, (counts, chi2)


def test_the_chi_square_test_would_catch_an_88_12_split() -> None:
    # The same statistic on a pick that is 2 points off: 10,000 draws see it (the test has power).
    rng = random.Random(20261128)
    cum = cumulative([880, 120])
    n = 10_000
    counts = [0, 0]
    for _ in range(n):
        counts[pick(cum, rng.random())] += 1
    chi2 = sum((o - e) ** 2 / e for o, e in zip(counts, [0.9 * n, 0.1 * n], strict=True))
    # About 8,800/1,200 observed against 9,000/1,000 expected: 200²/9000 + 200²/1000 ≈ 44 > 10.8.
    assert chi2 > CHI2_1DF_P001


def _rule(**kw: Any) -> MatchRule:
    m = MemberMatch(
        headers=tuple(kw.get("headers", {}).items()),
        user_agent=kw.get("user_agent"),
        region=tuple(kw.get("region", ())),
    )
    return MatchRule.compile(m, kw.get("region_header", "X-Region"))


@pytest.mark.parametrize(
    ("rule", "headers", "expected"),
    [
        ({"headers": {"X-Tester": "yes"}}, {b"x-tester": b"yes"}, True),
        ({"headers": {"X-Tester": "yes"}}, {b"x-tester": b"YES"}, False),  # values are exact
        ({"headers": {"X-Tester": "yes"}}, {}, False),
        ({"headers": {"A": "1", "B": "2"}}, {b"a": b"1"}, False),  # every header must match
        ({"user_agent": r"^acme-app/2\."}, {b"user-agent": b"acme-app/2.1 (ios)"}, True),
        ({"user_agent": r"^acme-app/2\."}, {b"user-agent": b"acme-app/1.9"}, False),
        ({"user_agent": "bot"}, {}, False),  # no User-Agent: no match
        ({"user_agent": "^(a+)+$"}, {b"user-agent": b"a" * 1024}, True),  # RE2: linear, no backtracking
        ({"user_agent": "^(a+)+$"}, {b"user-agent": b"a" * 1000 + b"b"}, False),
        ({"user_agent": "a"}, {b"user-agent": b"a" * 1025}, False),  # over MAX_MATCHED_CHARS: never matches
        ({"user_agent": "(?=a)"}, {b"user-agent": b"a"}, False),  # stored before RE2: the rule cannot match
        ({"region": ["eu-west", "eu-north"]}, {b"x-region": b"eu-north"}, True),
        ({"region": ["eu-west"]}, {b"x-region": b"us-east"}, False),
        ({"region": ["eu-west"], "region_header": "CF-Region"}, {b"cf-region": b"eu-west"}, True),
        ({"region": ["eu-west"], "region_header": "CF-Region"}, {b"x-region": b"eu-west"}, False),
        ({"headers": {"X-T": "1"}, "region": ["eu"]}, {b"x-t": b"1", b"x-region": b"eu"}, True),
    ],
    ids=[
        "header",
        "header-case-of-value",
        "header-absent",
        "all-headers",
        "ua-regex",
        "ua-other-version",
        "ua-absent",
        "ua-nested-quantifier-1024",
        "ua-nested-quantifier-no-match",
        "ua-over-the-bound",
        "ua-pattern-re2-refuses",
        "region-listed",
        "region-other",
        "region-configured-header",
        "region-default-header-ignored",
        "header-and-region",
    ],
)
def test_match_rules(rule: dict[str, Any], headers: dict[bytes, bytes], expected: bool) -> None:
    assert _rule(**rule).matches(headers) is expected


def test_request_headers_from_the_proxys_flat_head() -> None:
    flat = [b"", b"User-Agent", b": ", b"curl/8", b"\r\n", b"X-Region", b": ", b"eu", b"\r\n"]
    flat += [b"x-region", b": ", b"us", b"\r\n", b"\r\n"]  # a repeated header: the first one counts
    assert request_headers(flat) == {b"user-agent": b"curl/8", b"x-region": b"eu"}


def _table(groups: dict[str, GroupDef], replicas: dict[str, int]) -> RoutingTable:
    routes = {
        svc: Route(
            service=svc,
            token=None,
            upstreams=tuple(Upstream(f"{svc}-{i}", "127.0.0.1", 20000 + i) for i in range(n)),
        )
        for svc, n in replicas.items()
    }
    return RoutingTable(version=1, routes=routes, groups=groups)


def _states(group: GroupDef, replicas: dict[str, int]) -> Any:
    table = _table({group.name: group}, replicas)
    metrics = GatewayMetrics()
    routes = build_routes(table, {}, {}, metrics)
    return build_groups(table.groups, routes, metrics)[group.name]


TESTERS = MemberMatch(headers=(("X-Tester", "1"),))


@pytest.mark.parametrize(
    ("members", "replicas", "headers", "r", "expected"),
    [
        ([("a", 900, None), ("b", 100, None)], {"a": 1, "b": 1}, {}, 0.95, "b"),
        ([("a", 900, None), ("b", 0, TESTERS)], {"a": 1, "b": 1}, {b"x-tester": b"1"}, 0.0, "b"),
        ([("a", 900, None), ("b", 0, TESTERS)], {"a": 1, "b": 1}, {}, 0.99, "a"),  # unmatched: weights
        # The picked member has no replica but another weighted one has: the other takes it.
        ([("a", 500, None), ("b", 500, None)], {"a": 0, "b": 1}, {}, 0.1, "b"),
        # No weighted member has a replica: the pick among all weighted ones (held there).
        ([("a", 500, None), ("b", 500, None)], {"a": 0, "b": 0}, {}, 0.9, "b"),
        ([("a", 0, None)], {"a": 1}, {}, 0.5, None),  # nobody has weight
        ([("a", 1000, None), ("gone", 1000, None)], {"a": 1}, {}, 0.9, "a"),  # a deleted member is left out
    ],
    ids=["weights", "match-first", "unmatched-follows-weights", "skip-empty", "all-empty", "no-weight", "gone"],
)
def test_choose(members: list[Any], replicas: dict[str, int], headers: dict[bytes, bytes], r: float, expected: str | None) -> None:
    g = GroupDef("g", None, tuple(GroupMember(s, w, 0, m) for s, w, m in members))
    chosen = choose(_states(g, replicas), headers, r)
    assert (chosen.service if chosen is not None else None) == expected


def test_auto_mode_weighs_members_by_routable_replicas() -> None:
    g = GroupDef("g", None, (GroupMember("a", 0), GroupMember("b", 0), GroupMember("c", 0, 10)), traffic_mode="auto")
    state = _states(g, {"a": 3, "b": 1, "c": 2})
    # a has 3 replicas and b 1: shares 3/4 and 1/4; c is a mirror target and gets no live share.
    assert [(m.service, m.weight) for m in state.available] == [("a", 3), ("b", 1)]
    assert choose(state, None, 0.74).service == "a"  # 0.74 * 4 = 2.96 < 3
    assert choose(state, None, 0.75).service == "b"
    assert [m.service for m in state.mirrors] == ["c"]


# --- the group spec ----------------------------------------------------------------------------------


def _group(**kw: Any) -> dict[str, Any]:
    return {"kind": "ServiceGroup", "name": "shop", "routes": [{"service": "a", "weight": 1000}], **kw}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_group(routes=[{"service": "a", "weight": 1001}]), "routes[0].weight: must be 0..1000, got 1001"),
        (_group(routes=[{"service": "a", "weight": -1}]), "routes[0].weight: must be 0..1000, got -1"),
        (_group(routes=[{"service": "b", "mirror_weight": 101}]), "routes[0].mirror_weight: must be a percentage 0..100, got 101"),
        (_group(routes=[{"service": "a", "weight": 100, "mirror_weight": 5}]), "would mirror to itself"),
        (_group(routes=[{"service": "a"}, {"service": "a"}]), "routes[1].service: 'a' is listed twice"),
        (_group(routes=[{"service": "shop"}]), "routes[0].service: a group cannot be its own member"),
        (_group(name="Shop"), "name: must start with a lowercase letter"),
        (_group(traffic_mode="random"), "traffic_mode: input should be 'customized' or 'auto'"),
        (_group(routes=[{"service": "a", "match": {"user_agent": "("}}]), "routes[0].match.user_agent: not a pattern RE2 can match (no backreferences, no lookaround): missing ): ("),
        (_group(routes=[{"service": "a", "match": {"user_agent": r"(a)\1"}}]), "routes[0].match.user_agent: not a pattern RE2 can match (no backreferences, no lookaround): invalid escape sequence: \\1"),
        (_group(routes=[{"service": "a", "match": {"user_agent": "(?=a)b"}}]), "routes[0].match.user_agent: not a pattern RE2 can match (no backreferences, no lookaround): invalid perl operator: (?="),
        (_group(routes=[{"service": "a", "match": {"user_agent": "a" * 513}}]), "routes[0].match.user_agent: longer than 512 characters"),
        (_group(routes=[{"service": "a", "match": {}}]), "routes[0].match: give at least one of headers, user_agent, region"),
        (_group(routes=[{"service": "a", "match": {"headers": {"bad name": "x"}}}]), "routes[0].match.headers: 'bad name' is not a header name"),
        (_group(routes=[{"service": "a", "wieght": 5}]), "routes[0].wieght: extra inputs are not permitted"),
    ],
    ids=["weight-high", "weight-negative", "mirror-over-100", "mirror-to-itself", "twice", "itself", "name", "mode", "regex",
         "regex-backreference", "regex-lookahead", "regex-too-long", "empty-match", "header-name", "typo"],
)
def test_bad_group_specs_are_refused_naming_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_group(data)
    assert any(message in line for line in e.value.errors), e.value.errors


def test_a_group_spec_round_trips() -> None:
    data = _group(
        routes=[
            {"service": "a", "weight": 900},
            {"service": "b", "weight": 100, "match": {"headers": {"X-Tester": "1"}, "region": "eu"}},
            {"service": "c", "mirror_weight": 5},
        ]
    )
    spec = parse_group(data)
    assert spec.routes[1].match is not None and spec.routes[1].match.region == ["eu"]  # one value → a list
    assert parse_group(spec.to_dict()) == spec


# --- metrics read back ---------------------------------------------------------------------------------


def _buckets(**at: int) -> list[int]:
    out = [0] * len(GROUP_LATENCY_BUCKETS_S)
    for bound, n in at.items():
        out[GROUP_LATENCY_BUCKETS_S.index(float(bound.replace("_", ".").lstrip("s")))] = n
    return out


@pytest.mark.parametrize(
    ("buckets", "q", "expected_s"),
    [
        (_buckets(s0_01=100), 0.5, 0.00875),  # all in (0.0075, 0.01]: halfway, 0.0075 + 0.0025 * 50/100
        (_buckets(s0_01=99, s1_0=1), 0.99, 0.01),  # rank 99 is the last of the first bucket
        (_buckets(s0_01=98, s1_0=2), 0.99, 0.875),  # rank 99 is the first of two in (0.75, 1.0]: 0.75 + 0.25/2
        ([0] * len(GROUP_LATENCY_BUCKETS_S), 0.99, None),
    ],
    ids=["middle", "edge", "tail", "empty"],
)
def test_quantile(buckets: list[int], q: float, expected_s: float | None) -> None:
    got = quantile(buckets, q)
    assert got == (pytest.approx(expected_s) if expected_s is not None else None)


def test_success_ratio_and_bucket_delta() -> None:
    assert success_ratio({"200": 98, "404": 1, "500": 1}) == pytest.approx(0.99)  # a 4xx is not a failure
    assert success_ratio({}) is None
    assert bucket_delta([5, 7], [2, 3]) == [3, 4]
    assert bucket_delta([1, 0], [2, 3]) == [1, 0]  # went down: a gateway restart, counted from 0


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (b'{"x": 1}', b'{"x": 1}', True),
        (b'{"id": "c-1", "created": 1, "x": 1}', b'{"id": "c-2", "created": 2, "x": 1}', True),  # ids differ always
        (b'{"x": 1}', b'{"x": 2}', False),
        (b"plain", b"plain", True),
        (b"plain", b"other", False),
        (None, b"x", False),  # not captured whole
    ],
    ids=["equal", "volatile-keys", "differ", "text", "text-differ", "uncaptured"],
)
def test_bodies_agree(a: bytes | None, b: bytes | None, same: bool) -> None:
    assert bodies_agree(a, b) is same


def test_compare_stats_count_and_sample() -> None:
    c = CompareStats()
    c.add("blue", 200, b'{"x": 1}', 0.010, 200, b'{"x": 1}', 0.030)
    c.add("blue", 200, b'{"x": 1}', 0.010, 500, b'{"e": 1}', 0.005)
    c.add("blue", 200, b'{"x": 1}', 0.010, 200, b'{"x": 9}', 0.010)
    assert (c.pairs, c.status_differ, c.body_differ) == (3, 1, 1)
    assert c.latency_delta_sum_s == pytest.approx(0.020 - 0.005 + 0.0)
    assert [s.mirror_status for s in c.samples] == [500, 200]


def test_response_body_of_a_captured_answer() -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert response_body(chunked) == (200, b"abcde")
    assert response_body(b"HTTP/1.1 503 X\r\nContent-Length: 4\r\n\r\nab") == (503, None)  # cut short
    assert response_body(None) == (0, None)


def test_the_stats_datagram_carries_each_members_live_traffic() -> None:
    """What the staged rollout reads (the counters datagram) is what GET /groups/<g> shows under
    ``live``: mirrored copies are not in it."""
    metrics = GatewayMetrics()
    new = metrics.group_member("g", "new")
    new.live.finish(200, 0.004)
    new.live.finish(503, 0.004)
    new.live.finish(200, 2.5)
    new.mirror.finish(500, 0.01)  # a mirrored copy: not live traffic
    metrics.group_member("g", "old")
    metrics.group_member("h", "x").live.finish(200, 0.001)
    sent = decode_all(encode("gw", 1.0, {}, groups=group_samples(metrics))[0]).groups
    assert sent is not None and set(sent) == {"g", "h"}
    assert sent["g"]["new"].by_code == {"200": 2, "503": 1}
    assert sent["g"]["old"] == MemberSample({}, (0,) * len(GROUP_LATENCY_BUCKETS_S))
    shown = json.loads(group_json("g", {"new": new.to_dict()}))["members"]["new"]["live"]
    assert sent["g"]["new"].by_code == shown["by_code"] and list(sent["g"]["new"].buckets) == shown["buckets"]
    assert quantile(list(sent["g"]["new"].buckets), 0.5) == pytest.approx(0.004, abs=0.001)

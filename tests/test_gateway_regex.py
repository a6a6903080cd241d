"""Issue 18 §4: a group's ``match.user_agent`` of ``^(a+)+$`` and a long User-Agent of ``a``s and
a ``b`` froze the whole gateway (Python's backtracking ``re``, doubling per character). With RE2
the match completes, the request is routed by weight, and the other services are served while
such requests keep coming (a real gateway over real sockets, aiohttp replicas)."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from openeas.gateway import Gateway
from openeas.kernel.groups import GroupDef, GroupMember, MemberMatch
from openeas.kernel.routing import RoutingTable
from openeas.linear_regex import MAX_MATCHED_CHARS
from tests.conftest_gateway import LoopThread, MemorySource, route, start_gateway, start_upstream

EVIL = "^(a+)+$"


@dataclass
class Env:
    lt: LoopThread
    gw: Gateway

    def get(self, path: str, user_agent: str = "probe") -> tuple[int, str]:
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        try:
            c.request("GET", path, headers={"User-Agent": user_agent})
            r = c.getresponse()
            body = r.read()
            return r.status, json.loads(body)["replica"] if r.status == 200 else body.decode()
        finally:
            c.close()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lt = LoopThread()
    runners, ports = zip(*(lt.run(start_upstream(n)) for n in ("A", "B", "C")), strict=True)
    a, b, c = ports
    ruled = GroupMember("a", 0, 0, MemberMatch(user_agent=EVIL))
    groups = {"ua": GroupDef("ua", None, (ruled, GroupMember("b", 1000)))}
    routes = {"a": route("a", [a]), "b": route("b", [b]), "other": route("other", [c])}
    tbl = RoutingTable(version=1, routes=routes, groups=groups)
    gw = lt.run(start_gateway(MemorySource(tbl)))
    gw.apply(tbl)
    yield Env(lt, gw)
    lt.run(gw.stop(grace_s=1))
    for r in runners:
        lt.run(r.cleanup())
    lt.stop()


@pytest.mark.parametrize(
    ("user_agent", "replica"),
    [
        ("a" * 28, "A"),  # matched: the member of the rule
        ("a" * 28 + "b", "B"),  # the 4.8 s request of the issue: no match, the weighted member
        ("a" * (MAX_MATCHED_CHARS - 1) + "b", "B"),
        ("a" * MAX_MATCHED_CHARS, "A"),
        ("a" * (MAX_MATCHED_CHARS + 1), "B"),  # over the bound: never matched
    ],
    ids=["match-28", "issue-28-and-b", "bound-minus-one-and-b", "at-the-bound", "over-the-bound"],
)
def test_the_rule_is_decided_for_any_user_agent(env: Env, user_agent: str, replica: str) -> None:
    assert env.get("/api/predict/ua/x", user_agent) == (200, replica)


def test_other_services_are_served_while_evil_user_agents_keep_coming(env: Env) -> None:
    evil = "a" * (MAX_MATCHED_CHARS - 1) + "b"
    answers: list[tuple[int, str]] = []

    def attack() -> None:
        for _ in range(40):
            answers.append(env.get("/api/predict/ua/x", evil))

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    served = [env.get("/api/predict/other/x") for _ in range(50)]  # each within the 10 s client timeout
    for t in attackers:
        t.join(60)
    assert served == [(200, "C")] * 50
    assert answers == [(200, "B")] * 160  # every match completed: routed by weight

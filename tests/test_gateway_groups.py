"""Service groups in a real gateway over real sockets (aiohttp replicas, an in-process gateway fed
a routing table): the copy a mirror member gets (same body, chunked bodies re-framed with a
Content-Length, the mirror header), the drops, the gateway's own answers for groups (404, 401,
503) and its ``GET /groups/<group>`` counters."""

from __future__ import annotations

import hashlib
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from openeas.gateway import Gateway
from openeas.kernel.groups import GroupDef, GroupMember
from openeas.kernel.routing import RoutingTable
from tests.conftest_gateway import LoopThread, MemorySource, route, start_gateway, start_upstream
from tests.harness import wait_for

GROUP_TOKEN = "group-token-123"


@dataclass
class Env:
    lt: LoopThread
    gw: Gateway

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.gw.port, timeout=10)
        try:
            c.request(method, path, body=body, headers={"Authorization": GROUP_TOKEN, **(headers or {})})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stats(self, group: str = "g") -> dict[str, Any]:
        status, body = self.request("GET", f"/groups/{group}")
        assert status == 200, body
        data: dict[str, Any] = json.loads(body)
        return data


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    lt = LoopThread()
    ra, a = lt.run(start_upstream("A"))
    rb, b = lt.run(start_upstream("B"))
    groups = {
        "g": GroupDef("g", GROUP_TOKEN, (GroupMember("a", 1000), GroupMember("b", 0, 100))),
        "idle": GroupDef("idle", GROUP_TOKEN, (GroupMember("a", 0),)),
    }
    tbl = RoutingTable(version=1, routes={"a": route("a", [a]), "b": route("b", [b])}, groups=groups)
    source = MemorySource(tbl)
    gw = lt.run(start_gateway(source))
    gw.apply(tbl)
    yield Env(lt, gw)
    lt.run(gw.stop(grace_s=1))
    lt.run(ra.cleanup())
    lt.run(rb.cleanup())
    lt.stop()


def latest_copy(env: Env, n: int) -> dict[str, Any]:
    """The candidate's answer to the n-th compared pair (B echoes what it received)."""
    wait_for(lambda: env.stats()["members"]["b"]["compare"]["pairs"] >= n, 5, what=f"pair {n}")
    sample = env.stats()["members"]["b"]["compare"]["samples"][-1]
    assert json.loads(sample["body"])["replica"] == "A"  # the client got the primary's answer
    copy: dict[str, Any] = json.loads(sample["mirror_body"])
    return copy


def test_a_copy_carries_the_same_body_and_says_it_is_a_copy(env: Env) -> None:
    body = b'{"prompt": "' + b"x" * 5000 + b'"}'
    status, answer = env.request("POST", "/api/predict/g/v1/echo?q=1", body=body, headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer)["replica"] == "A"
    copy = latest_copy(env, 1)
    assert copy["replica"] == "B" and copy["path_qs"] == "/v1/echo?q=1" and copy["method"] == "POST"
    assert copy["body_md5"] == hashlib.md5(body).hexdigest()
    assert copy["headers"]["X-OpenEAS-Mirror"] == "1"
    assert "Authorization" not in copy["headers"]  # the token is checked, never forwarded


def test_a_chunked_body_is_copied_with_a_content_length(env: Env) -> None:
    parts = [b"abc" * 100, b"def" * 200, b"g"]
    status, _ = env.request("POST", "/api/predict/g/chunked", body=iter(parts))  # no length: sent chunked
    assert status == 200
    copy = latest_copy(env, 2)
    whole = b"".join(parts)
    assert copy["body_len"] == len(whole) and copy["body_md5"] == hashlib.md5(whole).hexdigest()
    assert copy["headers"]["Content-Length"] == str(len(whole)) and "Transfer-Encoding" not in copy["headers"]


def test_a_body_over_the_mirror_limit_is_not_copied_and_the_drop_is_counted(env: Env) -> None:
    body = b"y" * (1024 * 1024 + 1)  # MIRROR_MAX_BODY_BYTES + 1
    status, answer = env.request("POST", "/api/predict/g/big-body", body=body)
    assert status == 200 and json.loads(answer)["body_len"] == len(body)
    assert env.stats()["members"]["b"]["mirror_dropped"] == {"too_large": 1}


@pytest.mark.parametrize(
    ("path", "token", "status", "code"),
    [
        ("/api/predict/nogroup", GROUP_TOKEN, 404, "service_not_found"),
        ("/api/predict/g", "wrong-token", 401, "invalid_token"),
        ("/api/predict/g.nope", GROUP_TOKEN, 404, "member_not_found"),
        ("/api/predict/idle", GROUP_TOKEN, 503, "no_weighted_member"),
        ("/groups/g", "wrong-token", 401, "unauthorized"),
        ("/groups/nogroup", GROUP_TOKEN, 404, "not_found"),
    ],
    ids=["unknown", "wrong-token", "unknown-member", "no-weight", "stats-token", "stats-unknown"],
)
def test_the_gateways_own_answers_for_groups(env: Env, path: str, token: str, status: int, code: str) -> None:
    c = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=10)
    c.request("GET", path, headers={"Authorization": token})
    r = c.getresponse()
    assert r.status == status
    assert json.loads(r.read())["error"]["code"] == code


def test_metrics_name_groups_members_and_traffic(env: Env) -> None:
    env.request("GET", "/api/predict/g/m")
    text = http.client.HTTPConnection("127.0.0.1", env.gw.port, timeout=10)
    text.request("GET", "/metrics")
    body = text.getresponse().read().decode()
    assert 'openeas_gateway_group_requests_total{group="g",service="a",traffic="live",code="200"}' in body
    assert 'openeas_gateway_group_requests_total{group="g",service="b",traffic="mirror",code="200"}' in body
    assert 'openeas_gateway_group_mirror_dropped_total{group="g",service="b",reason="too_large"} 1' in body

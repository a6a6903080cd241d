"""The balancer registry and each balancer, as pure functions of replicas, `now` and a key; the
ring's bounded load and its stability when replicas come and go (gateway/routing/affinity.py)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from openeas.gateway.routing.affinity import (
    BOUNDED_LOAD_EPSILON,
    PREFIX_BODY_BYTES,
    PREFIX_KEY_CHARS,
    RING_POINTS,
    Ring,
    load_bound,
    prefix_key,
    session_key,
)
from openeas.gateway.routing.balancers import UnknownBalancerError, balancer_names, create_balancer
from openeas.kernel.routing import BALANCER_NAMES


@dataclass(eq=False)
class Rep:
    name: str
    outstanding: int = 0
    cooldown_until: float = 0.0
    waiting: float = -1.0
    kv_usage: float = -1.0


def reps(n: int) -> list[Rep]:
    return [Rep(f"r{i}") for i in range(n)]


def test_registry_names_match_the_kernels_list() -> None:
    # The spec validates metadata.balancer against kernel.routing.BALANCER_NAMES (the spec layer
    # cannot import the gateway); the registry is the truth.
    assert balancer_names() == sorted(BALANCER_NAMES)


def test_unknown_balancer_names_the_known_ones() -> None:
    with pytest.raises(UnknownBalancerError) as e:
        create_balancer("fastest")
    assert "unknown balancer 'fastest'; known: least-kv, least-request" in str(e.value)


def test_documented_defaults() -> None:
    assert (PREFIX_BODY_BYTES, PREFIX_KEY_CHARS, RING_POINTS, BOUNDED_LOAD_EPSILON) == (
        16384,
        4096,
        100,
        0.25,
    )


@pytest.mark.parametrize("name", sorted(BALANCER_NAMES))
@pytest.mark.parametrize(
    ("loads", "cool", "exclude", "allowed"),
    [
        pytest.param([0, 0, 0], [], [], {0, 1, 2}, id="all-eligible"),
        pytest.param([0, 0, 0], [0, 1], [], {2}, id="cooling-skipped"),
        pytest.param([0, 0, 0], [0, 1, 2], [], {0, 1, 2}, id="all-cooling-still-picks"),
        pytest.param([0, 0, 0], [], [0, 2], {1}, id="excluded-skipped"),
    ],
)
def test_every_balancer_respects_exclusion_and_cooldown(
    name: str, loads: list[int], cool: list[int], exclude: list[int], allowed: set[int]
) -> None:
    b = create_balancer(name)
    ups = reps(3)
    for i in cool:
        ups[i].cooldown_until = 10.0
    for key in (None, b"k1", b"k2", b"k3"):
        i = b.pick(ups, 5.0, [ups[j] for j in exclude], key)
        assert i in allowed, (name, key, i)
        assert b.reason


@pytest.mark.parametrize("name", sorted(BALANCER_NAMES))
def test_every_balancer_returns_minus_one_when_nothing_is_eligible(name: str) -> None:
    ups = reps(2)
    assert create_balancer(name).pick(ups, 0.0, ups, b"k") == -1
    assert create_balancer(name).pick([], 0.0, (), b"k") == -1


@pytest.mark.parametrize(
    ("name", "loads", "expected"),
    [
        pytest.param("least-request", [3, 1, 2], 1, id="least-request"),
        pytest.param("power-of-two", [5, 0], 1, id="power-of-two-two-replicas-is-least"),
        pytest.param("least-waiting", [0, 0, 0], 2, id="least-waiting"),
        pytest.param("least-kv", [0, 0, 0], 0, id="least-kv"),
    ],
)
def test_load_balancers_pick_the_least_loaded(name: str, loads: list[int], expected: int) -> None:
    ups = reps(len(loads))
    for u, n in zip(ups, loads, strict=True):
        u.outstanding = n
    ups[0].waiting, ups[1].waiting, ups[2 % len(ups)].waiting = 4, 3, 0
    ups[0].kv_usage, ups[1].kv_usage, ups[2 % len(ups)].kv_usage = 0.1, 0.5, 0.9
    if len(ups) == 2:
        ups[1].waiting, ups[1].kv_usage = 0, 0.0
    assert create_balancer(name).pick(ups, 0.0) == expected


def test_least_waiting_unknown_signal_falls_back_to_outstanding() -> None:
    ups = reps(3)
    ups[0].outstanding, ups[1].outstanding, ups[2].outstanding = 2, 0, 1
    b = create_balancer("least-waiting")
    assert b.pick(ups, 0.0) == 1
    assert b.reason == "least waiting (unknown: fewest outstanding)"


def test_power_of_two_never_picks_the_most_loaded_of_three() -> None:
    ups = reps(3)
    ups[0].outstanding, ups[1].outstanding, ups[2].outstanding = 9, 1, 2
    b = create_balancer("power-of-two")
    random.seed(1)
    assert 0 not in {b.pick(ups, 0.0) for _ in range(200)}


def test_round_robin_takes_turns() -> None:
    b = create_balancer("round-robin")
    ups = reps(3)
    assert [b.pick(ups, 0.0) for _ in range(6)] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("name", ["prefix-affinity", "session-affinity"])
def test_affinity_same_key_same_replica_without_load(name: str) -> None:
    b = create_balancer(name)
    ups = reps(4)
    picks = {key: b.pick(ups, 0.0, (), key) for key in (b"a", b"b", b"c", b"d", b"e")}
    for _ in range(3):
        assert {key: b.pick(ups, 0.0, (), key) for key in picks} == picks
    assert b.reason.endswith("affinity: ring owner")


def test_affinity_without_key_is_least_request() -> None:
    b = create_balancer("prefix-affinity")
    ups = reps(3)
    ups[0].outstanding, ups[1].outstanding, ups[2].outstanding = 2, 0, 1
    assert b.pick(ups, 0.0, (), None) == 1
    assert b.reason == "no prefix key: fewest outstanding requests"


def test_bounded_load_one_hot_prefix_spills_to_the_next_replica() -> None:
    b = create_balancer("prefix-affinity")
    ups = reps(4)
    owner = b.pick(ups, 0.0, (), b"hot")
    # Hold every request (nothing answers): 40 requests of one key. The owner takes requests
    # while its outstanding < 1.25 x (total + 1) / 4, so it never holds more than
    # ceil(1.25 x 40 / 4) = 13 of them, and the key walks on along the ring.
    for _ in range(40):
        i = b.pick(ups, 0.0, (), b"hot")
        ups[i].outstanding += 1
    counts = [u.outstanding for u in ups]
    assert max(counts) <= 13, counts
    assert counts[owner] == max(counts)
    assert sum(counts) == 40


@pytest.mark.parametrize(
    ("total", "replicas", "expected"),
    [
        pytest.param(0, 4, 1.0, id="idle-floor-1"),
        pytest.param(7, 2, 5.0, id="1.25x(7+1)/2"),
        pytest.param(39, 4, 12.5, id="1.25x(39+1)/4"),
    ],
)
def test_load_bound(total: int, replicas: int, expected: float) -> None:
    assert load_bound(total, replicas) == pytest.approx(expected)


def test_ring_spreads_keys_evenly() -> None:
    ring = Ring([f"r{i}" for i in range(4)])
    owners = Counter(ring.walk(b"key-%d" % k)[0] for k in range(4000))
    # 100 points per replica: each share within ±30% of the mean of 1000.
    assert all(700 <= n <= 1300 for n in owners.values()), owners


def test_ring_adding_a_replica_moves_about_one_nth_of_the_keys() -> None:
    keys = [b"prefix-%d" % k for k in range(4000)]
    before = Ring([f"r{i}" for i in range(4)])
    after = Ring([f"r{i}" for i in range(5)])
    moved = [k for k in keys if before.names[before.walk(k)[0]] != after.names[after.walk(k)[0]]]
    # The 5th replica takes ~1/5 of the keys; only those move (none move between old replicas).
    assert 0.12 <= len(moved) / len(keys) <= 0.28
    assert all(after.names[after.walk(k)[0]] == "r4" for k in moved)


def test_ring_removing_a_replica_moves_only_its_keys() -> None:
    keys = [b"p%d" % k for k in range(2000)]
    before = Ring(["a", "b", "c"])
    after = Ring(["a", "c"])
    for k in keys:
        old = before.names[before.walk(k)[0]]
        if old != "b":
            assert after.names[after.walk(k)[0]] == old


def chat(system: str, *turns: str, user: str | None = None) -> bytes:
    import json

    msgs = [{"role": "system", "content": system}] + [{"role": "user", "content": t} for t in turns]
    body: dict[str, object] = {"model": "m", "messages": msgs}
    if user is not None:
        body["user"] = user
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        pytest.param(chat("S1", "hi"), chat("S1", "hi", "more"), True, id="later-turns-keep-the-key"),
        pytest.param(chat("S1", "hi"), chat("S2", "hi"), False, id="other-system-prompt"),
        pytest.param(chat("S1", "hi"), chat("S1", "bye"), True, id="other-user-turn-same-system"),
        pytest.param(
            b'{"messages":[{"role":"user","content":"U"},{"role":"assistant","content":"A"}]}',
            b'{"messages":[{"role":"user","content":"U"}]}',
            True,
            id="no-system-first-message",
        ),
        pytest.param(
            b'{"model":"m","prompt":"P","max_tokens":1}',
            b'{"prompt":"P","max_tokens":9}',
            True,
            id="completion",
        ),
        pytest.param(b"raw bytes", b"raw bytes", True, id="not-json-leading-bytes"),
    ],
)
def test_prefix_key(a: bytes, b: bytes, same: bool) -> None:
    assert (prefix_key(a, True) == prefix_key(b, True)) is same


def test_prefix_key_of_a_cut_body_is_its_leading_bytes() -> None:
    body = b"x" * (PREFIX_KEY_CHARS + 10)
    assert prefix_key(body, False) == body[:PREFIX_KEY_CHARS]
    assert prefix_key(b"", True) is None


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        pytest.param(b"s-1", b"", b"s-1", id="header"),
        pytest.param(None, chat("S", "hi", user="alice"), b"alice", id="chat-user"),
        pytest.param(b"s-2", chat("S", "hi", user="alice"), b"s-2", id="header-wins"),
        pytest.param(None, chat("S", "hi"), None, id="none"),
        pytest.param(None, b"{not json", None, id="bad-json"),
    ],
)
def test_session_key(header: bytes | None, body: bytes, expected: bytes | None) -> None:
    assert session_key(header, body, True) == expected


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param({}, "least-request", id="default"),
        pytest.param({"balancer": "prefix-affinity"}, "prefix-affinity", id="named"),
    ],
)
def test_spec_balancer_reaches_the_route(metadata: dict[str, str], expected: str) -> None:
    from openeas.spec.models import ServiceSpec
    from openeas.store.routing import route_settings

    spec = ServiceSpec.model_validate(
        {"metadata": {"name": "svc", **metadata}, "containers": [{"image": "i", "command": "c", "port": 8000}]}
    )
    assert route_settings(spec).balancer == expected


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param({"name": "svc"}, "least-request", id="default"),
        pytest.param({"name": "svc", "balancer": "prefix-affinity"}, "prefix-affinity", id="named"),
    ],
)
def test_describe_shows_the_balancer(metadata: dict[str, str], expected: str) -> None:
    from openeas.cli import render

    with render.out.capture() as cap:
        render.out.print(render.summary_grid({"name": "svc", "spec": {"metadata": metadata}}))
    assert f"Balancer  {expected}" in cap.get()

"""Affinity balancers through the real client protocol (tests/fakeloop.py): the gateway waits for
the body's first bytes (bounded) only for services that ask for a key, picks by the key, says why
on request (X-OpenEAS-Replica) and counts picks by balancer on /metrics."""

from __future__ import annotations

import json

import pytest

from openeas.gateway.routing.affinity import PREFIX_BODY_BYTES
from tests.fakeloop import OK, Gateway, route

REPLICAS = ("a", "b", "c", "d")


def post(body: bytes, *headers: bytes, chunked: bool = False) -> tuple[bytes, bytes]:
    """A request's head and body (chunked: one chunk and the last chunk)."""
    extra = b"".join(h + b"\r\n" for h in headers)
    if chunked:
        head = b"POST /api/predict/svc/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n"
        return head + extra + b"\r\n", b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    head = b"POST /api/predict/svc/v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n" % len(body)
    return head + extra + b"\r\n", body


def chat(system: str, turn: str, user: str | None = None) -> bytes:
    doc: dict[str, object] = {"messages": [{"role": "system", "content": system}, {"role": "user", "content": turn}]}
    if user:
        doc["user"] = user
    return json.dumps(doc).encode()


def serve(gw: Gateway, head: bytes, body: bytes, *, split: bool = True) -> tuple[str, bytes]:
    """Send one request (head, then body), answer it on whichever replica got it; that replica's
    name and what the client received."""
    client = gw.client()
    client.send(head)
    if split:
        # Nothing reaches a replica before the body: the balancer needs the key.
        assert not any(c.client is not None for r in gw.replicas.values() for c in r.conns)
    client.send(body)
    got = [name for name, r in gw.replicas.items() if any(c.client is not None for c in r.conns)]
    assert len(got) == 1, got
    replica = gw.replicas[got[0]]
    i = next(k for k, c in enumerate(replica.conns) if c.client is not None)
    assert replica.received(i).endswith(body)
    replica.answer(OK, i)
    return got[0], client.received()


@pytest.mark.parametrize("chunked", [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")])
def test_prefix_affinity_same_system_prompt_same_replica(chunked: bool) -> None:
    gw = Gateway(route(*REPLICAS, balancer="prefix-affinity"))
    firsts = {}
    for system in ("S1", "S2", "S3", "S4", "S5", "S6"):
        firsts[system] = serve(gw, *post(chat(system, "hello"), chunked=chunked))[0]
    for turn in ("again", "more", "and more"):
        for system, replica in firsts.items():
            assert serve(gw, *post(chat(system, turn), chunked=chunked))[0] == replica
    assert len(set(firsts.values())) > 1  # six prompts do not all land on one replica
    picks = gw.metrics.picks
    assert picks == {("prefix-affinity", "owner"): 24}
    assert b'openeas_gateway_balancer_picks_total{balancer="prefix-affinity",outcome="owner"} 24' in (
        gw.metrics.render()
    )


def test_session_affinity_by_header_or_chat_user() -> None:
    gw = Gateway(route(*REPLICAS, balancer="session-affinity"))
    by_user = {u: serve(gw, *post(chat(f"S{k}", "hi", user=u)))[0] for k, u in enumerate(["u1", "u2", "u3", "u4"])}
    for k, (u, replica) in enumerate(by_user.items()):
        assert serve(gw, *post(chat(f"other{k}", "later", user=u)))[0] == replica
    a = serve(gw, *post(b"{}", b"X-OpenEAS-Session: s-42"))[0]
    assert all(serve(gw, *post(b"[%d]" % k, b"X-OpenEAS-Session: s-42"))[0] == a for k in range(5))


def test_explain_header_names_the_replica_and_why() -> None:
    gw = Gateway(route(*REPLICAS, balancer="prefix-affinity"))
    name, answer = serve(gw, *post(chat("S", "hi"), b"X-OpenEAS-Explain: 1"))
    assert f'X-OpenEAS-Replica: {name}; reason="prefix affinity: ring owner"\r\n'.encode() in answer
    _, plain = serve(gw, *post(chat("S", "hi")))
    assert b"X-OpenEAS-Replica" not in plain


def test_explain_for_a_balancer_that_reads_no_body() -> None:
    gw = Gateway(route("a", "b", balancer="least-request"))
    client = gw.client()
    client.send(b"GET /api/predict/svc/x HTTP/1.1\r\nHost: gw\r\nX-OpenEAS-Explain: 1\r\n\r\n")
    got = [r for r in gw.replicas.values() if r.conns]
    assert len(got) == 1  # sent at once: no body wait
    got[0].answer(OK)
    assert b'reason="fewest outstanding requests"' in client.received()


def test_only_the_first_bytes_are_read_before_the_pick() -> None:
    gw = Gateway(route(*REPLICAS, balancer="prefix-affinity"))
    body = b"x" * (PREFIX_BODY_BYTES * 3)
    head, _ = post(body)
    client = gw.client()
    client.send(head)
    client.send(body[: PREFIX_BODY_BYTES - 1])
    assert not any(r.conns for r in gw.replicas.values())
    client.send(body[PREFIX_BODY_BYTES - 1 : PREFIX_BODY_BYTES + 10])  # the key is complete: sent
    got = [r for r in gw.replicas.values() if r.conns]
    assert len(got) == 1
    client.send(body[PREFIX_BODY_BYTES + 10 :])
    assert got[0].received().endswith(body)
    got[0].answer(OK)
    assert client.received() == OK


def test_a_bodyless_request_to_an_affinity_service_is_sent_at_its_end() -> None:
    gw = Gateway(route(*REPLICAS, balancer="prefix-affinity"))
    client = gw.client()
    client.send(b"GET /api/predict/svc/x HTTP/1.1\r\nHost: gw\r\n\r\n")
    got = [r for r in gw.replicas.values() if r.conns]
    assert len(got) == 1
    got[0].answer(OK)
    assert client.received() == OK
    assert gw.metrics.picks == {("prefix-affinity", "no-key"): 1}

"""Owns affinity routing: a request's key (its prompt's leading characters, or its session) and
the consistent-hash ring with bounded load that maps a key to a replica.

Why a ring: an LLM replica that has seen a prefix (a system prompt, a shared document) answers
the next request that repeats it with a fraction of the prefill, so requests sharing a prefix
should meet on one replica; a ring keeps that mapping stable when replicas come and go (adding
the Nth replica moves about 1/N of the keys). Why bounded load (Mirrokni, Thorup and Zadimoghaddam,
"Consistent Hashing with Bounded Loads"): one hot prefix must not pin a replica past
(1 + ε) x its share of the outstanding requests; past that the key walks on to the next replica
on the ring, the same one every time, so the spill is itself cache-friendly.

The body is read only for services whose balancer asks for a key, and only its first
`PREFIX_BODY_BYTES`: a chat body that fits is parsed as JSON (its leading system messages, else
its first message; a completion's prompt); a longer one is keyed by its leading bytes.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Bytes of a request body the gateway reads before it picks a replica for a prefix-affinity
# service (the rest streams through). 16 KiB holds a ~4,000-token system prompt in English.
PREFIX_BODY_BYTES = 16 * 1024
# Characters of the prompt that make the key: enough to tell 1,000-token system prompts apart by
# more than a shared preamble, few enough that a conversation's later turns keep its key.
PREFIX_KEY_CHARS = 4096
# Points per replica on the ring: with 100 the largest share of 2-20 replicas stays within ~10%
# of the mean (the spread shrinks as 1/sqrt(points)).
RING_POINTS = 100
# ε of bounded load: a replica takes a keyed request while its outstanding requests stay under
# (1 + ε) x the mean (the request counted); 0.25 keeps the busiest within 1.25x the mean share.
BOUNDED_LOAD_EPSILON = 0.25
# The header that names a session (session affinity); a chat body's `user` field is the fallback.
SESSION_HEADER = b"x-openeas-session"


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Ring:
    """Points of replicas on a 64-bit ring, by replica name; rebuilt only when the names change."""

    __slots__ = ("names", "owners", "points")

    def __init__(self, names: Sequence[str], points_per_replica: int = RING_POINTS) -> None:
        self.names = tuple(names)
        pts = sorted(
            (_hash(f"{name}#{k}".encode()), i)
            for i, name in enumerate(self.names)
            for k in range(points_per_replica)
        )
        self.points = [p for p, _ in pts]
        self.owners = [i for _, i in pts]

    def walk(self, key: bytes) -> list[int]:
        """Replica indexes in ring order from ``key``'s point, each once."""
        n = len(self.names)
        if n == 0:
            return []
        start = bisect.bisect_left(self.points, _hash(key))
        seen: list[int] = []
        owners = self.owners
        m = len(owners)
        for k in range(m):
            i = owners[(start + k) % m]
            if i not in seen:
                seen.append(i)
                if len(seen) == n:
                    break
        return seen


def load_bound(total_outstanding: int, replicas: int, epsilon: float = BOUNDED_LOAD_EPSILON) -> float:
    """The most outstanding requests a replica may hold and still take a keyed request: (1 + ε)
    x the mean with this request counted (never below 1, so an idle service always takes it)."""
    return max(1.0, (1.0 + epsilon) * (total_outstanding + 1) / max(1, replicas))


def prefix_key(body: bytes, complete: bool) -> bytes | None:
    """The affinity key of a request body's first bytes: an OpenAI chat's system prompt and first
    messages, a completion's prompt, else (not JSON, or cut at `PREFIX_BODY_BYTES`) its leading
    bytes. None for an empty body."""
    if not body:
        return None
    if complete:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        text = _prompt_text(doc) if isinstance(doc, dict) else None
        if text is not None:
            return text[:PREFIX_KEY_CHARS].encode()
    return body[:PREFIX_KEY_CHARS]


def _prompt_text(doc: dict[str, Any]) -> str | None:
    messages = doc.get("messages")
    if isinstance(messages, list) and messages:
        # The leading system messages (what requests share: the instructions, a RAG document),
        # else the first message (a conversation's opening, shared by its later turns).
        lead = [m for m in messages[:8] if isinstance(m, dict)]
        system = []
        for m in lead:
            if m.get("role") not in ("system", "developer"):
                break
            system.append(m)
        parts = []
        for m in system or lead[:1]:
            content = m.get("content")
            parts.append(content if isinstance(content, str) else json.dumps(content, sort_keys=True))
        return "\n".join(parts)
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        return prompt[0]
    return None


def session_key(header: bytes | None, body: bytes, complete: bool) -> bytes | None:
    """A session's key: the `X-OpenEAS-Session` header, else a chat body's `user` field."""
    if header:
        return header
    if not complete or not body:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    user = doc.get("user") if isinstance(doc, dict) else None
    return user.encode() if isinstance(user, str) and user else None


REPLICA_HEADER = "X-OpenEAS-Replica"


def explain_line(replica_id: str, reason: str) -> bytes:
    """The answer's header line (CRLF included) naming the replica and why the balancer chose it,
    for a request that sent `X-OpenEAS-Explain: 1`."""
    line = f'{REPLICA_HEADER}: {replica_id}; reason="{reason}"\r\n'
    return line.encode("latin-1", "replace")


"""The dispatcher: takes queued requests to Ready replicas, stores their results, acknowledges.

For each async service it keeps every Ready replica busy up to the service's window (requests in
flight per replica, EAS's subscription window): it claims as many queued requests as there are
free slots (priority first, then arrival order), gives each to the replica with the most free
slots, calls it, and stores the answer (`QueueBackend.complete`, exactly once per request id). A
failed attempt (the replica died, refused, timed out or answered 5xx) goes back to the queue for
another replica, until ``max_delivery`` attempts have failed: then the request is dead, with its
last error, until re-driven. Leases are renewed while calls run; leases that expired (a
dispatcher that died, a gateway killed) are taken back by whichever dispatcher looks next.

It wakes on an enqueue (`wake`), on a freed slot, on a routing change (`update`), and every
``POLL_S`` for work it cannot be told about (requests another gateway accepted, leases expiring).
Decisions are pure functions (`attempt_outcome`, `assign`); the replica is reached through one
transport boundary (`ReplicaCaller`), so tests can put a fake in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

from openeas.kernel.clock import LOOP_CLOCK, Clock
from openeas.kernel.queue import QueueSettings
from openeas.kernel.routing import Upstream
from openeas.queue.base import DEFAULT_LEASE_S, RENEW_EVERY_S, QueueBackend
from openeas.queue.model import Message, Result, State

log = logging.getLogger("openeas.queue")

POLL_S = 0.2  # seconds between two looks at a service's queue when nothing woke the dispatcher
RECLAIM_EVERY_S = 1.0  # seconds between two looks for expired leases, per service
EXPIRE_EVERY_S = 30.0  # seconds between two deletions of results past their TTL
STOP_POLL_S = 0.05  # seconds between two looks for calls still in flight while stopping
# Seconds a replica that failed an attempt gets no new request: the request goes to another one,
# and a replica that just died does not burn the attempts of the requests behind it before its
# supervisor takes it out of the routing table.
COOLDOWN_S = 1.0
# Headers not stored with a result or forwarded to a replica: hop-by-hop, or the gateway's own.
_SKIP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "te",
        "trailer",
        "date",
        "server",
        "proxy-connection",
        "authorization",
        "host",
    }
)


class Outcome(Enum):
    STORE = "store"  # the answer is the result (2xx-4xx: the replica decided)
    RETRY = "retry"  # the attempt failed: another replica, or dead letter past max_delivery


def attempt_outcome(status: int | None) -> Outcome:
    """What one replica call means. ``status`` None: no answer (refused, died, timed out).
    5xx and 429 (the replica is overloaded or broken) are failed attempts; other answers,
    client errors included, are the request's result."""
    if status is None or status >= 500 or status == 429:
        return Outcome.RETRY
    return Outcome.STORE


def assign(free: dict[str, int], n: int) -> list[str]:
    """Which replica takes each of ``n`` claimed requests: always the one with the most free
    slots (ties: the first in ``free``'s order), never more than a replica's free slots."""
    slots = dict(free)
    out: list[str] = []
    for _ in range(n):
        rid = max(slots, key=lambda r: slots[r], default=None)
        if rid is None or slots[rid] <= 0:
            break
        slots[rid] -= 1
        out.append(rid)
    return out


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class CallFailed(Exception):
    """The replica gave no usable answer (refused, closed, timed out, too large)."""


class ReplicaCaller(Protocol):
    async def call(self, target: Upstream, msg: Message, timeout_s: float, max_bytes: int) -> Answer: ...

    async def close(self) -> None: ...


class HttpCaller:
    """Calls replicas over HTTP/1.1 with aiohttp (pooled keep-alive connections)."""

    def __init__(self) -> None:
        self._session: object | None = None

    def _client(self) -> object:
        if self._session is None:
            import aiohttp  # the gateway imports it only when a service is async

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def call(self, target: Upstream, msg: Message, timeout_s: float, max_bytes: int) -> Answer:
        import aiohttp

        session = self._client()
        assert isinstance(session, aiohttp.ClientSession)
        url = f"http://{target.host}:{target.port}{msg.path}"
        try:
            async with session.request(
                msg.method,
                url,
                headers=msg.headers,
                data=msg.body or None,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as resp:
                body = await resp.content.read(max_bytes + 1)
                if len(body) > max_bytes:
                    raise CallFailed(f"the answer exceeds {max_bytes} bytes (queue.sink.max_payload_size_kb)")
                headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in _SKIP_HEADERS]
                return Answer(resp.status, headers, body)
        except TimeoutError:
            raise CallFailed(f"replica {target.replica_id} did not answer within {timeout_s:g} s") from None
        except aiohttp.ClientError as e:
            raise CallFailed(f"replica {target.replica_id}: {type(e).__name__}: {e}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()  # type: ignore[attr-defined]
            self._session = None


@dataclass
class DispatchStats:
    """One service's dispatch counters (the gateway's /metrics)."""

    dispatched: int = 0  # attempts started
    completed: int = 0  # results stored
    duplicates: int = 0  # answers of a redelivered copy whose request already had a result
    failed_attempts: int = 0  # attempts that failed (retried or dead)
    dead: int = 0  # requests that went to the dead-letter list from this dispatcher
    reclaimed: int = 0  # expired leases taken back


@dataclass
class _Service:
    settings: QueueSettings
    targets: dict[str, Upstream]
    in_flight: dict[str, int] = field(default_factory=dict)  # replica id → requests being called
    calls: dict[int, Message] = field(default_factory=dict)  # queue index → message being called
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    stats: DispatchStats = field(default_factory=DispatchStats)
    next_reclaim: float = 0.0
    cooling: dict[str, float] = field(default_factory=dict)  # replica id → wall time it may take work again


class Dispatcher:
    def __init__(
        self,
        backend: QueueBackend,
        consumer: str,
        *,
        caller: ReplicaCaller | None = None,
        on_result: Callable[[Result], object] | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Clock = LOOP_CLOCK,
        cooldown_s: float = COOLDOWN_S,
    ) -> None:
        self.backend = backend
        self.consumer = consumer  # unique per dispatcher: leases are taken in its name
        self.caller = caller or HttpCaller()
        self.on_result = on_result  # called on the loop with each result this dispatcher stored
        self.lease_s = lease_s
        self.clock = clock  # wall time for the queue's leases and results; its sleeps for the loops
        self.cooldown_s = cooldown_s  # seconds a replica that failed an attempt gets no new request
        self.services: dict[str, _Service] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False

    # --- what the gateway tells it -----------------------------------------------------------------
    def update(self, services: dict[str, tuple[QueueSettings, list[Upstream]]]) -> None:
        """The async services and their Ready replicas now (after each routing-table swap)."""
        for name, (settings, targets) in services.items():
            svc = self.services.get(name)
            if svc is None:
                svc = self.services[name] = _Service(settings, {t.replica_id: t for t in targets})
            else:
                svc.settings = settings
                svc.targets = {t.replica_id: t for t in targets}
            if svc.task is None and not self._stopping:
                svc.task = asyncio.get_running_loop().create_task(self._serve(name, svc))
            svc.wake.set()
        for name in [n for n in self.services if n not in services]:
            svc = self.services[name]
            svc.targets = {}
            if not svc.calls and svc.task is not None:
                svc.task.cancel()
                del self.services[name]
        if self._keeper is None and not self._stopping:
            self._keeper = asyncio.get_running_loop().create_task(self._keep())

    def wake(self, service: str) -> None:
        """A request was enqueued for ``service`` here: look now, not at the next poll."""
        svc = self.services.get(service)
        if svc is not None:
            svc.wake.set()

    def stats(self, service: str) -> DispatchStats | None:
        svc = self.services.get(service)
        return svc.stats if svc is not None else None

    def in_flight(self, service: str) -> int:
        svc = self.services.get(service)
        return len(svc.calls) if svc is not None else 0

    # --- the loops ---------------------------------------------------------------------------------------
    async def _serve(self, name: str, svc: _Service) -> None:
        backend = self.backend
        while not self._stopping:
            svc.wake.clear()
            now = self.clock.wall()
            try:
                if now >= svc.next_reclaim:
                    svc.next_reclaim = now + RECLAIM_EVERY_S
                    svc.stats.reclaimed += await backend.reclaim(name, svc.settings.max_delivery, now)
                window = svc.settings.window
                free = {
                    rid: window - svc.in_flight.get(rid, 0)
                    for rid in svc.targets
                    if svc.cooling.get(rid, 0.0) <= now
                }
                want = sum(n for n in free.values() if n > 0)
                claimed: list[Message] = []
                if want > 0:
                    claimed = await backend.claim(name, self.consumer, want, self.lease_s, now)
                    for msg, rid in zip(claimed, assign(free, len(claimed)), strict=False):
                        self._start(name, svc, svc.targets[rid], msg)
                if claimed and len(claimed) == want:
                    continue  # every slot was filled: there may be more, and no slot to wait for
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue of service %s: dispatch failed; trying again", name)
            await self.clock.sleep(POLL_S, until=svc.wake)

    def _start(self, name: str, svc: _Service, target: Upstream, msg: Message) -> None:
        svc.in_flight[target.replica_id] = svc.in_flight.get(target.replica_id, 0) + 1
        svc.calls[msg.index] = msg
        svc.stats.dispatched += 1
        task = asyncio.get_running_loop().create_task(self._call(name, svc, target, msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, name: str, svc: _Service, target: Upstream, msg: Message) -> None:
        settings = svc.settings
        status: int | None = None
        error = ""
        answer: Answer | None = None
        try:
            answer = await self.caller.call(
                target, msg, settings.attempt_timeout_s, settings.max_result_bytes
            )
            status = answer.status
        except CallFailed as e:
            error = str(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or an unexpected library error: a failed attempt, logged
            log.exception("queue of service %s: call to %s failed", name, target.replica_id)
            error = f"{type(e).__name__}: {e}"
        finally:
            left = svc.in_flight.get(target.replica_id, 1) - 1
            if left > 0:
                svc.in_flight[target.replica_id] = left
            else:
                svc.in_flight.pop(target.replica_id, None)
        try:
            if answer is not None and attempt_outcome(status) is Outcome.STORE:
                now = self.clock.wall()
                result = Result(
                    service=name,
                    request_id=msg.request_id,
                    index=msg.index,
                    status=answer.status,
                    headers=answer.headers,
                    body=answer.body,
                    attempts=msg.attempts,
                    enqueued_at=msg.enqueued_at,
                    finished_at=now,
                    tags=msg.tags,
                    ttl_s=settings.result_ttl_s,
                )
                if await self.backend.complete(msg, result):
                    svc.stats.completed += 1
                    if self.on_result is not None:
                        self.on_result(result)
                else:
                    svc.stats.duplicates += 1
            else:
                if answer is not None:
                    error = f"replica {target.replica_id} answered {answer.status}: {_snippet(answer.body)}"
                svc.stats.failed_attempts += 1
                now = self.clock.wall()
                svc.cooling[target.replica_id] = now + self.cooldown_s
                state = await self.backend.fail(msg, error, settings.max_delivery, now)
                if state is State.DEAD:
                    svc.stats.dead += 1
                    log.warning(
                        "queue of service %s: request %s is dead after %d attempts: %s",
                        name,
                        msg.request_id,
                        msg.attempts,
                        error,
                    )
        except Exception:
            # The store did not take it: the lease expires and another attempt will be made.
            log.exception("queue of service %s: could not record the attempt on %s", name, msg.request_id)
        finally:
            svc.calls.pop(msg.index, None)
            svc.wake.set()

    async def _keep(self) -> None:
        """Renew the leases of the calls in flight; delete expired results now and then."""
        next_expire = 0.0
        while not self._stopping:
            await self.clock.sleep(RENEW_EVERY_S)
            now = self.clock.wall()
            try:
                calls = [m for svc in self.services.values() for m in svc.calls.values()]
                if calls:
                    await self.backend.renew(self.consumer, calls, self.lease_s, now)
                if now >= next_expire:
                    next_expire = now + EXPIRE_EVERY_S
                    await self.backend.expire(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue: lease renewal failed")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let calls in flight finish for ``grace_s``, then give the rest back."""
        self._stopping = True
        for svc in self.services.values():
            if svc.task is not None:
                svc.task.cancel()
        deadline = self.clock.now() + grace_s
        while self._tasks and self.clock.now() < deadline:
            await self.clock.sleep(STOP_POLL_S)
        left = [m for svc in self.services.values() for m in svc.calls.values()]
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self.backend.release(left)
        if self._keeper is not None:
            self._keeper.cancel()
        await self.caller.close()


def _snippet(body: bytes, limit: int = 300) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text + ("…" if len(body) > limit else "")

"""A standby server's wait for the control-plane lease, and the lease as a server component.

On a PostgreSQL store a server acts only while it holds the lease (openeas.store.lease). Until
it does, it is a standby: its gateway runs (a gateway needs no control plane), and its API port
answers every request with 503 ``{"detail": "standby; active is <url>", "standby": true,
"active": <url>}`` (a tiny responder on a duplicate of the API's listening socket, so the
real API takes the same socket over without a gap). Once it holds the lease the server starts
its components (the reconciler adopts the replicas the old active left running) and then its API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable

from openeas.store.lease import Lease, standby_message

log = logging.getLogger("openeas.server")

# Bounds of the standby responder: a request head larger or slower than this is dropped.
MAX_HEAD = 16384
READ_TIMEOUT_S = 5.0


def standby_response(active_url: str | None) -> bytes:
    """The standby API's whole HTTP response (pure)."""
    body = json.dumps({"detail": standby_message(active_url), "standby": True, "active": active_url}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


async def wait_for_lease(
    lease: Lease, api_sock: socket.socket, stop: asyncio.Event, prepare: Callable[[], None] | None = None
) -> float | None:
    """Answer 503 on ``api_sock`` until this server holds ``lease``; seconds waited (None: stopped).

    ``prepare`` runs once, on the first try that finds the lease held by another server: a hot
    standby builds there everything that does not act on the world (docs/cluster.md), so that
    winning the lease only starts loops and serves the API. When the lease is free at once it
    is not called (the caller prepares after it won, as an active server does)."""
    active: list[str | None] = [None]
    pending = [prepare]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        quiet = (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)
        with contextlib.suppress(*quiet):
            async with asyncio.timeout(READ_TIMEOUT_S):
                await reader.readuntil(b"\r\n\r\n")
            writer.write(standby_response(active[0]))
            await writer.drain()
        writer.close()

    def on_wait(url: str | None) -> None:
        active[0] = url
        if (ready := pending[0]) is not None:
            pending[0] = None
            started = time.monotonic()
            ready()
            log.info("hot standby: components prepared in %.2f s", time.monotonic() - started)

    started = time.monotonic()
    responder = await asyncio.start_server(answer, sock=api_sock.dup(), limit=MAX_HEAD)
    try:
        got = await lease.acquire(stop, on_wait)
    finally:
        responder.close()  # closes the duplicate; the API serves the original socket next
    return time.monotonic() - started if got else None


class LeaseKeeper:
    """The lease as the server's first component: checked while it runs, given back last."""

    name = "control-plane lease"

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.lost = False
        self.task: asyncio.Task[None] | None = None

    async def start(self, stop: asyncio.Event) -> asyncio.Task[None] | None:
        async def keep() -> None:
            try:
                await self.lease.keep(stop)
            except Exception:
                self.lost = True
                raise

        self.task = asyncio.create_task(keep(), name=self.name)
        return self.task

    async def stop(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)
        await asyncio.to_thread(self.lease.release)

"""Owns the clients that wait for results: a long-poll (`LongPoll`: one request id, answered once,
on the client connection it came on) and a watch (`Watch`: the client's connection is handed over
and results are pushed as they are stored, as server-sent events or WebSocket binary frames).

Both listen to `AsyncQueues`: a result this gateway stores is offered at once; every
``REFRESH_S`` they look in the backend again for results another gateway stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from openeas.gateway.wsframe import BINARY, CLOSE, PING, PONG, FrameError, FrameReader, frame
from openeas.queue import wire
from openeas.queue.model import Result

if TYPE_CHECKING:
    from openeas.gateway.queues import AsyncQueues

log = logging.getLogger("openeas.gateway.queue")

SSE = "sse"
WEBSOCKET = "ws"
WATCH_BATCH = 100  # results read from the backend per look
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\n\r\n"
)


class LongPoll:
    """A ``GET .../sink?requestId=…&_timeout_=…`` waiting for its result."""

    def __init__(
        self,
        queues: AsyncQueues,
        service: str,
        request_id: str,
        deliver: Callable[[Result | None], None],
        timeout_s: float,
    ) -> None:
        self.queues = queues
        self.service = service
        self.request_id = request_id
        self.deliver = deliver  # called once: with the result, or None when the timeout passed
        self.done = False
        self._looking = False
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(timeout_s, self._finish, None)
        queues.listen(service, self)

    def offer(self, result: Result) -> None:
        if result.request_id == self.request_id:
            self._finish(result)

    def poll(self) -> None:
        if not self.done and not self._looking:
            self._looking = True
            asyncio.get_running_loop().create_task(self._look())

    async def _look(self) -> None:
        try:
            _, result = await self.queues.backend.lookup(self.service, self.request_id)
        except Exception:
            result = None
        finally:
            self._looking = False
        if result is not None:
            self._finish(result)

    def _finish(self, result: Result | None) -> None:
        if self.done:
            return
        self.done = True
        self.timer.cancel()
        self.queues.unlisten(self.service, self)
        self.deliver(result)


class Watch(asyncio.Protocol):
    """A connection handed over to push results: SSE or WebSocket frames, until the client goes.

    ``after``: results with a sink index above it are sent (0: every stored, unread result, then
    each new one); ``request_id``: only that request's result, then the watch ends;
    ``auto_commit``: a result sent is deleted from the sink (EAS ``_auto_commit_``)."""

    def __init__(
        self,
        queues: AsyncQueues,
        service: str,
        transport: asyncio.Transport,
        *,
        mode: str,
        after: int = 0,
        request_id: str | None = None,
        auto_commit: bool = False,
    ) -> None:
        self.queues = queues
        self.service = service
        self.transport = transport
        self.mode = mode
        self.after = after
        self.request_id = request_id
        self.auto_commit = auto_commit
        self.closed = False
        self.reader = FrameReader()
        self._looking = False
        self._again = False
        transport.set_protocol(self)
        queues.listen(service, self)
        self.poll()

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.mode != WEBSOCKET:
            return  # an SSE client has nothing to say
        try:
            for opcode, payload in self.reader.feed(data):
                if opcode == PING:
                    self.transport.write(frame(PONG, payload[:125]))
                elif opcode == CLOSE:
                    self.transport.write(frame(CLOSE, payload[:2]))
                    self.close()
                    return
        except FrameError as e:
            log.info("watch of %s: %s; closing", self.service, e)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.queues.unlisten(self.service, self)

    # --- ResultListener -------------------------------------------------------------------------------
    def offer(self, result: Result) -> None:
        self.poll()  # read back in sink order: what another gateway stored meanwhile comes first

    def poll(self) -> None:
        if self.closed:
            return
        if self._looking:
            self._again = True
            return
        self._looking = True
        asyncio.get_running_loop().create_task(self._look())

    async def _look(self) -> None:
        try:
            while not self.closed:
                self._again = False
                results = await self.queues.backend.results_after(self.service, self.after, WATCH_BATCH)
                for r in results:
                    self.after = max(self.after, r.sink_index)
                    if self.request_id is not None and r.request_id != self.request_id:
                        continue
                    self._send(r)
                    if self.request_id is not None:
                        self.close()
                        return
                if len(results) < WATCH_BATCH and not self._again:
                    return
        except Exception as e:
            log.warning("watch of %s: %s", self.service, e)
        finally:
            self._looking = False

    def _send(self, r: Result) -> None:
        if self.closed:
            return
        if self.mode == WEBSOCKET:
            self.transport.write(frame(BINARY, wire.result_frame(r)))
        else:
            self.transport.write(wire.sse_event(r))
        self.queues.counters_of(self.service).results_served += 1
        if self.auto_commit:
            asyncio.get_running_loop().create_task(self._commit(r))

    async def _commit(self, r: Result) -> None:
        with contextlib.suppress(Exception):
            await self.queues.backend.mark_read(self.service, [r.request_id])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queues.unlisten(self.service, self)
            self.transport.close()

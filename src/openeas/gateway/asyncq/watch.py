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

from openeas.gateway.asyncq.wsframe import BINARY, CLOSE, PING, PONG, FrameError, FrameReader, frame
from openeas.queue import wire
from openeas.queue.model import Message, Result, State

if TYPE_CHECKING:
    from openeas.gateway.asyncq.queues import AsyncQueues

log = logging.getLogger("openeas.gateway.queue")

SSE = "sse"
WEBSOCKET = "ws"
WATCH_BATCH = 100  # results read from the backend per look
WATCH_MAX_S = 3600.0  # a watch ends after this long (the EAS SDK's watcher reconnects by itself)
WATCH_IDLE_S = 60.0  # a WebSocket watch whose client sent nothing (not even a ping) this long ends
SSE_KEEPALIVE_S = 15.0  # an idle SSE watch sends a comment line this often
WATCH_MAX_BUFFER_BYTES = 8 * 1024 * 1024  # a client this far behind in reading is cut off
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
    """A connection handed over to push entries: SSE or WebSocket frames, until the client goes.

    ``sink``: results (index = sink index), else the input queue's requests (index = queue
    index); ``start``: the first index sent (0 or 1: from the oldest unread); ``request_id``:
    only that request's result, then the watch ends; ``auto_commit``: an entry sent is deleted
    (EAS ``_auto_commit_``); else at most ``window`` entries are sent and not yet committed
    (deleted, truncated or read) at a time (EAS ``_window_``; 0: no bound); ``index_only``:
    frames without data (EAS ``_index_only_``).

    Bounded (the gateway's connection cap counts it while ``on_close`` is pending): it ends after
    WATCH_MAX_S, a WebSocket client silent (no ping, the EAS SDK pings every 2 s) for
    WATCH_IDLE_S, or a client that reads less than WATCH_MAX_BUFFER_BYTES behind."""

    is_watch = True

    def __init__(
        self,
        queues: AsyncQueues,
        service: str,
        transport: asyncio.Transport,
        *,
        mode: str,
        sink: bool = True,
        start: int = 0,
        request_id: str | None = None,
        auto_commit: bool = False,
        window: int = 0,
        index_only: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.queues = queues
        self.service = service
        self.transport = transport
        self.mode = mode
        self.sink = sink
        self.after = max(start - 1, 0)  # the highest index seen
        self.request_id = request_id
        self.auto_commit = auto_commit
        self.window = max(window, 0)
        self.index_only = index_only
        self.on_close = on_close
        self.outstanding: set[int] = set()  # indexes sent, not committed yet (window accounting)
        self.closed = False
        self.reader = FrameReader()
        self._looking = False
        self._again = False
        loop = asyncio.get_running_loop()
        self.heard = self.wrote = loop.time()
        self.ends = loop.time() + WATCH_MAX_S
        transport.set_protocol(self)
        queues.listen(service, self)
        self.poll()

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.heard = asyncio.get_running_loop().time()
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
        self._closed()

    # --- ResultListener -------------------------------------------------------------------------------
    def offer(self, result: Result) -> None:
        self.poll()  # read back in sink order: what another gateway stored meanwhile comes first

    def poll(self) -> None:
        if self.closed:
            return
        if self._expired():
            self.close()
            return
        if self._looking:
            self._again = True
            return
        self._looking = True
        asyncio.get_running_loop().create_task(self._look())

    def _expired(self) -> bool:
        now = asyncio.get_running_loop().time()
        if now >= self.ends or self.transport.get_write_buffer_size() > WATCH_MAX_BUFFER_BYTES:
            return True
        if self.mode == WEBSOCKET:
            return now - self.heard > WATCH_IDLE_S
        if now - self.wrote > SSE_KEEPALIVE_S:  # a comment line: a client gone is noticed
            self.transport.write(b": keepalive\n\n")
            self.wrote = now
        return False

    async def _room(self) -> int:
        """How many entries may be sent now (the window less those sent and not committed)."""
        if self.auto_commit or self.window == 0:
            return WATCH_BATCH
        backend = self.queues.backend
        for index in sorted(self.outstanding):
            if self.sink:
                state, _ = await backend.lookup_sink(self.service, index)
                gone = state is not State.DONE
            else:
                state, _ = await backend.lookup_index(self.service, index)
                gone = state not in (State.QUEUED, State.IN_FLIGHT)
            if gone:
                self.outstanding.discard(index)
        return min(WATCH_BATCH, self.window - len(self.outstanding))

    async def _look(self) -> None:
        try:
            while not self.closed:
                self._again = False
                room = await self._room()
                if room <= 0:
                    return  # looked at again at the next poll: a commit or truncate frees the window
                backend = self.queues.backend
                if self.sink:
                    entries: list[Result | Message] = list(
                        await backend.results_after(self.service, self.after, room)
                    )
                else:
                    entries = list(await backend.messages_from(self.service, self.after + 1, room))
                for e in entries:
                    index = e.sink_index if isinstance(e, Result) else e.index
                    self.after = max(self.after, index)
                    if self.request_id is not None and e.request_id != self.request_id:
                        continue
                    self._send(e, index)
                    if self.request_id is not None:
                        self.close()
                        return
                if len(entries) < room and not self._again:
                    return
        except Exception as e:
            log.warning("watch of %s: %s", self.service, e)
        finally:
            self._looking = False

    def _send(self, e: Result | Message, index: int) -> None:
        if self.closed:
            return
        if isinstance(e, Result):
            data = wire.result_frame(e, index_only=self.index_only) if self.mode == WEBSOCKET else b""
            sse = b"" if self.mode == WEBSOCKET else wire.sse_event(e, index_only=self.index_only)
        else:
            data = wire.message_frame(e, index_only=self.index_only) if self.mode == WEBSOCKET else b""
            sse = b"" if self.mode == WEBSOCKET else wire.sse_message(e, index_only=self.index_only)
        self.transport.write(frame(BINARY, data) if self.mode == WEBSOCKET else sse)
        self.wrote = asyncio.get_running_loop().time()
        if isinstance(e, Result):
            self.queues.counters_of(self.service).results_served += 1
        if self.auto_commit:
            asyncio.get_running_loop().create_task(self._commit(e))
        else:
            self.outstanding.add(index)

    async def _commit(self, e: Result | Message) -> None:
        with contextlib.suppress(Exception):
            if isinstance(e, Result):
                await self.queues.backend.mark_read(self.service, [e.request_id])
            else:
                await self.queues.backend.delete_messages(self.service, [e.index])

    def _closed(self) -> None:
        if not self.closed:
            self.closed = True
            self.queues.unlisten(self.service, self)
            if self.on_close is not None:
                self.on_close()

    def close(self) -> None:
        if not self.closed:
            self._closed()
            self.transport.close()

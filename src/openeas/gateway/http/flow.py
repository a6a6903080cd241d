"""Owns flow control between one client connection and the upstream connection serving it: who
stopped reading which socket, and when reading may start again.

Three reasons stop reading, each a flag here:

- ``upstream_full``: the replica's socket buffer is full (its transport called ``pause_writing``),
  so the client's request body would pile up in memory: stop reading the client.
- ``early``: the client sent its next request before this one was answered. Its bytes are kept
  here, reading the client stops, and the proxy feeds them back once the answer is complete.
- ``client_full``: the client's socket buffer is full, so the replica's answer would pile up:
  stop reading the replica. A connection that starts serving this client inherits that pause;
  one going back to the idle pool leaves it.

The client is read again only when neither of the first two holds. Nothing here parses or
routes; the proxy calls in on each event and this object pauses and resumes the transports. On
the per-request path (a connection attached or released, an answer complete) the proxy reads the
flag first and calls only when it is set: nothing is paused nearly always, and a Python call per
request and flag costs more than the read.
"""

from __future__ import annotations

import asyncio


class FlowControl:
    __slots__ = ("client", "client_full", "early", "upstream_full")

    def __init__(self) -> None:
        self.client: asyncio.Transport = None  # type: ignore[assignment]  # set by connection_made
        self.upstream_full = False
        self.early: list[bytes] | None = None  # the client's next request, read too soon
        self.client_full = False

    # --- reading the client -------------------------------------------------------------------
    def upstream_paused(self) -> None:
        """The replica cannot take more request bytes for now."""
        if not self.upstream_full:
            self.upstream_full = True
            self.client.pause_reading()

    def upstream_resumed(self) -> None:
        """The replica can take bytes again, or the connection to it is gone."""
        if self.upstream_full:
            self.upstream_full = False
            if self.early is None:
                self.client.resume_reading()

    def keep_early(self, data: bytes) -> None:
        """Bytes of the client's next request that arrived before this request was answered."""
        if self.early is None:
            self.early = [data]
            self.client.pause_reading()
        else:
            self.early.append(data)

    def take_early(self) -> list[bytes] | None:
        """The kept bytes, handed back once; reading stays paused until `resume_client`."""
        early, self.early = self.early, None
        return early

    def resume_client(self) -> None:
        """Read the client again after its early bytes were handed back (unless the replica is full)."""
        if not self.upstream_full and self.early is None:
            self.client.resume_reading()

    # --- reading the replica ------------------------------------------------------------------
    def client_paused(self, upstream: asyncio.Transport | None) -> None:
        self.client_full = True
        if upstream is not None:
            upstream.pause_reading()

    def client_resumed(self, upstream: asyncio.Transport | None) -> None:
        self.client_full = False
        if upstream is not None:
            upstream.resume_reading()

    def attach(self, upstream: asyncio.Transport) -> None:
        """``upstream`` starts serving this client: it must not outrun a full client buffer."""
        if self.client_full:
            upstream.pause_reading()

    def detach(self, upstream: asyncio.Transport) -> None:
        """``upstream`` goes back to the idle pool: it must not stay paused for the next client."""
        if self.client_full:
            upstream.resume_reading()

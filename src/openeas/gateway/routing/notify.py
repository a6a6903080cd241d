"""Routing-change notifications: the control plane tells the gateway "re-read the store now",
and the gateway answers which routing version it has applied.

The store's ``routing_version`` is the truth; a notification is a hint to read it at once rather
than at the next safety-net poll. After each commit that bumped the version, the control plane
sends one datagram carrying that version to a Unix socket in the data dir
(``DATA/run/gateway.sock``) that the gateway binds. The gateway re-reads the whole table (the
version makes re-reads idempotent) and, once it has applied that version or a later one, answers
the sender (:mod:`openeas.gateway.routing.ack`). The sender never blocks on a send and ignores every send
error (no gateway listening, a full queue), so a commit never waits on the data plane; an API
call that promises the change is in effect waits for the answer (`RoutingNotifier.wait_applied`,
bounded), sending the notification again while it waits.

Standard library only (the gateway process imports it; so does the control plane).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from openeas.gateway.routing.ack import (
    RESEND_S,
    ROUTING_ACK_TIMEOUT_S,
    AckOutcome,
    PendingAcks,
    encode_ack,
    encode_notify,
    parse_ack,
    parse_notify,
)
from openeas.unixdgram import DGRAM, BoundSocket, UnixAddress

SOCKET_NAME = "gateway.sock"


def socket_path(data_dir: Path) -> Path:
    """Where the gateway of the server on ``data_dir`` listens for notifications."""
    return Path(data_dir) / "run" / SOCKET_NAME


class RoutingNotifier:
    """The sending side, in the control plane: ``notifier(version)`` after a commit, and
    ``wait_applied(version)`` where a call promises the change is in effect when it returns.

    Register it with ``Store.add_routing_listener``. Safe to call from any thread. Its socket is
    autobound (an abstract address of its own) so the gateway can answer it; a thread reads the
    answers while anyone waits. ``gateway_name()`` names the gateway in a timed-out answer.
    """

    def __init__(self, path: Path, gateway_name: Callable[[], str] | None = None) -> None:
        self.path = Path(path)
        self.gateway_name = gateway_name or (lambda: f"the gateway on {self.path}")
        self._addr = UnixAddress(self.path)
        self._sock = socket.socket(socket.AF_UNIX, DGRAM)
        self._sock.bind("")  # Linux autobind: an abstract address the gateway answers to
        self._cond = threading.Condition()
        self._applied = -1  # the highest version a gateway acknowledged
        self._acker = 0  # the pid of the gateway that acknowledged it
        self._reader: threading.Thread | None = None
        self._closed = False

    def __call__(self, version: int) -> None:
        try:
            self._sock.sendto(encode_notify(version), self._addr.addr)
        except OSError:
            # No gateway bound (down, restarting: it loads the full table when it starts) or its
            # queue is full (it has a re-read pending anyway). The poll is the safety net.
            pass

    @property
    def applied(self) -> int:
        """The highest routing version a gateway has acknowledged (-1: none yet)."""
        with self._cond:
            return self._applied

    def wait_applied(self, version: int, timeout_s: float = ROUTING_ACK_TIMEOUT_S) -> AckOutcome:
        """Block until the gateway has applied ``version`` (or a later one), at most ``timeout_s``;
        the notification is sent again every ``RESEND_S`` meanwhile."""
        self._start_reader()
        start = time.monotonic()
        deadline = start + timeout_s
        with self._cond:
            while self._applied < version and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not self._cond.wait(min(left, RESEND_S)) and self._applied < version:
                    self(version)
            acked, pid = self._applied >= version, self._acker
        name = f"the gateway (pid {pid}, {self.path})" if acked else self.gateway_name()
        return AckOutcome(version, acked, time.monotonic() - start, name, timeout_s)

    def _start_reader(self) -> None:
        with self._cond:
            if self._reader is None and not self._closed:
                self._reader = threading.Thread(target=self._read, name="openeas-routing-acks", daemon=True)
                self._reader.start()

    def _read(self) -> None:
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        while not self._closed:
            if not poller.poll(200):
                continue
            while True:
                try:
                    data = self._sock.recv(64)
                except OSError:  # BlockingIOError: drained; EBADF: closed
                    break
                ack = parse_ack(data)
                if ack is None:
                    continue
                with self._cond:
                    if ack[0] > self._applied:
                        self._applied, self._acker = ack
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            reader = self._reader
        if reader is not None:
            reader.join(1.0)
        self._sock.close()
        self._addr.close()


class NotifyListener:
    """The receiving side, in the gateway: binds the socket, calls ``on_notify()`` on the event loop.

    One call per wake-up however many datagrams arrived: the caller re-reads the store once for
    a burst of changes, then calls `applied` with the version it has, which answers the senders
    waiting for it.
    """

    def __init__(self, path: Path, on_notify: Callable[[], object]) -> None:
        self.path = Path(path)
        self.on_notify = on_notify
        self.pending = PendingAcks()
        self._bound: BoundSocket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind (replacing a socket file a killed gateway left behind) and watch for datagrams."""
        self._bound = BoundSocket(self.path)
        self._loop = loop
        loop.add_reader(self._bound.sock.fileno(), self._readable)

    def _readable(self) -> None:
        if self._bound is None:
            return
        sock = self._bound.sock
        while True:  # drain: a burst of changes is one re-read
            try:
                data, addr = sock.recvfrom(64)
            except OSError:  # BlockingIOError: drained
                break
            version = parse_notify(data)
            if version is not None:
                self.pending.want(addr, version)
        self.on_notify()

    def applied(self, version: int) -> None:
        """The gateway has applied routing ``version``: answer whoever waits for it or less."""
        if self._bound is None:
            return
        reply = encode_ack(version, os.getpid())
        for addr, _ in self.pending.due(version):
            with contextlib.suppress(OSError):  # the sender is gone: nothing to answer
                self._bound.sock.sendto(reply, addr)

    def close(self) -> None:
        if self._bound is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._bound.sock.fileno())
        # Removes the socket file only if it is still ours: a gateway started after this one
        # (a restarted server) may have bound the path already.
        self._bound.close()
        self._bound = None

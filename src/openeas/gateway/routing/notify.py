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
from collections.abc import Callable, Sequence
from pathlib import Path

from openeas.gateway.routing.ack import (
    RESEND_S,
    ROUTING_ACK_TIMEOUT_S,
    AckOutcome,
    Address,
    PendingAcks,
    encode_ack,
    encode_notify,
    parse_ack,
    parse_notify,
)
from openeas.unixdgram import DGRAM, BoundSocket, UnixAddress, worker_path

SOCKET_NAME = "gateway.sock"


def socket_path(data_dir: Path, worker: int = 0) -> Path:
    """Where the gateway (worker ``worker`` of ``--workers N``) of the server on ``data_dir``
    listens for notifications."""
    return worker_path(Path(data_dir) / "run" / SOCKET_NAME, worker)


def socket_paths(data_dir: Path, workers: int) -> list[Path]:
    """Every worker's notification socket, for a gateway of ``workers`` processes."""
    return [socket_path(data_dir, k) for k in range(workers)]


def sender_key(addr: Address) -> Address:
    """Which gateway socket an acknowledgement came from, the same across a worker's restart: its
    file name (``gateway.sock``, ``gateway.1.sock``, ...; one data dir's names are unique). The
    whole address is not: a long path is bound as ``/proc/self/fd/<dir fd>/<name>``, and a
    restarted worker's directory fd may have another number, which left its old entry counted as
    one more worker (`UnixAddress`)."""
    if isinstance(addr, str) and addr:
        return os.path.basename(addr)
    return addr


class RoutingNotifier:
    """The sending side, in the control plane: ``notifier(version)`` after a commit, and
    ``wait_applied(version)`` where a call promises the change is in effect when it returns.

    Register it with ``Store.add_routing_listener``. Safe to call from any thread. Its socket is
    autobound (an abstract address of its own) so the gateway can answer it; a thread reads the
    answers while anyone waits. ``gateway_name()`` names the gateway in a timed-out answer.

    ``path`` may be a list: a gateway of several worker processes (``--workers N``), one socket
    each (`socket_paths`). Every one is notified, and a change is in effect once as many
    sockets have acknowledged it as there are paths.
    """

    def __init__(self, path: Path | Sequence[Path], gateway_name: Callable[[], str] | None = None) -> None:
        self.paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        if not self.paths:
            raise ValueError("RoutingNotifier: needs at least one socket path")
        self.path = self.paths[0]
        self.gateway_name = gateway_name or (lambda: f"the gateway on {self.path}")
        self._addrs = [UnixAddress(p) for p in self.paths]
        self._sock = socket.socket(socket.AF_UNIX, DGRAM)
        self._sock.bind("")  # Linux autobind: an abstract address the gateway answers to
        self._cond = threading.Condition()
        # A gateway socket (`sender_key`) → the highest version it acknowledged, by which pid.
        self._acks: dict[Address, tuple[int, int]] = {}
        self._reader: threading.Thread | None = None
        self._closed = False

    def __call__(self, version: int) -> None:
        for addr in self._addrs:
            try:
                self._sock.sendto(encode_notify(version), addr.addr)
            except OSError:
                # No gateway bound (down, restarting: it loads the full table when it starts) or
                # its queue is full (it has a re-read pending anyway). The poll is the safety net.
                pass

    def _in_effect(self) -> tuple[int, int]:
        """(the version every gateway process has applied, the pid of one that has it); caller
        holds the lock. -1: fewer processes than sockets have acknowledged anything."""
        ranked = sorted(self._acks.values(), reverse=True)
        if len(ranked) < len(self.paths):
            return -1, 0
        return ranked[len(self.paths) - 1]

    @property
    def applied(self) -> int:
        """The highest routing version every gateway process has acknowledged (-1: none yet)."""
        with self._cond:
            return self._in_effect()[0]

    def pids_at(self, version: int) -> set[int]:
        """The pids of the gateway processes that acknowledged ``version`` or a later one."""
        with self._cond:
            return {pid for v, pid in self._acks.values() if v >= version}

    def wait_applied(self, version: int, timeout_s: float = ROUTING_ACK_TIMEOUT_S) -> AckOutcome:
        """Block until the gateway has applied ``version`` (or a later one), at most ``timeout_s``;
        the notification is sent again every ``RESEND_S`` meanwhile."""
        self._start_reader()
        start = time.monotonic()
        deadline = start + timeout_s
        with self._cond:
            while self._in_effect()[0] < version and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not self._cond.wait(min(left, RESEND_S)) and self._in_effect()[0] < version:
                    self(version)
            applied, pid = self._in_effect()
            acked = applied >= version
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
                    data, addr = self._sock.recvfrom(64)
                except OSError:  # BlockingIOError: drained; EBADF: closed
                    break
                ack = parse_ack(data)
                if ack is None:
                    continue
                version, pid = ack
                key = sender_key(addr)
                with self._cond:
                    if version > self._acks.get(key, (-1, 0))[0]:
                        self._acks[key] = (version, pid)
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            reader = self._reader
        if reader is not None:
            reader.join(1.0)
        self._sock.close()
        for addr in self._addrs:
            addr.close()


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

"""Routing-change notifications: the control plane tells the gateway "re-read the store now".

The store's ``routing_version`` is the truth; a notification is only a hint to read it at once
rather than at the next safety-net poll. After each commit that bumped the version, the control
plane sends one datagram to a Unix socket in the data dir (``DATA/run/gateway.sock``) that the
gateway binds. A lost, duplicated or reordered datagram costs at most one poll interval, never a
change: the gateway re-reads the whole table, and the version makes re-reads idempotent. The
sender never blocks and ignores every error (no gateway listening, a full queue), so a commit
never waits on the data plane.

Standard library only (the gateway process imports it; so does the control plane).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from openeas.unixdgram import DGRAM, BoundSocket, UnixAddress

SOCKET_NAME = "gateway.sock"


def socket_path(data_dir: Path) -> Path:
    """Where the gateway of the server on ``data_dir`` listens for notifications."""
    return Path(data_dir) / "run" / SOCKET_NAME


class RoutingNotifier:
    """The sending side, in the control plane: ``notifier(version)`` after a commit.

    Register it with ``Store.add_routing_listener``. Safe to call from any thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._addr = UnixAddress(self.path)
        self._sock = socket.socket(socket.AF_UNIX, DGRAM)

    def __call__(self, version: int) -> None:
        try:
            self._sock.sendto(b"%d" % version, self._addr.addr)
        except OSError:
            # No gateway bound (down, restarting: it loads the full table when it starts) or its
            # queue is full (it has a re-read pending anyway). The poll is the safety net.
            pass

    def close(self) -> None:
        self._sock.close()
        self._addr.close()


class NotifyListener:
    """The receiving side, in the gateway: binds the socket, calls ``on_notify()`` on the event loop.

    One call per wake-up however many datagrams arrived: the caller re-reads the store once for
    a burst of changes.
    """

    def __init__(self, path: Path, on_notify: Callable[[], object]) -> None:
        self.path = Path(path)
        self.on_notify = on_notify
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
                sock.recv(64)
            except OSError:  # BlockingIOError: drained
                break
        self.on_notify()

    def close(self) -> None:
        if self._bound is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._bound.sock.fileno())
        # Removes the socket file only if it is still ours: a gateway started after this one
        # (a restarted server) may have bound the path already.
        self._bound.close()
        self._bound = None

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
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

SOCKET_NAME = "gateway.sock"
# sun_path is 108 bytes on Linux, NUL included; longer paths are reached through a directory fd.
_MAX_SUN_PATH = 107
# Neither side ever blocks on the socket; neither leaks it into child processes.
_DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def socket_path(data_dir: Path) -> Path:
    """Where the gateway of the server on ``data_dir`` listens for notifications."""
    return Path(data_dir) / "run" / SOCKET_NAME


class UnixAddress:
    """A Unix socket address for ``path``, short enough for sun_path whatever the data dir.

    A long path is reached as ``/proc/self/fd/<dir fd>/<name>`` (the kernel resolves it like the
    directory itself), so deep data dirs (test temp dirs, home directories) still get pushes.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._dir_fd: int | None = None
        if len(os.fsencode(path)) <= _MAX_SUN_PATH:
            self.addr = str(path)
        else:
            self._dir_fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.addr = f"/proc/self/fd/{self._dir_fd}/{path.name}"

    def close(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None


class RoutingNotifier:
    """The sending side, in the control plane: ``notifier(version)`` after a commit.

    Register it with ``Store.add_routing_listener``. Safe to call from any thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._addr = UnixAddress(self.path)
        self._sock = socket.socket(socket.AF_UNIX, _DGRAM)

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
        self._sock: socket.socket | None = None
        self._addr: UnixAddress | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inode: tuple[int, int] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind (replacing a socket file a killed gateway left behind) and watch for datagrams."""
        self._addr = UnixAddress(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._addr.addr)
        sock = socket.socket(socket.AF_UNIX, _DGRAM)
        try:
            sock.bind(self._addr.addr)
            os.chmod(self._addr.addr, 0o600)
            st = os.stat(self._addr.addr)
        except OSError:
            sock.close()
            raise
        self._inode = (st.st_dev, st.st_ino)
        self._sock = sock
        self._loop = loop
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:  # drain: a burst of changes is one re-read
            try:
                sock.recv(64)
            except OSError:  # BlockingIOError: drained
                break
        self.on_notify()

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None
        assert self._addr is not None
        # Remove the socket file only if it is still ours: a gateway started after this one
        # (a restarted server) may have bound the path already.
        with contextlib.suppress(OSError):
            st = os.stat(self._addr.addr)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self._addr.addr)
        self._addr.close()

"""Unix datagram sockets between OpenEAS processes on one machine: the address of a socket file
whatever its path length, and binding and unbinding one.

Two channels use them: routing-change notifications (control plane → gateway,
:mod:`openeas.gateway.routing.notify`) and the gateway's per-service counters (gateway → control plane,
:mod:`openeas.telemetry.gateway_stats`). Neither side ever blocks on the socket, and neither leaks
it into child processes. Standard library only: the gateway process imports it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

# sun_path is 108 bytes on Linux, NUL included; longer paths are reached through a directory fd.
_MAX_SUN_PATH = 107
DGRAM = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC


def worker_path(path: Path, index: int) -> Path:
    """The socket of gateway worker ``index`` (``--workers N``): worker 0 keeps ``path``, worker k
    binds ``<stem>.<k><suffix>`` beside it (``gateway.sock``, ``gateway.1.sock``, ...)."""
    if index == 0:
        return Path(path)
    return Path(path).with_name(f"{Path(path).stem}.{index}{Path(path).suffix}")


class UnixAddress:
    """A Unix socket address for ``path``, short enough for sun_path whatever the data dir.

    A long path is reached as ``/proc/self/fd/<dir fd>/<name>`` (the kernel resolves it like the
    directory itself), so deep data dirs (test temp dirs, home directories) work too.
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


class BoundSocket:
    """A datagram socket bound at ``path`` (mode 0600), replacing a socket file a killed process
    left behind; `close` removes the file only if it is still this socket's (a successor may have
    bound the path since)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._addr = UnixAddress(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._addr.addr)
        sock = socket.socket(socket.AF_UNIX, DGRAM)
        try:
            sock.bind(self._addr.addr)
            os.chmod(self._addr.addr, 0o600)
            st = os.stat(self._addr.addr)
        except OSError:
            sock.close()
            self._addr.close()
            raise
        self._inode = (st.st_dev, st.st_ino)
        self.sock = sock

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            st = os.stat(self._addr.addr)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self._addr.addr)
        self._addr.close()

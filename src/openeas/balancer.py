"""A small TCP balancer in front of several gateways (the local cluster's, ``openeas cluster up``).

Round robin over the backends; a backend that refuses the connection is skipped for this
connection and the next one is tried, so a dead gateway costs new connections nothing but a
refused connect. Bytes are copied both ways until either side closes. Listens on 127.0.0.1 by
default: the local cluster's traffic stays on the loopback.

    python -m openeas.balancer --port 9000 --backend 127.0.0.1:8081 --backend 127.0.0.1:8082
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
from collections.abc import Sequence

CONNECT_TIMEOUT_S = 2.0  # per backend tried; a dead one refuses at once on the loopback
COPY_CHUNK = 65536  # bytes read at a time from either side


def parse_backend(text: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); a ValueError names what was wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--backend: {text!r} is not HOST:PORT with a port 1-65535")
    return host, int(port)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


class Balancer:
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        if not backends:
            raise ValueError("--backend: at least one backend is needed")
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        start = next(self._next)
        for i in range(len(self.backends)):
            host, port = self.backends[(start + i) % len(self.backends)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError):
                continue  # dead or slow: the next one
        return None

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            client_w.close()
            return
        up_r, up_w = upstream
        await asyncio.gather(_copy(client_r, up_w), _copy(up_r, client_w))


async def serve(host: str, port: int, backends: Sequence[tuple[str, int]]) -> None:
    balancer = Balancer(backends)
    server = await asyncio.start_server(balancer.handle, host, port)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m openeas.balancer", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--backend", action="append", default=[], help="HOST:PORT of a gateway (repeatable)")
    args = p.parse_args(argv)
    try:
        backends = [parse_backend(b) for b in args.backend]
    except ValueError as exc:
        p.error(str(exc))
    if not backends:
        p.error("--backend: at least one backend is needed")
    asyncio.run(serve(args.host, args.port, backends))


if __name__ == "__main__":
    main()

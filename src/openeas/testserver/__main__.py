"""``python -m openeas.testserver [--host H] [--port P] [knobs]``: see ``--help``."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Sequence

from openeas.testserver.app import serve
from openeas.testserver.knobs import ServerArgs, parse_args


async def _main(args: ServerArgs) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # The handler only records the signal; serve() shuts down in order.
        loop.add_signal_handler(sig, stop.set)

    def announce(line: str) -> None:
        print(line, flush=True)

    return await serve(args.knobs, args.host, args.port, stop=stop, announce=announce)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but the server works without it
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as e:
        print(f"openeas.testserver: {e}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_main(args))
    except OSError as e:  # e.g. the port is taken
        print(f"openeas.testserver: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

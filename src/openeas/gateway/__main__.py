"""``python -m openeas.gateway --port P (--routing-file F | --data-dir D) [--parent-pid PID]``"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from openeas.gateway.server import serve
from openeas.gateway.table import FileRoutingSource, RoutingSource
from openeas.runtime.process import pid_alive


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m openeas.gateway", description="OpenEAS gateway (data plane)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--routing-file", type=Path, help="JSON routing table (reloaded when it changes)")
    src.add_argument("--data-dir", type=Path, help="OpenEAS data directory (routing from the store)")
    p.add_argument("--poll-interval", type=float, default=0.2, help="seconds between routing polls")
    p.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    p.add_argument("--grace", type=float, default=10.0, help="seconds to finish requests on SIGTERM")
    return p.parse_args(argv)


def _source(args: argparse.Namespace) -> RoutingSource:
    if args.routing_file is not None:
        return FileRoutingSource(args.routing_file)
    from openeas.store.routing import StoreRoutingSource  # written by the control plane

    return StoreRoutingSource(args.data_dir)  # type: ignore[no-any-return,unused-ignore]


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != pid and pid_alive(pid) is False:
            stop.set()
            return
        await asyncio.sleep(1.0)


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # handlers only record the signal
    watcher = loop.create_task(_watch_parent(args.parent_pid, stop)) if args.parent_pid else None

    def ready(port: int) -> None:
        # Long-lived objects (modules, routes, pools) leave the GC's view; young-generation
        # collections get rarer. The hot path allocates few container objects, and GC pauses
        # are what the latency tail is made of.
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 50)
        print(f"openeas gateway listening on http://{args.host}:{port}", flush=True)

    await serve(
        _source(args),
        args.host,
        args.port,
        ready_cb=ready,
        poll_interval_s=args.poll_interval,
        stop=stop,
        grace_s=args.grace,
    )
    if watcher is not None:
        watcher.cancel()


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))
    sys.exit(0)


if __name__ == "__main__":
    main()

"""``python -m openeas.gateway --port P (--routing-file F | --data-dir D) [--parent-pid PID]``

`openeas server` starts it with ``--data-dir``, ``--reuse-port`` and ``--ready-file``, in a
session of its own and without ``--parent-pid``: the data plane outlives the control plane (it
keeps serving the routing table in the store) and the next server adopts or replaces it.

The gateway process imports neither SQLAlchemy nor pydantic (tests/test_routing_push.py checks):
it reads the store with plain sqlite3 (:mod:`openeas.gateway.routing.source`), or with psycopg for
``--store postgresql://…`` (:mod:`openeas.gateway.routing.pg_source`), and /proc with
:mod:`openeas.procfs`, so it starts fast and stays small.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
from pathlib import Path

from openeas.gateway.context import ClientLimits
from openeas.gateway.routing.notify import socket_path
from openeas.gateway.routing.registry import Registration, new_gateway_id
from openeas.gateway.routing.source import routing_source
from openeas.gateway.routing.table import FileRoutingSource, RoutingSource
from openeas.gateway.server import DEFAULT_POLL_INTERVAL_S, WorkerPlace, serve
from openeas.gateway.workers import MAX_WORKERS_PER_CORE, check_workers, supervise
from openeas.procfs import CONTROL_PLANE_OOM_SCORE_ADJ, pid_alive, set_oom_score_adj
from openeas.telemetry import gateway_stats

# A routing file cannot notify: it is polled (cheaply, one stat) more often than the store.
FILE_POLL_INTERVAL_S = 0.2


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m openeas.gateway", description="OpenEAS gateway (data plane)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--routing-file", type=Path, help="JSON routing table (reloaded when it changes)")
    src.add_argument("--data-dir", type=Path, help="OpenEAS data directory (routing from the store)")
    p.add_argument(
        "--store",
        help="the store's URL when it is not SQLite in --data-dir: postgresql://USER@HOST:PORT/DB "
        "(changes are pushed by LISTEN/NOTIFY; --data-dir still holds secret.key)",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        help=f"seconds between routing polls (the safety net under change notifications with --data-dir); "
        f"default {DEFAULT_POLL_INTERVAL_S} with --data-dir, {FILE_POLL_INTERVAL_S} with --routing-file",
    )
    p.add_argument(
        "--advertise-url",
        help="the URL this gateway registers in the store (`openeas gateways`); default "
        "http://HOST:PORT (the machine's name for a wildcard --host)",
    )
    p.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    p.add_argument("--grace", type=float, default=10.0, help="seconds to finish requests on SIGTERM")
    p.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT, so a successor gateway can take over the port without a gap",
    )
    p.add_argument("--ready-file", type=Path, help="written (with this pid) once the gateway listens")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="gateway processes sharing the port (SO_REUSEPORT), kept running by this one; "
        f"1 to {MAX_WORKERS_PER_CORE} per core (default 1: this process serves)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument("--worker-dir", type=Path, help=argparse.SUPPRESS)  # set by the supervisor
    p.add_argument(
        "--queue-url",
        help="async services' queue: sqlite:///PATH or redis://HOST:PORT/DB (default with --data-dir: "
        "sqlite under it)",
    )
    stats = p.add_mutually_exclusive_group()
    stats.add_argument(
        "--stats-socket",
        type=Path,
        help="Unix socket to send per-service counters to (default with --data-dir: DATA/run/control.sock; "
        "with --store postgresql://…: signed UDP to the address the active control plane advertises "
        "in the store)",
    )
    stats.add_argument("--no-stats", action="store_true", help="send no per-service counters")
    lim = p.add_argument_group("client limits (README: Gateway limits)")
    d = ClientLimits()
    for flag, kind, default, what in (
        ("--max-url-bytes", int, d.max_url_bytes, "longer request targets get 414"),
        ("--max-header-bytes", int, d.max_header_bytes, "more header bytes get 431"),
        ("--max-headers", int, d.max_headers, "more header lines get 431"),
        ("--head-timeout", float, d.head_timeout_s, "seconds for a request head (408)"),
        ("--keepalive-timeout", float, d.keepalive_timeout_s, "seconds an idle connection is kept"),
        ("--body-timeout", float, d.body_timeout_s, "longest gap in seconds between reads of a body"),
        ("--max-connections", int, d.max_connections, "client connections at once (default: from ulimit -n)"),
    ):
        lim.add_argument(flag, type=kind, default=default, help=what)
    args = p.parse_args(argv)
    if args.store is not None and args.data_dir is None:
        p.error("--store: needs --data-dir (the folder that holds the store's secret.key)")
    try:
        check_workers(args.workers)
    except ValueError as exc:
        p.error(str(exc))
    if args.worker_index is not None and not (0 <= args.worker_index < args.workers and args.worker_dir):
        p.error("--worker-index: set by the supervisor, with --worker-dir, below --workers")
    return args


def _worker(args: argparse.Namespace) -> WorkerPlace | None:
    if args.worker_index is None:
        return None
    with contextlib.suppress(OSError, AttributeError):  # Linux: SIGTERM when the supervisor dies
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    return WorkerPlace(args.worker_index, args.workers, args.worker_dir)


_PR_SET_PDEATHSIG = 1  # prctl(2)


def _limits(args: argparse.Namespace) -> ClientLimits:
    return ClientLimits(
        max_url_bytes=args.max_url_bytes,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        head_timeout_s=args.head_timeout,
        keepalive_timeout_s=args.keepalive_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
    )


def _stats_udp(args: argparse.Namespace) -> bool:
    """A gateway on a shared store (maybe on another machine) that was not told a socket sends its
    counters signed over UDP (openeas.telemetry.signed_stats)."""
    return not args.no_stats and args.stats_socket is None and _postgres(args.store)


def _postgres(url: str | None) -> bool:
    return url is not None and not url.startswith("sqlite")


def _registration(args: argparse.Namespace) -> Registration | None:
    """A gateway that follows a store registers in it (gateway/routing/registry.py)."""
    if args.data_dir is None:
        return None
    return Registration(args.data_dir, args.store, new_gateway_id(), args.advertise_url or "")


def _stats_socket(args: argparse.Namespace) -> Path | None:
    if args.no_stats or _stats_udp(args):
        return None
    if args.stats_socket is not None:
        return Path(args.stats_socket)
    return gateway_stats.socket_path(args.data_dir) if args.data_dir is not None else None


def _source(args: argparse.Namespace) -> RoutingSource:
    if args.routing_file is not None:
        return FileRoutingSource(args.routing_file)
    # written by the control plane, which notifies changes
    return routing_source(args.data_dir, args.store)


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
        if args.ready_file is not None:
            args.ready_file.write_text(f"{os.getpid()}\n")

    poll_s = args.poll_interval
    if poll_s is None:
        poll_s = FILE_POLL_INTERVAL_S if args.routing_file is not None else DEFAULT_POLL_INTERVAL_S
    await serve(
        _source(args),
        args.host,
        args.port,
        ready_cb=ready,
        poll_interval_s=poll_s,
        notify_socket=None if args.data_dir is None else socket_path(args.data_dir, args.worker_index or 0),
        stats_socket=_stats_socket(args),
        stop=stop,
        grace_s=args.grace,
        reuse_port=args.reuse_port,
        limits=_limits(args),
        queue_url=args.queue_url,
        data_dir=args.data_dir,
        worker=_worker(args),
        registration=_registration(args),
        stats_udp=_stats_udp(args),
    )
    if watcher is not None:
        watcher.cancel()


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_oom_score_adj(CONTROL_PLANE_OOM_SCORE_ADJ)  # the OOM killer takes replicas, not the gateway
    if args.workers > 1 and args.worker_index is None:  # the supervisor of N worker processes
        sys.exit(supervise(sys.argv[1:] if argv is None else argv, args.workers, args.grace, args.ready_file))
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
    else:
        uvloop.run(_main(args))
    sys.exit(0)


if __name__ == "__main__":
    main()

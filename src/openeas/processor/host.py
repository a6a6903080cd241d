"""Hosting an EAS Python processor: load its entry file, then serve its ``process`` over HTTP.

:func:`load_and_serve` runs the entry file as ``__main__``, the way EAS starts it, with the
stand-in ``allspark`` (``openeas/processor/shim``) first on ``sys.path``. The usual entry ends with
``MyProcessor(worker_threads=10).run()``; ``run()`` hands the processor to :class:`Host`, which
calls ``initialize()`` once and only then listens (so the replica is not Ready before the model is
loaded). An entry without that ``__main__`` block is served too: its one ``BaseProcessor``
subclass is created with EAS's defaults.

Requests: ``POST`` on any path (``/``, and whatever follows ``/api/predict/<service>``) calls
``process(body)`` in a pool of ``worker_threads`` threads. Its result maps to the answer as
:func:`response` says; an exception is a 400 with its message (as EAS answers a processor error).
Other methods get 405. SIGTERM stops listening and lets requests in flight finish.
"""

from __future__ import annotations

import asyncio
import json
import os
import runpy
import signal
import sys
import traceback
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

SHIM = Path(__file__).parent / "shim"
GRACE_S = 30.0  # longest wait for requests in flight after SIGTERM (EAS's default grace period)


def response(result: Any) -> tuple[bytes, int]:
    """``process``'s return value → (body, HTTP status).

    ``(data, status)``: status 0 (EAS's success code) or None is 200; a single value is a 200.
    ``data``: bytes as they are, str as UTF-8, None as empty, a dict or list as JSON, anything
    else (a number...) as its ``str``. A status outside 100..599 is a 500 that says so.
    """
    data, status = result if isinstance(result, tuple) and len(result) == 2 else (result, 200)
    if status in (0, None):
        status = 200
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        return f"processor returned status {status!r}: expected an HTTP code or 0".encode(), 500
    if isinstance(data, bytes | bytearray | memoryview):
        body = bytes(data)
    elif isinstance(data, str):
        body = data.encode()
    elif data is None:
        body = b""
    elif isinstance(data, dict | list):
        body = json.dumps(data, ensure_ascii=False).encode()
    else:
        body = str(data).encode()
    return body, status


class Host:
    """Serves one processor instance on ``host:port`` (what ``BaseProcessor.run`` calls)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.served = False

    def serve(self, processor: Any) -> None:
        if self.served:
            raise RuntimeError("run() was called twice: one processor per replica")
        self.served = True
        threads = max(1, int(getattr(processor, "worker_threads", 5) or 5))
        processes = int(getattr(processor, "worker_processes", 1) or 1)
        endpoint = getattr(processor, "endpoint", None)
        note = f"; endpoint {endpoint} is OpenEAS's to choose" if endpoint else ""
        if processes > 1:
            note += f"; worker_processes={processes} runs as one process"
        _log(f"initializing {type(processor).__name__} ({threads} worker threads{note})")
        processor.initialize()
        _log(f"serving on {self.host}:{self.port}")
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="process") as pool:
            asyncio.run(self._serve(processor, pool))

    async def _serve(self, processor: Any, pool: ThreadPoolExecutor) -> None:
        async def handle(request: web.Request) -> web.Response:
            if request.method != "POST":
                return web.json_response(
                    {"error": {"code": "method_not_allowed", "message": "a processor answers POST requests"}},
                    status=405,
                )
            body = await request.read()
            loop = asyncio.get_running_loop()
            try:
                result = await loop.run_in_executor(pool, processor.process, body)
            except Exception as exc:  # the processor's own error: the client's 400, as on EAS
                traceback.print_exc()
                return web.Response(body=f"{type(exc).__name__}: {exc}".encode(), status=400)
            data, status = response(result)
            return web.Response(body=data, status=status, content_type="application/octet-stream")

        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=GRACE_S)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        _log("stopping: finishing requests in flight")
        await runner.cleanup()


def _log(line: str) -> None:
    print(f"openeas.processor: {line}", flush=True)


def pick_processor_class(namespace: Mapping[str, Any], base: type) -> type:
    """The processor class an entry file defines (one ``BaseProcessor`` subclass of its own)."""
    own = [
        v
        for v in namespace.values()
        if isinstance(v, type) and issubclass(v, base) and v is not base and v.__module__ == "__main__"
    ]
    if len(own) != 1:
        names = ", ".join(sorted(c.__name__ for c in own)) or "none"
        raise RuntimeError(
            "the entry file neither calls run() nor defines exactly one allspark.BaseProcessor "
            f"subclass (found: {names}); end it with `MyProcessor().run()` under `if __name__ == '__main__':`"
        )
    return own[0]


def load_and_serve(entry: Path, host: Host, env: Mapping[str, str]) -> None:
    """Run ``entry`` (from its own folder) as EAS does, serving through ``host``."""
    os.environ.update(env)
    sys.path[:0] = [str(entry.parent), str(SHIM)]
    os.chdir(entry.parent)
    import allspark  # the stand-in, from SHIM

    allspark._host = host
    sys.argv = [str(entry)]
    namespace = runpy.run_path(str(entry), run_name="__main__")
    if not host.served:
        pick_processor_class(namespace, allspark.BaseProcessor)().run()

"""A tiny, fast, deterministic OpenAI-compatible model server for tests, demos and load tests.

Run it with ``python -m openeas.testserver --port P [knobs]``, or in-process with ``running``
(async) or ``ServerThread`` (sync).
"""

from openeas.testserver.app import (
    STATE_KEY,
    RunningServer,
    ServerState,
    ServerThread,
    iter_sse_data,
    make_app,
    render_metrics,
    running,
    serve,
)
from openeas.testserver.knobs import Knobs, ServerArgs, build_arg_parser, parse_args

__all__ = [
    "STATE_KEY",
    "Knobs",
    "RunningServer",
    "ServerArgs",
    "ServerState",
    "ServerThread",
    "build_arg_parser",
    "iter_sse_data",
    "make_app",
    "parse_args",
    "render_metrics",
    "running",
    "serve",
]

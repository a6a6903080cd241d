"""A stand-in for EAS's ``allspark`` module, so that a processor written for EAS imports unchanged.

``openeas.processor`` puts the folder holding this package first on ``sys.path`` before it runs a
processor's entry file. It provides what EAS's Python processors use:

- :class:`BaseProcessor`: subclass it and implement ``initialize()`` (called once, before the
  first request) and ``process(data)`` (``data``: the request body, bytes; return
  ``(response, status_code)``, status 0 or 200 for success). The constructor takes EAS's
  ``worker_threads`` (concurrent requests), ``worker_processes`` and ``endpoint``; ``run()`` serves.
  ``get_model_path()`` is the local directory of the spec's ``model_path``; ``get_model_config()``
  its ``model_config`` text.
- :func:`default_properties`: the settings object processors ``put`` keys into
  (``rpc.keepalive``...); OpenEAS keeps them (timeouts are the spec's ``metadata.rpc``).

Where it differs from EAS: the server listens where OpenEAS says (the replica's port), not at
``endpoint``; one process runs (``worker_processes`` > 1 is served by ``worker_threads`` threads).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

DEFAULT_WORKER_THREADS = 5  # EAS's default


class _Host(Protocol):
    def serve(self, processor: BaseProcessor) -> None: ...


_host: _Host | None = None  # set by openeas.processor before the entry file runs


class Properties:
    """Key/value settings (``allspark.default_properties().put("rpc.keepalive", "10000")``)."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def put(self, key: str, value: Any) -> None:
        self._values[str(key)] = str(value)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._values.get(str(key), default)

    def __repr__(self) -> str:
        return f"Properties({self._values!r})"


_properties = Properties()


def default_properties() -> Properties:
    return _properties


class BaseProcessor:
    """Base class of EAS Python processors (see the module docstring)."""

    def __init__(
        self,
        worker_threads: int = DEFAULT_WORKER_THREADS,
        worker_processes: int = 1,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.worker_threads = worker_threads
        self.worker_processes = worker_processes
        self.endpoint = endpoint
        self.options = kwargs

    def initialize(self) -> None:
        """Load the model; called once before the first request."""

    def process(self, data: bytes) -> Any:
        """Answer one request: ``(response, status_code)``."""
        raise NotImplementedError("a processor must implement process(self, data)")

    def get_model_path(self) -> str:
        """The local directory holding the spec's ``model_path`` ("" when the spec has none)."""
        return os.environ.get("OPENEAS_MODEL_PATH", "")

    def get_model_config(self) -> str:
        """The spec's ``model_config`` as text (an object is given as JSON); "" when unset."""
        return os.environ.get("OPENEAS_MODEL_CONFIG", "")

    def run(self) -> None:
        """Initialize, then serve requests until the replica is stopped."""
        if _host is None:
            raise RuntimeError(
                "this allspark stand-in serves through OpenEAS: run the processor with "
                "`python -m openeas.processor --path DIR --entry FILE --port N`"
            )
        _host.serve(self)

"""The test server's knobs: one frozen value, read from CLI flags and ``TESTSERVER_*`` env vars.

A flag given on the command line wins over its env var, which wins over the default. Every knob
names its unit; invalid values raise ``ValueError`` naming the flag and the env var.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "TESTSERVER_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class Knobs:
    """Behaviour of one test server process. All knobs default to "fast and well-behaved"."""

    latency_ms: float = 0.0
    """Fixed extra latency added to every work request (inference, ``/``, ``/echo``), in ms."""
    tokens_per_s: float = 0.0
    """Generation pace in tokens per second (streamed and not); 0 = as fast as possible."""
    failure_rate: float = 0.0
    """Fraction (0..1) of work requests answered 500; the sequence is fixed by ``seed``."""
    seed: int = 0
    """Seed of the failure draw: the same seed and request order give the same failures."""
    startup_delay_s: float = 0.0
    """Seconds slept before binding the port (a slow cold start)."""
    warmup_required: int = 0
    """Inference requests needed before ``/ready`` answers 200 (``/health`` is 200 throughout)."""
    model_name: str = "test-model"
    max_tokens_default: int = 16
    """Tokens generated when a request gives no ``max_tokens``."""
    exit_after_s: float | None = None
    """If set, the process exits this many seconds after it starts serving (a replica crash)."""
    exit_code: int = 0
    """Exit status used by ``exit_after_s`` (non-zero simulates a crash)."""
    unready_file: str = ""
    """While this file exists, ``/ready`` answers 503 (a switch for readiness tests); "" = none."""
    unhealthy_file: str = ""
    """While this file exists, ``/health`` answers 500 (a switch for liveness tests); "" = none."""
    max_concurrency: int = 0
    """Work requests served at once; more wait their turn in arrival order (0 = no limit). With
    ``latency_ms`` it gives a known capacity: ``max_concurrency / latency`` requests per second."""
    engine_metrics_file: str = ""
    """Lines of Prometheus text appended to ``/metrics`` as they are in this file when scraped (a
    model server's own metrics, e.g. ``vllm:num_requests_waiting 3``); ``{port}`` in the path is
    the port this server listens on (one file per replica); "" or a missing file = none."""
    vllm_metrics: bool = False
    """Also expose vLLM-shaped metrics of the work requests: the gauge ``vllm:num_requests_running``
    (requests being served now) and the histogram ``vllm:request_inference_time_seconds``
    (seconds each finished one was served: ``_bucket``, ``_sum``, ``_count``), what the
    autoscaler reads vLLM's running requests from (autoscaler/time_average.py)."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"--{name.replace('_', '-')} ({ENV_PREFIX}{name.upper()}): {why}")

        for name in ("latency_ms", "tokens_per_s", "startup_delay_s"):
            v = getattr(self, name)
            if not math.isfinite(v) or v < 0:
                raise bad(name, f"must be a finite number >= 0, got {v!r}")
        if not 0.0 <= self.failure_rate <= 1.0:
            raise bad("failure_rate", f"must be within 0..1, got {self.failure_rate!r}")
        if self.warmup_required < 0:
            raise bad("warmup_required", f"must be >= 0, got {self.warmup_required!r}")
        if self.max_tokens_default < 0:
            raise bad("max_tokens_default", f"must be >= 0, got {self.max_tokens_default!r}")
        if not self.model_name:
            raise bad("model_name", "must not be empty")
        if self.exit_after_s is not None and (not math.isfinite(self.exit_after_s) or self.exit_after_s < 0):
            raise bad("exit_after_s", f"must be a finite number >= 0, got {self.exit_after_s!r}")
        if self.max_concurrency < 0:
            raise bad("max_concurrency", f"must be >= 0, got {self.max_concurrency!r}")
        if not 0 <= self.exit_code <= 255:
            raise bad("exit_code", f"must be within 0..255, got {self.exit_code!r}")


def _optional_float(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none") else float(text)


def _bool(text: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off`` (any case)."""
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


# How each knob's text (flag or env var) becomes a value.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "latency_ms": float,
    "tokens_per_s": float,
    "failure_rate": float,
    "seed": int,
    "startup_delay_s": float,
    "warmup_required": int,
    "model_name": str,
    "max_tokens_default": int,
    "exit_after_s": _optional_float,
    "exit_code": int,
    "unready_file": str,
    "unhealthy_file": str,
    "max_concurrency": int,
    "engine_metrics_file": str,
    "vllm_metrics": _bool,
}


@dataclass(frozen=True)
class ServerArgs:
    """Where to listen plus the knobs: everything ``python -m openeas.testserver`` needs."""

    host: str
    port: int
    knobs: Knobs


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m openeas.testserver",
        description="A tiny deterministic OpenAI-compatible model server for tests, demos and load tests. "
        f"Every knob can also be set with an env var {ENV_PREFIX}<KNOB> (the flag wins).",
    )
    p.add_argument("--host", default=None, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port to bind; 0 = any free port (default $PORT or {DEFAULT_PORT})",
    )
    helps = {f.name: f"default {f.default!r}" for f in fields(Knobs)}
    for name in _PARSERS:
        # Parse as text here so that an absent flag is distinguishable from a default value.
        p.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, help=helps[name], metavar="VALUE"
        )
    return p


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerArgs:
    """Flags over ``TESTSERVER_*`` env vars over defaults; raises ``ValueError`` on a bad value."""
    env = os.environ if env is None else env
    ns = build_arg_parser().parse_args(argv)
    values: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        flag = getattr(ns, name)
        env_name = ENV_PREFIX + name.upper()
        if flag is not None:
            text, origin = flag, f"--{name.replace('_', '-')}"
        else:
            text, origin = env.get(env_name), env_name
        if text is None:
            continue
        try:
            values[name] = parse(text)
        except ValueError:
            raise ValueError(f"{origin}: cannot parse {text!r} as {parse.__name__.lstrip('_')}") from None
    knobs = Knobs(**values)
    host = ns.host or env.get(ENV_PREFIX + "HOST") or DEFAULT_HOST
    if ns.port is not None:
        port = ns.port
    else:
        raw = env.get("PORT")
        try:
            port = int(raw) if raw else DEFAULT_PORT
        except ValueError:
            raise ValueError(f"PORT: cannot parse {raw!r} as int") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--port: must be within 0..65535, got {port}")
    return ServerArgs(host=host, port=port, knobs=knobs)

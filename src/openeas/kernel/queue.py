"""An async service's queue settings: the record the store writes with a version, the gateway
routes by and the dispatcher delivers with (docs/async.md). Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Defaults of the spec's `queue` block (docs/async.md says why each is what it is).
DEFAULT_MAX_DELIVERY = 5  # attempts before a request goes to the dead-letter list (EAS max_delivery)
DEFAULT_WINDOW = 5  # requests in flight per replica (EAS: the subscription window, worker_threads)
DEFAULT_MAX_LENGTH = 10_000  # requests queued + in flight per service; more get 429
DEFAULT_MAX_PAYLOAD_BYTES = 8 * 1024 * 1024  # largest request body accepted into the queue
DEFAULT_MAX_RESULT_BYTES = 8 * 1024 * 1024  # largest replica answer stored as a result
DEFAULT_RESULT_TTL_S = 86_400.0  # a stored result is kept one day, then expires
DEFAULT_ATTEMPT_TIMEOUT_S = 600.0  # one call to a replica; longer counts as a failed attempt


@dataclass(frozen=True)
class QueueSettings:
    """One async service's queue, as the gateway reads it from the route-settings record."""

    max_delivery: int = DEFAULT_MAX_DELIVERY
    window: int = DEFAULT_WINDOW
    max_length: int = DEFAULT_MAX_LENGTH
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    result_ttl_s: float = DEFAULT_RESULT_TTL_S
    attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S

    @staticmethod
    def from_dict(data: Mapping[str, Any] | None) -> QueueSettings:
        d = data or {}
        return QueueSettings(
            max_delivery=int(d.get("max_delivery") or DEFAULT_MAX_DELIVERY),
            window=int(d.get("window") or DEFAULT_WINDOW),
            max_length=int(d.get("max_length") or DEFAULT_MAX_LENGTH),
            max_payload_bytes=int(d.get("max_payload_bytes") or DEFAULT_MAX_PAYLOAD_BYTES),
            max_result_bytes=int(d.get("max_result_bytes") or DEFAULT_MAX_RESULT_BYTES),
            result_ttl_s=float(d.get("result_ttl_s") or DEFAULT_RESULT_TTL_S),
            attempt_timeout_s=float(d.get("attempt_timeout_s") or DEFAULT_ATTEMPT_TIMEOUT_S),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_delivery": self.max_delivery,
            "window": self.window,
            "max_length": self.max_length,
            "max_payload_bytes": self.max_payload_bytes,
            "max_result_bytes": self.max_result_bytes,
            "result_ttl_s": self.result_ttl_s,
            "attempt_timeout_s": self.attempt_timeout_s,
        }

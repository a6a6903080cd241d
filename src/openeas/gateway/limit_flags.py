"""``openeas server --gateway-limit NAME=VALUE``: the gateway's client limits, by the names of
`openeas.gateway.context.ClientLimits` (README "Gateway limits"), turned into the flags of
``python -m openeas.gateway`` that the server starts its gateway with."""

from __future__ import annotations

from collections.abc import Sequence

from openeas.errors import SpecError

# `openeas server --gateway-limit NAME=VALUE`: the gateway's client limits (gateway/context.py's
# `ClientLimits`, README "Gateway limits"), by name → (its `python -m openeas.gateway` flag, type).
GATEWAY_LIMITS: dict[str, tuple[str, type]] = {
    "max_url_bytes": ("--max-url-bytes", int),
    "max_header_bytes": ("--max-header-bytes", int),
    "max_headers": ("--max-headers", int),
    "head_timeout_s": ("--head-timeout", float),
    "keepalive_timeout_s": ("--keepalive-timeout", float),
    "body_timeout_s": ("--body-timeout", float),
    "max_connections": ("--max-connections", int),
}


def gateway_limit_args(pairs: Sequence[str]) -> list[str]:
    """The gateway's flags for ``NAME=VALUE`` limits; every bad one is named in one `SpecError`."""
    args: list[str] = []
    errors: list[str] = []
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in GATEWAY_LIMITS:
            known = ", ".join(GATEWAY_LIMITS)
            errors.append(f"--gateway-limit {pair!r}: expected NAME=VALUE with NAME one of {known}")
            continue
        flag, kind = GATEWAY_LIMITS[name]
        try:
            value = kind(raw.strip())
        except ValueError:
            what = "an integer" if kind is int else "a number"
            errors.append(f"--gateway-limit {name}: expected {what}, got {raw!r}")
            continue
        if not value > 0:
            errors.append(f"--gateway-limit {name}: must be greater than 0, got {raw!r}")
            continue
        args += [flag, str(value)]
    if errors:
        raise SpecError(errors)
    return args

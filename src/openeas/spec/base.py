"""What every spec model shares: the base model, the "read back from the store" context, numbers
and the name pattern of services and groups."""

from __future__ import annotations

import re

from pydantic import ConfigDict, ValidationInfo

from openeas.spec.numbers import CheckedNumbers

# Whole-string patterns are used with ``fullmatch``: ``$`` would also match before a final "\n".
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,62}")

STORED = "stored"
"""Validation context key: the spec was accepted before and is read back from the store. The
checks added later for new specs (whole-name match, environment and command limits, control
characters) are skipped then, so a version stored by an older release still loads."""


def is_stored(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get(STORED))


# A number of seconds, cores, ...: an int stays an int (30, not 30.0), so a spec round-trips as written.
Number = int | float


# Unknown fields are kept (``extra="allow"``); a field may be set by its name or its alias.
class SpecModel(CheckedNumbers):
    model_config = ConfigDict(extra="allow", populate_by_name=True)

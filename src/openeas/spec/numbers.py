"""Numbers in specs and API bodies are numbers: finite, and never a boolean.

Python's JSON reads ``Infinity``, ``NaN`` and ``1e999`` (infinity) as floats, and pydantic's lax
mode takes ``true`` for 1 in an ``int`` field; neither is what a user meant by ``cpu`` or
``weight``. :class:`CheckedNumbers` is the base of every spec model (and of the API bodies that
carry numbers): one ``before`` validator on every field refuses a boolean where the field is
numeric and a non-finite float anywhere, naming the field (``metadata.cpu: must be a finite
number, got inf``); ranges stay with each field's own ``Field(ge=…, le=…)``.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def is_numeric(annotation: Any) -> bool:
    """Whether a field of this type takes a number (int or float, possibly among other types)
    and not a boolean."""
    kinds = _kinds(annotation)
    return bool(kinds & {int, float}) and bool not in kinds


def _kinds(tp: Any) -> set[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: set[Any] = set()
        for arg in typing.get_args(tp):
            out |= _kinds(arg)
        return out
    return {tp} if tp in (int, float, bool) else set()


def _items(tp: Any) -> Any | None:
    """The item type of a ``dict[str, X]`` (its values) or a ``list[X]``, also inside ``| None``;
    None for anything else."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(tp):
            found = _items(arg)
            if found is not None:
                return found
        return None
    args = typing.get_args(tp)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and len(args) == 1:
        return args[0]
    return None


def number_problem(value: Any, annotation: Any) -> str | None:
    """What is wrong with ``value`` for a field of type ``annotation``; None when nothing is."""
    if isinstance(value, bool) and is_numeric(annotation):
        return f"must be a number, not a boolean ({str(value).lower()})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    item = _items(annotation)
    if item is None or not isinstance(value, dict | list):
        return None
    pairs = value.items() if isinstance(value, dict) else enumerate(value)
    bad = [
        f"{k}: {p}" if isinstance(k, str) else f"[{k}]: {p}"
        for k, v in pairs
        if (p := number_problem(v, item)) is not None
    ]
    return "; ".join(bad) or None


class CheckedNumbers(BaseModel):
    """A model whose numeric fields refuse booleans and whose fields refuse non-finite floats."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _finite_not_bool(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        problem = number_problem(value, cls.model_fields[info.field_name].annotation)
        if problem is not None:
            raise ValueError(problem)
        return value

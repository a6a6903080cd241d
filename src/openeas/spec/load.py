"""Parse a spec from JSON/YAML text or a mapping; turn pydantic errors into `field.path: reason`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from openeas.errors import SpecError
from openeas.spec.models import STORED, ServiceSpec, processor_unavailable
from openeas.spec.processor import processor_problem

MAX_SPEC_DEPTH = 64
"""Deepest nesting of objects/arrays a spec may have (a real EAS spec has about 5 levels)."""
MAX_SPEC_VALUES = 100_000
"""Most values (objects, arrays, scalars) in one spec; also stops YAML alias bombs."""
TOO_DEEP = f"spec: nested deeper than {MAX_SPEC_DEPTH} levels"


def check_shape(data: Any) -> None:
    """Refuse specs nested deeper than ``MAX_SPEC_DEPTH`` or with more than ``MAX_SPEC_VALUES``
    values, without recursing (a self-referencing YAML alias counts as too deep)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_SPEC_VALUES:
            raise SpecError([f"spec: more than {MAX_SPEC_VALUES} values"])
        if isinstance(value, dict | list):
            if depth > MAX_SPEC_DEPTH:
                raise SpecError([TOO_DEEP])
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)


def parse_json(text: str | bytes) -> Any:
    """``json.loads`` that answers a too-deep document with a ``SpecError``, not a RecursionError;
    ``ValueError`` when it is not JSON."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise SpecError([TOO_DEEP]) from None
    check_shape(data)
    return data


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "spec"


def _reason(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    if err.get("type") == "missing":
        return "is required"
    return msg[0].lower() + msg[1:] if msg else msg


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: ``containers[0].port: must be 1..65535``."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        lines.append(f"{_loc(loc)}: {_reason(dict(err))}")
    return lines


def builtin_processor_note(processor: str) -> str:
    """What a spec with ``containers`` *and* an EAS built-in ``processor`` hears (EAS's full JSON
    reference writes both): the processor is not run, the containers are."""
    return (
        f"processor: {processor!r} is an EAS built-in processor, which OpenEAS does not run; this "
        "spec's containers run instead (the processor fields are kept, not used)"
    )


def _processor_lines(data: dict[str, Any]) -> tuple[list[str], bool]:
    """What the spec's processor fields say: (lines, whether they alone make it undeployable)."""
    processor = data.get("processor")
    if not data.get("containers"):
        if processor:
            return [f"spec: {processor_unavailable(str(processor))}"], True
        problem = processor_problem(data)
        return ([f"spec: {problem}"], True) if problem else ([], False)
    return ([builtin_processor_note(str(processor))] if processor else []), False


def _other_errors(data: dict[str, Any]) -> list[str]:
    """The errors of a processor spec's other fields: validated with a stand-in container (the
    processor's own error is reported instead of anything about containers)."""
    rest = {k: v for k, v in data.items() if k not in ("processor", "processor_type")}
    rest["containers"] = [{"command": "true", "port": 8000}]
    try:
        ServiceSpec.model_validate(rest)
    except ValidationError as exc:
        return [e for e in format_errors(exc) if not e.startswith("containers")]
    return []


def parse_spec(data: Any) -> ServiceSpec:
    """A validated spec; ``SpecError`` with every problem at once (a processor that cannot run
    here and the other fields' errors together)."""
    if not isinstance(data, dict):
        raise SpecError(["spec: must be a JSON/YAML object"])
    check_shape(data)
    lines, fatal = _processor_lines(data)
    try:
        return ServiceSpec.model_validate(data)
    except ValidationError as exc:
        errors = [*lines, *_other_errors(data)] if fatal else [*format_errors(exc), *lines]
        raise SpecError(list(dict.fromkeys(errors))) from None


def parse_stored_spec(data: Any) -> ServiceSpec:
    """A spec read back from the store: it was valid when stored, so the limits added since for
    new specs (names, environment, nesting) do not apply; a version stored by an older release
    still loads instead of stopping every reconcile pass."""
    try:
        return ServiceSpec.model_validate(data, context={STORED: True})
    except ValidationError as exc:
        raise SpecError(format_errors(exc)) from None


def parse_text(text: str) -> dict[str, Any]:
    """JSON first (the EAS format), then YAML with the same structure."""
    try:
        data = parse_json(text)
    except json.JSONDecodeError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SpecError([f"spec: neither valid JSON nor YAML ({exc})"]) from None
        except RecursionError:
            raise SpecError([TOO_DEEP]) from None
        check_shape(data)
    if not isinstance(data, dict):
        raise SpecError(["spec: must be a JSON/YAML object"])
    return data


MAX_SPEC_FILE_BYTES = 16 * 1024 * 1024
"""Largest spec file read (16 MiB, as the API's largest spec body)."""


def read_spec_file(path: str | Path) -> str:
    """A spec file's text: ``SpecError`` when it is not a regular file (``/dev/zero``, a FIFO),
    larger than ``MAX_SPEC_FILE_BYTES`` or not UTF-8; ``OSError`` when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not wait for a writer
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpecError([f"spec: {os.fspath(path)} is not a regular file"])
    with open(fd, "rb") as f:
        data = f.read(MAX_SPEC_FILE_BYTES + 1)
    if len(data) > MAX_SPEC_FILE_BYTES:
        raise SpecError([f"spec: {os.fspath(path)} is larger than {MAX_SPEC_FILE_BYTES} bytes (16 MiB)"])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([f"spec: {os.fspath(path)} is not UTF-8 text ({exc})"]) from None


def load_spec_file(path: str | Path) -> ServiceSpec:
    """A validated spec from a file (see :func:`read_spec_file` for what is refused)."""
    return parse_spec(parse_text(read_spec_file(path)))

"""Owns eval sets: golden-labelled prompts and the checks of a model's answers against them.

An eval set is a JSONL file, one case a line: ``{"prompt": ..., "expect": {...}}`` (an OpenAI
chat when ``prompt`` is a string or ``messages`` is given; ``body`` sends a raw JSON body as is).
``expect`` holds one check: ``exact``, ``contains``, ``regex`` (RE2 syntax, linear time:
openeas.linear_regex), ``json`` (``{"path": "a.b.0", "equals": v}``) or ``number``
(``{"value": x, "tolerance": t}``, the answer's first number within t of x). Parsing reports
every malformed line at once, each by its number.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openeas.linear_regex import LinearPattern, compile_problem

CHECKS = ("exact", "contains", "regex", "json", "number")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


class EvalSetError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class EvalCase:
    line: int  # 1-based line in the file
    body: Mapping[str, Any]  # the request body sent to the candidate
    check: str  # one of CHECKS
    expected: Any


def parse_eval_set(text: str) -> list[EvalCase]:
    """The cases of an eval set's JSONL text; EvalSetError naming every bad line."""
    cases: list[EvalCase] = []
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            cases.append(_case(n, json.loads(raw)))
        except json.JSONDecodeError as e:
            errors.append(f"line {n}: not JSON: {e.msg} at column {e.colno}")
        except ValueError as e:
            errors.append(f"line {n}: {e}")
    if not cases and not errors:
        errors.append("the eval set has no cases")
    if errors:
        raise EvalSetError(errors)
    return cases


def _case(n: int, doc: Any) -> EvalCase:
    if not isinstance(doc, dict):
        raise ValueError("a case is a JSON object")
    if "body" in doc:
        if not isinstance(doc["body"], dict):
            raise ValueError("'body' must be a JSON object")
        body: Mapping[str, Any] = doc["body"]
    elif isinstance(doc.get("messages"), list):
        body = {"messages": doc["messages"]}
    elif isinstance(doc.get("prompt"), str):
        body = {"messages": [{"role": "user", "content": doc["prompt"]}]}
    else:
        raise ValueError("one of 'prompt' (a string), 'messages' (a list) or 'body' (an object) is required")
    expect = doc.get("expect")
    if not isinstance(expect, dict) or len(expect) != 1 or next(iter(expect)) not in CHECKS:
        raise ValueError(f"'expect' must be an object with exactly one of {', '.join(CHECKS)}")
    check, expected = next(iter(expect.items()))
    problem = _check_problem(check, expected)
    if problem:
        raise ValueError(f"expect.{check}: {problem}")
    return EvalCase(line=n, body=body, check=check, expected=expected)


def _check_problem(check: str, expected: Any) -> str | None:
    if check in ("exact", "contains"):
        return None if isinstance(expected, str) else "must be a string"
    if check == "regex":
        return compile_problem(expected) if isinstance(expected, str) else "must be a string"
    if check == "json":
        ok = isinstance(expected, dict) and isinstance(expected.get("path"), str) and "equals" in expected
        return None if ok else 'must be {"path": "a.b", "equals": value}'
    ok = isinstance(expected, dict) and all(
        isinstance(expected.get(k), int | float) for k in ("value", "tolerance")
    )
    return None if ok else 'must be {"value": number, "tolerance": number}'


def answer_text(response: Any) -> str:
    """The text of an OpenAI chat or completion answer, else the answer as JSON text."""
    if isinstance(response, dict):
        choices = response.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            c = choices[0]
            msg = c.get("message")
            if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                return msg["content"]
            if isinstance(c.get("text"), str):
                return str(c["text"])
    return response if isinstance(response, str) else json.dumps(response)


def passes(case: EvalCase, text: str) -> bool:
    """Whether the answer ``text`` passes ``case``'s check."""
    e = case.expected
    if case.check == "exact":
        return text.strip() == e.strip()
    if case.check == "contains":
        return e in text
    if case.check == "regex":
        return LinearPattern(e).search(text)
    if case.check == "json":
        try:
            value: Any = json.loads(text)
        except ValueError:
            return False
        for part in e["path"].split(".") if e["path"] else []:
            if isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                return False
        return bool(value == e["equals"])
    m = _NUMBER.search(text)
    return m is not None and abs(float(m.group()) - e["value"]) <= e["tolerance"]

"""Eval sets: parsing (every bad line named at once) and each check, as pure functions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from openeas.evalset import EvalSetError, answer_text, parse_eval_set, passes


def one(expect: dict[str, Any]) -> str:
    return json.dumps({"prompt": "q", "expect": expect})


@pytest.mark.parametrize(
    ("expect", "answer", "ok"),
    [
        pytest.param({"exact": "Paris"}, " Paris\n", True, id="exact"),
        pytest.param({"exact": "Paris"}, "paris", False, id="exact-case"),
        pytest.param({"contains": "42"}, "it is 42.", True, id="contains"),
        pytest.param({"regex": "^[A-Z][a-z]+$"}, "Paris", True, id="regex"),
        pytest.param({"regex": "^\\d+$"}, "x1", False, id="regex-miss"),
        pytest.param({"json": {"path": "a.0.b", "equals": 3}}, '{"a":[{"b":3}]}', True, id="json"),
        pytest.param({"json": {"path": "a.1", "equals": 3}}, '{"a":[3]}', False, id="json-missing"),
        pytest.param({"json": {"path": "a", "equals": 1}}, "not json", False, id="json-not-json"),
        pytest.param({"number": {"value": 3.14, "tolerance": 0.01}}, "pi is 3.141", True, id="number"),
        pytest.param({"number": {"value": 3.14, "tolerance": 0.01}}, "pi is 3.2", False, id="number-off"),
        pytest.param({"number": {"value": 1, "tolerance": 0}}, "none", False, id="number-absent"),
    ],
)
def test_checks(expect: dict[str, Any], answer: str, ok: bool) -> None:
    (case,) = parse_eval_set(one(expect))
    assert passes(case, answer) is ok


def test_malformed_file_names_every_bad_line() -> None:
    text = "\n".join(
        [
            one({"exact": "a"}),
            "{not json",
            json.dumps({"expect": {"exact": "a"}}),
            json.dumps({"prompt": "q", "expect": {"fuzzy": "a"}}),
            "",
            json.dumps({"prompt": "q", "expect": {"regex": "(a"}}),
            json.dumps({"prompt": "q", "expect": {"number": {"value": "x"}}}),
        ]
    )
    with pytest.raises(EvalSetError) as e:
        parse_eval_set(text)
    lines = [err.split(":")[0] for err in e.value.errors]
    assert lines == ["line 2", "line 3", "line 4", "line 6", "line 7"]
    assert e.value.errors[1] == (
        "line 3: one of 'prompt' (a string), 'messages' (a list) or 'body' (an object) is required"
    )
    assert e.value.errors[2].startswith(
        "line 4: 'expect' must be an object with exactly one of exact, contains"
    )
    assert e.value.errors[3].startswith("line 6: expect.regex: ")


def test_empty_file() -> None:
    with pytest.raises(EvalSetError, match="the eval set has no cases"):
        parse_eval_set("\n\n")


@pytest.mark.parametrize(
    ("response", "text"),
    [
        pytest.param({"choices": [{"message": {"content": "hi"}}]}, "hi", id="chat"),
        pytest.param({"choices": [{"text": "yo"}]}, "yo", id="completion"),
        pytest.param({"x": 1}, '{"x": 1}', id="other-json"),
    ],
)
def test_answer_text(response: Any, text: str) -> None:
    assert answer_text(response) == text


def test_case_bodies() -> None:
    cases = parse_eval_set(
        "\n".join(
            [
                json.dumps({"prompt": "p", "expect": {"exact": "a"}}),
                json.dumps({"messages": [{"role": "user", "content": "m"}], "expect": {"exact": "a"}}),
                json.dumps({"body": {"input": 1}, "expect": {"exact": "a"}}),
            ]
        )
    )
    assert [c.body for c in cases] == [
        {"messages": [{"role": "user", "content": "p"}]},
        {"messages": [{"role": "user", "content": "m"}]},
        {"input": 1},
    ]
    assert [c.line for c in cases] == [1, 2, 3]

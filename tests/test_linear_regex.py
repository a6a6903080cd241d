"""Issue 18 §4: a group's match pattern is matched in linear time (RE2), over a bounded text.

Python's ``re`` needs about 2^n steps for ``^(a+)+$`` against n ``a`` and a ``b`` (28 characters
froze the gateway for 4.8 s); RE2 needs about n. 10,000 characters under a 5 s bound cannot be
flaky: linear time is a few milliseconds, backtracking would not end before the sun does.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from openeas.linear_regex import MAX_MATCHED_CHARS, LinearPattern, compile_problem
from openeas.spec.group import MAX_PATTERN_CHARS
from tests.harness import service_spec
from tests.test_api_hardening import Api

GENEROUS_S = 5.0


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("^(a+)+$", "a" * 10_000 + "b", False),
        ("^(a+)+$", "a" * 10_000, True),
        ("(a|aa)+$", "a" * 10_000 + "b", False),
        ("^(a|a?)+$", "a" * 10_000 + "b", False),
        ("(x+x+)+y", "x" * 10_000, False),
    ],
    ids=["nested-plus-miss", "nested-plus-hit", "alternation", "optional-alternation", "two-plus"],
)
def test_catastrophic_patterns_answer_in_linear_time(pattern: str, text: str, expected: bool) -> None:
    p = LinearPattern(pattern, max_chars=len(text))
    start = time.monotonic()
    assert p.search(text) is expected
    assert time.monotonic() - start < GENEROUS_S


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"(a)\1", "invalid escape sequence: \\1"),
        ("(?=a)", "invalid perl operator: (?="),
        ("(?<!a)b", "invalid perl operator: (?<!"),
        ("(", "missing ): ("),
        (r"^Mozilla/5\.0 \(.*\) (?P<engine>\w+)", None),
    ],
    ids=["backreference", "lookahead", "lookbehind", "unbalanced", "named-group-ok"],
)
def test_compile_problem_is_re2s_reason(pattern: str, problem: str | None) -> None:
    assert compile_problem(pattern) == problem
    if problem is not None:
        with pytest.raises(ValueError, match="RE2 cannot compile"):
            LinearPattern(pattern)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(MAX_MATCHED_CHARS, True), (MAX_MATCHED_CHARS + 1, False)],
    ids=["at-the-bound", "over-the-bound"],
)
def test_a_text_over_the_bound_never_matches(length: int, expected: bool) -> None:
    assert LinearPattern("a$").search("a" * length) is expected


def test_the_documented_bounds() -> None:
    assert (MAX_MATCHED_CHARS, MAX_PATTERN_CHARS) == (1024, 512)  # docs/groups.md, docs/RELIABILITY.md


def test_group_create_and_update_refuse_what_re2_cannot_compile(tmp_path: Path) -> None:
    with Api(tmp_path / "data") as api:
        for name in ("ga", "gb"):
            assert api.call("POST", "/api/v1/services", json=service_spec(name, replicas=0)).status_code == 201
        good = {"kind": "ServiceGroup", "name": "g", "routes": [{"service": "ga", "weight": 100}]}
        assert api.call("POST", "/api/v1/groups", json=good).status_code == 201, "the group exists"
        bad = {
            **good,
            "routes": [
                {"service": "ga", "weight": 100, "match": {"user_agent": r"(a)\1"}},
                {"service": "gb", "match": {"user_agent": "(?=x)"}},
            ],
        }
        expected = [
            "routes[0].match.user_agent: not a pattern RE2 can match (no backreferences, no lookaround): "
            "invalid escape sequence: \\1",
            "routes[1].match.user_agent: not a pattern RE2 can match (no backreferences, no lookaround): "
            "invalid perl operator: (?=",
        ]
        for method, path in (("POST", "/api/v1/groups"), ("PUT", "/api/v1/groups/g")):
            r = api.call(method, path, json={**bad, "name": "g2" if method == "POST" else "g"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["errors"] == expected

"""Owns running an eval set against one service's direct endpoint (the gateway's
``/api/predict/<service>``, with the service's own token: no group split, no other member).

Each case's body goes to ``/v1/chat/completions`` when it has ``messages``, ``/v1/completions``
when it has ``prompt``, the service's root otherwise; the answer's text is checked with
:func:`openeas.evalset.passes`. A case whose call fails (a status >= 400, a timeout, no
connection) fails. The run's report: pass rate, every failure (its line, prompt, expectation and
what came back) and latency percentiles. The eval gate of a staged rollout
(``POST /api/v1/groups/{name}/rollout`` with ``eval_set``) runs this before any weight moves.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import requests

from openeas.evalset import EvalCase, answer_text, passes

DEFAULT_TIMEOUT_S = 60.0  # seconds per case
DEFAULT_CONCURRENCY = 4  # cases in flight at once
DEFAULT_MIN_PASS = 0.95  # the rollout gate's pass rate
EXCERPT_CHARS = 200  # characters of a prompt or an answer kept in a failure


@dataclass(frozen=True)
class CaseResult:
    case: EvalCase
    passed: bool
    latency_ms: float
    answer: str  # the answer's text, or why the call failed
    status: int  # HTTP status; 0 when no answer came


def case_path(case: EvalCase) -> str:
    if "messages" in case.body:
        return "/v1/chat/completions"
    if "prompt" in case.body:
        return "/v1/completions"
    return ""


def prompt_excerpt(case: EvalCase) -> str:
    body = case.body
    if isinstance(body.get("messages"), list) and body["messages"]:
        last = body["messages"][-1]
        text = last.get("content") if isinstance(last, dict) else last
    elif "prompt" in body:
        text = body["prompt"]
    else:
        text = body
    text = text if isinstance(text, str) else json.dumps(text)
    return text[:EXCERPT_CHARS]


def run_case(
    session: requests.Session, endpoint: str, token: str, case: EvalCase, timeout_s: float
) -> CaseResult:
    start = time.perf_counter()
    try:
        r = session.post(
            endpoint + case_path(case),
            json=dict(case.body),
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except requests.RequestException as e:
        return CaseResult(case, False, (time.perf_counter() - start) * 1000, f"no answer: {e}", 0)
    latency = (time.perf_counter() - start) * 1000
    if r.status_code >= 400:
        return CaseResult(
            case, False, latency, f"HTTP {r.status_code}: {r.text[:EXCERPT_CHARS]}", r.status_code
        )
    try:
        text = answer_text(r.json())
    except ValueError:
        text = r.text
    return CaseResult(case, passes(case, text), latency, text, r.status_code)


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def report(target: str, service: str, results: Sequence[CaseResult], started_at: float) -> dict[str, Any]:
    """The stored and printed form of a run."""
    passed = sum(r.passed for r in results)
    latencies = [r.latency_ms for r in results if r.status]
    return {
        "id": f"eval-{secrets.token_hex(6)}",
        "target": target,
        "service": service,
        "started_at": started_at,
        "cases": len(results),
        "passed": passed,
        "pass_rate": round(passed / len(results), 4) if results else 0.0,
        "latency_ms": {
            "p50": _percentile(latencies, 0.5),
            "p95": _percentile(latencies, 0.95),
            "max": _percentile(latencies, 1.0),
        },
        "failures": [
            {
                "line": r.case.line,
                "prompt": prompt_excerpt(r.case),
                "expected": {r.case.check: r.case.expected},
                "got": r.answer[:EXCERPT_CHARS],
                "status": r.status,
            }
            for r in results
            if not r.passed
        ],
    }


def run_eval(
    gateway_url: str,
    target: str,
    service: str,
    token: str,
    cases: Sequence[EvalCase],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> dict[str, Any]:
    """Send every case to ``service``'s direct endpoint; the run's report (blocking)."""
    endpoint = f"{gateway_url.rstrip('/')}/api/predict/{service}"
    started = time.time()
    with requests.Session() as session, ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        results = list(pool.map(lambda c: run_case(session, endpoint, token, c, timeout_s), cases))
    return report(target, service, results, started)


def failure_lines(rep: dict[str, Any], limit: int = 10) -> list[str]:
    """One line per failing case (at most ``limit``, then a count): the event's and error's text."""
    out = [
        f"line {f['line']}: {f['prompt']!r} expected {json.dumps(f['expected'])}, got {f['got']!r}"
        for f in rep["failures"][:limit]
    ]
    if len(rep["failures"]) > limit:
        out.append(f"... and {len(rep['failures']) - limit} more")
    return out

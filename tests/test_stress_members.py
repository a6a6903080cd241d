"""A group's stress test by member, without sockets: answers attributed to members (a step's
record), the breakdown (counts add up, unattributed requests, shares against the weights'), the
notes, the group as read from its detail, and the report's table and HTML."""

from __future__ import annotations

from typing import Any

import pytest

from openeas.stress.generator import Outcome, StepRecord, Totals
from openeas.stress.members import (
    UNATTRIBUTED,
    GroupInfo,
    MemberTally,
    breakdown,
    merge_tallies,
    share_notes,
    tally,
)
from openeas.stress.report import members_table, summary_lines, to_html


def tallies(**counts: tuple[int, int]) -> dict[str, MemberTally]:
    """member=(ok answers, error answers); every ok answer took 10 ms."""
    out: dict[str, MemberTally] = {}
    for name, (ok, bad) in counts.items():
        for _ in range(ok):
            tally(out, name, "200", True, 0.010)
        for _ in range(bad):
            tally(out, name, "500", False, 0.010)
    return out


@pytest.mark.parametrize(
    ("counts", "sent", "expected", "want"),
    [
        pytest.param(
            {"a": (70, 0), "b": (30, 0)}, 100, {"a": 0.7, "b": 0.3},
            [("a", 70, 0, 0.7, 0.7), ("b", 30, 0, 0.3, 0.3)],
            id="all-attributed",
        ),
        pytest.param(
            # 100 sent, 90 answered by members: 10 unattributed (the gateway's 503s, timeouts...)
            {"a": (60, 5), "b": (25, 0)}, 100, {"a": 0.7, "b": 0.3},
            [("a", 65, 5, 0.65, 0.7), ("b", 25, 0, 0.25, 0.3), (UNATTRIBUTED, 10, 10, 0.1, None)],
            id="unattributed-row",
        ),
        pytest.param(
            # b has weight but got nothing: still a row, share 0
            {"a": (10, 0)}, 10, {"a": 0.5, "b": 0.5},
            [("a", 10, 0, 1.0, 0.5), ("b", 0, 0, 0.0, 0.5)],
            id="member-with-no-answer",
        ),
        pytest.param(
            # a member not in the group's detail (joined during the test) is listed after, by name
            {"z": (1, 0), "a": (3, 0)}, 4, {"a": 1.0},
            [("a", 3, 0, 0.75, 1.0), ("z", 1, 0, 0.25, None)],
            id="unexpected-member",
        ),
        pytest.param({}, 0, {}, [], id="nothing-sent"),
    ],
)
def test_breakdown_counts_add_up(
    counts: dict[str, tuple[int, int]], sent: int, expected: dict[str, float], want: list[tuple[Any, ...]]
) -> None:
    rows = breakdown(tallies(**counts), sent, expected, duration_s=1.0)
    got = [(r["member"], r["requests"], r["errors"], r["share"], r["expected_share"]) for r in rows]
    assert got == want
    assert sum(r["requests"] for r in rows) == sent


def test_a_members_latency_is_its_own_answers() -> None:
    t: dict[str, MemberTally] = {}
    for ms in (10, 20, 30, 40):
        tally(t, "a", "200", True, ms / 1000)
    tally(t, "b", "200", True, 1.0)
    tally(t, "a", "503", False, 5.0)  # an error's latency is not counted
    rows = {r["member"]: r for r in breakdown(t, 6, {"a": 0.5, "b": 0.5}, duration_s=2.0)}
    assert rows["a"]["p50"] == pytest.approx(20, rel=0.01) and rows["a"]["p99"] == pytest.approx(40, rel=0.01)
    assert rows["a"]["by_status"] == {"200": 4, "503": 1} and rows["a"]["throughput"] == 2.0  # 4 ok / 2 s
    assert rows["b"]["p50"] == pytest.approx(1000, rel=0.01)


def test_merge_tallies_adds_steps() -> None:
    merged = merge_tallies([tallies(a=(2, 1)), tallies(a=(3, 0), b=(1, 0))])
    assert (merged["a"].done, merged["a"].ok, merged["a"].latency.count) == (6, 5, 5)
    assert merged["a"].by_status == {"200": 5, "500": 1} and merged["b"].done == 1


def outcome(status: int, member: str | None, error: str | None = None) -> Outcome:
    return Outcome(intended=0.0, sent=0.0, done=0.025, status=status, error=error, member=member)


@pytest.mark.parametrize(
    ("by_member", "outcomes", "want"),
    [
        pytest.param(
            True,
            [outcome(200, "a"), outcome(200, "b"), outcome(502, "a"), outcome(503, None), outcome(0, None, "timeout")],
            {"a": (2, 1), "b": (1, 1)},
            id="group-test",
        ),
        pytest.param(False, [outcome(200, "a")], None, id="service-test-keeps-nothing"),
    ],
)
def test_a_steps_record_tallies_answers_by_member(
    by_member: bool, outcomes: list[Outcome], want: dict[str, tuple[int, int]] | None
) -> None:
    rec = StepRecord(Totals(), members={} if by_member else None)
    for o in outcomes:
        rec.on_send(o.intended)
        rec.record(o)
    got = None if rec.members is None else {k: (t.done, t.ok) for k, t in rec.members.items()}
    assert got == want


DETAIL = {
    "name": "g",
    "traffic_mode": "customized",
    "members": [
        {"service": "a", "weight": 700, "share_percent": 70.0, "match": None},
        {"service": "b", "weight": 300, "share_percent": 30.0, "match": {"headers": {"X-Canary": "1"}}},
    ],
}


def test_group_info_from_detail() -> None:
    info = GroupInfo.from_detail(DETAIL)
    assert info.expected == {"a": 0.7, "b": 0.3} and info.match_rules
    assert info.to_dict()["expected_share"] == {"a": 0.7, "b": 0.3}


@pytest.mark.parametrize(
    ("shares", "rules", "want"),
    [
        pytest.param({"a": 0.7, "b": 0.3}, False, [], id="on-weight"),
        # docs/stress.md: a member more than 10 points off its weight's share is named
        pytest.param({"a": 0.79, "b": 0.21}, False, [], id="9-points-off"),
        pytest.param({"a": 0.81, "b": 0.19}, False, ["a: got 81%", "b: got 19%"], id="11-points-off"),
        pytest.param({"a": 0.95, "b": 0.05}, False, ["a: got 95%", "b: got 5%"], id="off-weight"),
        pytest.param({"a": 0.7, "b": 0.3}, True, ["the group has match rules"], id="match-rules"),
    ],
)
def test_share_notes(shares: dict[str, float], rules: bool, want: list[str]) -> None:
    info = GroupInfo("g", "customized", {"a": 0.7, "b": 0.3}, rules)
    rows = [{"member": k, "share": v, "expected_share": info.expected[k]} for k, v in shares.items()]
    notes = share_notes(rows, info)
    assert len(notes) == len(want) and all(n.startswith(w) for n, w in zip(notes, want, strict=True))


def group_report() -> dict[str, Any]:
    rows = breakdown(tallies(a=(7, 0), b=(3, 0)), 11, {"a": 0.7, "b": 0.3}, 1.0)
    return {
        "id": "r1", "target": "g", "status": "completed", "end_reason": "ramp complete", "requests": 11,
        "errors": 1, "duration_s": 1.0, "mode": "manual", "load": "rate", "arrival": "constant",
        "steps": [{"index": 0, "offered": 11, "send_rate": 11, "throughput": 10, "errors": 1, "latency": {},
                   "members": rows}],
        "saturation": {"found": False, "qps": 10, "qps_per_replica": 5, "concurrency_per_replica": 0.1,
                       "replicas": 2},
        "recommendation": {"metric": "qps", "target": 3.5, "min_replicas": 1, "max_replicas": 6,
                           "expected_peak_qps": 20, "peak_source": "default", "why": []},
        "group": {**GroupInfo.from_detail(DETAIL).to_dict(), "notes": ["a note"]},
        "members": rows,
    }  # fmt: skip


def test_the_report_shows_members_and_labels_the_group_wide_figures() -> None:
    report = group_report()
    table = members_table(report)
    assert [c.header for c in table.columns][:4] == ["member", "requests", "ok", "errors"]
    assert table.row_count == 3  # a, b, (none)
    lines = summary_lines(report)
    assert any(line.startswith("group g: the figures below are its endpoint's as a whole") for line in lines)
    assert "a note" in lines
    assert any("a group has no autoscaling of its own" in line for line in lines)
    page = to_html(report)
    assert "<h2>By member</h2>" in page and "<td>(none)</td>" in page and "a: 7, b: 3, (none): 1" in page

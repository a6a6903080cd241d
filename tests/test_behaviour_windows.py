"""The behaviour suite's own reasoning (tests/behaviour.py): which group answers count as stale
after a weight change. Pure: rows of (sent, answered, status, member), monotonic seconds."""

from __future__ import annotations

import pytest

from tests.behaviour import stale_after

RETURN, NEXT = 10.0, 11.0  # the change's call returned; the next change's call began
ANCHOR = (10.1, 10.2, 200, "green")  # sent and answered inside the span, by the new member


@pytest.mark.parametrize(
    ("row", "until", "stale"),
    [
        pytest.param((10.3, 10.4, 200, "green"), NEXT, 0, id="by-the-new-member"),
        pytest.param((10.3, 10.4, 200, "blue"), NEXT, 1, id="sent-after-the-return-by-the-old-member"),
        pytest.param((10.0, 10.001, 200, "blue"), NEXT, 1, id="sent-at-the-return-by-the-old-member"),
        # Stamped before the next call began, it reached the gateway after the rollback was applied
        # (seen under load: stamped 408 ms before the rollback call, answered 165 ms into it).
        pytest.param((10.9, 11.2, 200, "blue"), NEXT, 0, id="answered-after-the-next-change-began"),
        pytest.param((9.99, 10.05, 200, "blue"), NEXT, 0, id="sent-before-the-return"),
        pytest.param((12.0, 12.1, 200, "blue"), float("inf"), 1, id="no-next-change-any-later-answer-counts"),
    ],
)
def test_stale_answers_are_those_sent_after_the_return_and_answered_before_the_next_change(
    row: tuple[float, float, int, str], until: float, stale: int
) -> None:
    found = stale_after([ANCHOR, row], RETURN, until, "green")
    assert len(found) == stale, found
    if stale:
        assert found[0].endswith("by 'blue'") and found[0].startswith("sent +")


def test_a_span_with_no_request_answered_in_it_is_an_error_not_a_pass() -> None:
    with pytest.raises(AssertionError, match="no request was sent after the change"):
        stale_after([(10.9, 11.2, 200, "green")], RETURN, NEXT, "green")

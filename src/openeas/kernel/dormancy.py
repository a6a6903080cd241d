"""The 180-day rule, done right: when a service that is not Running gets archived (pure).

A service is **dormant** while its shown status is Stopped, Failed or Pending (nothing serves
it; Running, Updating, Degraded and Deleting are not dormant). After ``after_s`` of dormancy
without a break (180 days by default; 0 = never) it is archived and deleted; Warning events
come before that, at :data:`WARN_LEADS_S` (30, 7 and 1 days) before the deadline, each once.
A lead longer than the whole threshold never fires (a 20-day rule has no 30-day warning), and
after a long pause (the server was down) only the latest lead due fires, not all at once.

``judge`` takes ``now`` (epoch seconds) and the state the previous call returned; the caller
persists that state (store/archive.py) so a restart neither restarts the count nor repeats a
warning. Nothing here reads a clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from openeas.kernel.states import ServiceStatus

DAY_S = 86_400.0
ARCHIVE_AFTER_DAYS = 180  # the default threshold: `openeas server --archive-after-days`
WARN_LEADS_S: tuple[float, ...] = (30 * DAY_S, 7 * DAY_S, 1 * DAY_S)  # before the deadline

# Statuses in which something serves the service (or is about to be removed anyway).
_AWAKE = frozenset(
    {ServiceStatus.RUNNING, ServiceStatus.UPDATING, ServiceStatus.DEGRADED, ServiceStatus.DELETING}
)


def dormant(status: str) -> bool:
    """Stopped, Failed or Pending: the statuses the 180-day count runs in."""
    return status not in _AWAKE


@dataclass(frozen=True)
class Dormancy:
    since: float | None = None  # epoch seconds the dormancy began; None: not dormant
    warned: float | None = None  # the lead (seconds) of the last Warning issued; None: none yet


@dataclass(frozen=True)
class Verdict:
    state: Dormancy
    warn: float | None = None  # a lead (seconds before the deadline) to warn about now
    archive: bool = False  # archive and delete now
    message: str = ""


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(seconds: float) -> str:
    """A duration for a message: days when it is a day or more, else seconds."""
    return f"{seconds / DAY_S:g} days" if seconds >= DAY_S else f"{seconds:g}s"


def judge(
    state: Dormancy,
    is_dormant: bool,
    now: float,
    after_s: float,
    leads_s: Sequence[float] = WARN_LEADS_S,
) -> Verdict:
    """One look at one service: its new dormancy state, and what to do now."""
    if after_s <= 0 or not is_dormant:
        return Verdict(Dormancy())
    since = state.since if state.since is not None else now
    deadline = since + after_s
    if now >= deadline:
        msg = (
            f"not Running since {_iso(since)} ({span(now - since)}, threshold {span(after_s)}): "
            "archived (spec, versions, events, token, group memberships) and deleted; "
            "`openeas restore` brings it back"
        )
        return Verdict(Dormancy(since, state.warned), archive=True, message=msg)
    reached = [lead for lead in leads_s if lead < after_s and now >= deadline - lead]
    if reached:
        lead = min(reached)
        if state.warned is None or lead < state.warned:
            msg = (
                f"not Running since {_iso(since)}: it will be archived and deleted at {_iso(deadline)} "
                f"(in {span(deadline - now)}; threshold {span(after_s)}) unless it runs again"
            )
            return Verdict(Dormancy(since, lead), warn=lead, message=msg)
    return Verdict(Dormancy(since, state.warned))

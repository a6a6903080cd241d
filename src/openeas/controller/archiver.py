"""The 180-day rule's loop: dormant services warned, then archived and deleted (docs/archive.md).

Every ``interval_s`` it derives each service's shown status from the store, feeds the pure
:func:`openeas.kernel.dormancy.judge` (``now`` = the clock's ``wall``), persists the dormancy
state (store/archive.py), records the Warning events ``ArchiveSoon`` at 30, 7 and 1 days before
the deadline, and at the deadline archives the service (``Archived``; the reconciler stops what
runs and purges its rows).

The threshold is ``openeas server --archive-after-days N`` (:data:`ENV_DAYS`; 180 by default, 0 =
never). For tests only, ``--archive-after-s S`` (:data:`ENV_SECONDS`, hidden) sets it in seconds,
with the warnings at the same fractions of it (30/180, 7/180, 1/180) and a look every S/20 s.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from openeas.errors import Conflict, NotFound
from openeas.kernel.clock import Clock
from openeas.kernel.dormancy import ARCHIVE_AFTER_DAYS, DAY_S, WARN_LEADS_S, Dormancy, dormant, judge, span
from openeas.kernel.states import service_status
from openeas.store import Store
from openeas.store.archive import archive_service, dormancies, save_dormancy
from openeas.store.schema import ReplicaRow

log = logging.getLogger("openeas.archiver")

ENV_DAYS = "OPENEAS_ARCHIVE_AFTER_DAYS"  # set by `openeas server --archive-after-days`
ENV_SECONDS = "OPENEAS_ARCHIVE_AFTER_S"  # set by the hidden `--archive-after-s` (tests)
CHECK_INTERVAL_S = 60.0  # seconds between two looks (a day-scale rule needs no faster)


@dataclass(frozen=True)
class ArchiveRule:
    after_s: float = ARCHIVE_AFTER_DAYS * DAY_S  # seconds of dormancy; 0 = never
    leads_s: tuple[float, ...] = WARN_LEADS_S  # warnings, seconds before the deadline
    interval_s: float = CHECK_INTERVAL_S

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ArchiveRule:
        env = dict(os.environ) if env is None else env
        if seconds := env.get(ENV_SECONDS):
            after = float(seconds)
            scale = after / (ARCHIVE_AFTER_DAYS * DAY_S)
            return cls(after, tuple(lead * scale for lead in WARN_LEADS_S), max(0.05, after / 20))
        days = float(env.get(ENV_DAYS) or ARCHIVE_AFTER_DAYS)
        return cls(days * DAY_S)

    def describe(self) -> str:
        return "never" if self.after_s <= 0 else f"after {span(self.after_s)} not Running"


class Archiver:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        rule: ArchiveRule | None = None,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.store, self.clock, self.wake = store, clock, wake  # wake: the reconciler, to delete
        self.rule = rule or ArchiveRule.from_env()

    def tick(self, now: float) -> list[str]:
        """One look at every service (``now``: epoch seconds); returns the names archived."""
        rule = self.rule
        states = dormancies(self.store)
        replicas: dict[str, list[ReplicaRow]] = defaultdict(list)
        for r in self.store.replicas():
            replicas[r.service].append(r)
        done = []
        for svc in self.store.list_services():
            status = service_status(svc.state, svc.current_version, svc.desired_replicas, replicas[svc.name])
            old = states.get(svc.name, Dormancy())
            verdict = judge(old, dormant(status), now, rule.after_s, rule.leads_s)
            if verdict.archive:
                try:
                    archive_service(self.store, svc.name, now, verdict.message, since=verdict.state.since)
                except (Conflict, NotFound):  # deleted or archived meanwhile
                    continue
                log.warning("archived %s: %s", svc.name, verdict.message)
                done.append(svc.name)
                self.wake()
                continue
            if verdict.state != old:
                save_dormancy(self.store, svc.name, verdict.state)
            if verdict.warn is not None:
                self.store.record_event(svc.name, "ArchiveSoon", verdict.message, type="Warning")
        return done

    async def run(self, stop: asyncio.Event) -> None:
        if self.rule.after_s <= 0:
            return  # 0 = never: nothing to watch
        log.info("the archive rule: services are archived %s", self.rule.describe())
        while not stop.is_set():
            try:
                self.tick(self.clock.wall())  # a few quick queries once a minute, as the idle watch
            except Exception:  # one bad look must not end the watch
                log.exception("archiver")
            if await self.clock.sleep(self.rule.interval_s, stop):
                return

"""Staged rollouts in the store: the plan and the state of each group's rollout, so a rollout
survives a restart of the control plane. The controller (controller/rollout_loop.py) writes the
state with a compare-and-set (`save`), so an operator's pause, resume or abort between its read
and its write is never overwritten."""

from __future__ import annotations

import time

from sqlalchemy import select

from openeas.errors import Conflict, NotFound
from openeas.kernel.rollout import ACTIVE, RolloutPlan, RolloutState, Status, check_transition
from openeas.store.db import Store
from openeas.store.group_schema import GroupRow, RolloutRow


class RolloutStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, plan: RolloutPlan, now: float | None = None) -> tuple[RolloutPlan, RolloutState]:
        now = time.time() if now is None else now
        state = RolloutState(reason="starting")
        with self.store.session() as s:
            if s.get(GroupRow, plan.group) is None:
                raise NotFound(f"group '{plan.group}' not found")
            row = s.get(RolloutRow, plan.group)
            if row is not None:
                old = RolloutState.from_dict(row.state)
                if old.status in ACTIVE:
                    raise Conflict(
                        f"group '{plan.group}' has a rollout in progress (to {row.plan['candidate']}); "
                        "abort it first (openeas rollout <group> --abort)"
                    )
                if old.restore_pending:
                    raise Conflict(
                        f"group '{plan.group}': the routes of its last rollout (to {row.plan['candidate']}) "
                        "are still being restored; try again in a moment"
                    )
                s.delete(row)
                s.flush()
            s.add(
                RolloutRow(
                    group=plan.group,
                    plan=plan.to_dict(),
                    state=state.to_dict(),
                    created_at=now,
                    updated_at=now,
                )
            )
            steps = ",".join(map(str, plan.steps))
            self.store._event(
                s,
                plan.group,
                "RolloutStarted",
                f"rollout to {plan.candidate} from {plan.baseline}: steps {steps}%, hold {plan.hold_s:g} s",
            )
        return plan, state

    def get(self, group: str) -> tuple[RolloutPlan, RolloutState]:
        with self.store.read() as s:
            row = s.get(RolloutRow, group)
            if row is None:
                raise NotFound(f"group '{group}' has no rollout")
            return RolloutPlan.from_dict(row.plan), RolloutState.from_dict(row.state)

    def active(self) -> list[tuple[RolloutPlan, RolloutState]]:
        with self.store.read() as s:
            rows = list(s.scalars(select(RolloutRow)))
        out = []
        for row in rows:
            state = RolloutState.from_dict(row.state)
            if state.status in ACTIVE:
                out.append((RolloutPlan.from_dict(row.plan), state))
        return out

    def restoring(self) -> list[tuple[RolloutPlan, RolloutState]]:
        """The ended rollouts whose group's routes are still to be restored (``restore_pending``)."""
        with self.store.read() as s:
            rows = list(s.scalars(select(RolloutRow)))
        out = []
        for row in rows:
            state = RolloutState.from_dict(row.state)
            if state.restore_pending:
                out.append((RolloutPlan.from_dict(row.plan), state))
        return out

    def save(
        self,
        group: str,
        state: RolloutState,
        *,
        expect: RolloutState,
        event: tuple[str, str, str] | None = None,
    ) -> bool:
        """Write ``state`` if the stored one is still ``expect``; ``event`` = (reason, message,
        type) in the same transaction. False when someone changed it meanwhile; IllegalTransition
        when the status change is not in the table (kernel/rollout.py)."""
        check_transition(expect.status, state.status)
        with self.store.session() as s:
            row = s.get(RolloutRow, group)
            if row is None or row.state != expect.to_dict():
                return False
            row.state = state.to_dict()
            row.updated_at = time.time()
            if event is not None:
                reason, message, type_ = event
                self.store._event(s, group, reason, message, type=type_)
            return True

    def command(self, group: str, what: str, now: float | None = None) -> tuple[RolloutPlan, RolloutState]:
        """An operator's ``pause``, ``resume`` or ``abort``. An abort is written with
        ``restore_pending``: the rollout controller then restores the routes the group had when the
        rollout started (controller/rollout_loop.py), like after a rollback."""
        now = time.time() if now is None else now
        plan, state = self.get(group)
        if state.status not in ACTIVE:
            raise Conflict(f"the rollout of group '{group}' is {state.status.value}; nothing to {what}")
        if what == "pause":
            if state.status == Status.PAUSED:
                raise Conflict(f"the rollout of group '{group}' is paused already")
            new = state.but(status=Status.PAUSED, reason="paused by the operator")
            event = (
                "RolloutPaused",
                f"rollout to {plan.candidate} paused at {self._at(plan, state)}",
                "Normal",
            )
        elif what == "resume":
            if state.status == Status.RUNNING:
                raise Conflict(f"the rollout of group '{group}' is running already")
            started = now if state.step >= 0 else None
            new = state.but(status=Status.RUNNING, reason="resumed", step_started_at=started, rebase=True)
            event = (
                "RolloutResumed",
                f"rollout to {plan.candidate} resumed: {self._at(plan, state)} held again",
                "Normal",
            )
        else:
            new = state.but(
                status=Status.ABORTED, reason="aborted by the operator", finished_at=now, restore_pending=True
            )
            event = ("RolloutAborted", f"rollout to {plan.candidate} aborted; restoring routes", "Warning")
        if not self.save(group, new, expect=state, event=event):
            raise Conflict(f"the rollout of group '{group}' changed meanwhile; try again")
        return plan, new

    @staticmethod
    def _at(plan: RolloutPlan, state: RolloutState) -> str:
        if state.step < 0:
            return "its start"
        return f"step {state.step + 1}/{len(plan.steps)} ({plan.steps[state.step]}%)"

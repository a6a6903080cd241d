"""The staged rollout's loop: every `TICK_S` (or at once when woken), for each running rollout,
read the candidate's live counters (the gateways' counters datagram, `GroupCounters`), ask the
pure `decide` what to do, and do it: set a step's weights, roll back to the routes the group had
when the rollout started, or finish.

Level-triggered, like the reconciler: the state in the store (step, when it started, the
counters at its start) is the truth, and every look makes the group's weights agree with it
(a step written just before a crash gets its weights at the next look). The state survives a
restart of the control plane, and so do the counters it compares with: the gateway keeps them
(and outlives the server) and sends them whole in every datagram. Writes use the store's
compare-and-set, so an operator's pause, resume or abort is never overwritten by a look that
started before it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from openeas.controller.rollout_staged import decide, step_weights
from openeas.errors import OpenEASError
from openeas.kernel.clock import LOOP_CLOCK, Clock
from openeas.kernel.rollout import Action, Decision, Observation, RolloutPlan, RolloutState, Status
from openeas.store.db import Store
from openeas.store.groups import GroupStore
from openeas.store.rollouts import RolloutStore
from openeas.telemetry.gateway_stats import MemberSample
from openeas.telemetry.group_stats import GroupCounters, member_live, window

log = logging.getLogger("openeas.rollout")

TICK_S = 0.25  # seconds between two looks at the running rollouts


def restore_routes(groups: GroupStore, plan: RolloutPlan, reason: str, message: str) -> None:
    """Give the group back the routes it had when the rollout started; when they no longer apply
    (a member was deleted since), all the traffic to the baseline."""
    try:
        groups.set_routes(
            plan.group, list(plan.restore), reason=reason, message=message, event_type="Warning"
        )
    except OpenEASError:
        groups.change(
            plan.group,
            weights={plan.candidate: 0, plan.baseline: 1000},
            reason=reason,
            message=message,
            event_type="Warning",
        )


class RolloutController:
    def __init__(
        self,
        store: Store,
        counters: GroupCounters,
        *,
        clock: Clock = LOOP_CLOCK,
        tick_s: float = TICK_S,
        await_routing: Callable[[int], Any] | None = None,
    ) -> None:
        self.store = store
        self.rollouts = RolloutStore(store)
        self.groups = GroupStore(store)
        self.counters = counters  # the group members' live traffic, from the gateways
        self.clock = clock  # its wall time stamps steps (stored); its sleeps pace the loop
        self.tick_s = tick_s
        # Waits, bounded, until every gateway applied a routing version (the fleet's wait_applied):
        # restored routes are acknowledged before the rollout says so; None: no gateway to wait for.
        self.await_routing = await_routing
        # The latest decision and observation of each group's rollout (shown by the API).
        self.last: dict[str, tuple[Decision, Observation | None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None

    def wake(self) -> None:
        """Look now (after an operator's command). Any thread."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            loop.call_soon_threadsafe(wake.set)

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        while not stop.is_set():
            wake.clear()
            try:
                await self.tick()
            except Exception:  # one bad look must not end the rollouts
                log.exception("staged rollout look failed")
            await self.clock.sleep(self.tick_s, until=wake)

    async def tick(self) -> None:
        for plan, state in await asyncio.to_thread(self.rollouts.restoring):
            await asyncio.to_thread(self.restore, plan, state)
        for plan, state in await asyncio.to_thread(self.rollouts.active):
            if state.status != Status.RUNNING:
                continue
            members = self.counters.members(plan.group)  # what the receiver holds: no I/O
            await asyncio.to_thread(self.look, plan, state, members)

    def restore(self, plan: RolloutPlan, state: RolloutState) -> None:
        """Converge an ended rollout whose routes are still to be restored (an operator's abort, or a
        rollback written just before a crash): restore them, wait (bounded) until the gateways
        route by them, then clear ``restore_pending`` (the API's ``routes_restored``)."""
        if state.status == Status.ROLLED_BACK:
            reason, message = "RolloutRolledBack", f"routes restored: {state.reason}"
        else:
            reason, message = "RolloutAborted", f"rollout to {plan.candidate} aborted: routes restored"
        restore_routes(self.groups, plan, reason, message)
        if self.await_routing is not None:
            # A gateway that does not answer within the bound gets the routes when it reads the
            # store (its poll, its start); the store has them, so the rollout still ends here.
            self.await_routing(self.store.routing_version())
        self.rollouts.save(plan.group, state.but(restore_pending=False), expect=state)

    def look(
        self, plan: RolloutPlan, state: RolloutState, members: Mapping[str, MemberSample] | None
    ) -> Decision:
        """One look at one running rollout with the group members' counters (None: unknown)."""
        now = self.clock.wall()
        live = member_live(members, plan.candidate)
        if state.step >= 0:
            if not self._ensure_weights(plan, state):
                return self.last[plan.group][0]
            if state.rebase and live is not None:
                new = state.but(baseline_codes=live[0], baseline_buckets=live[1], rebase=False)
                if not self.rollouts.save(plan.group, new, expect=state):
                    return Decision(Action.NONE, "changed meanwhile", state.step)
                state = new
        obs = None
        if live is not None and state.step >= 0 and not state.rebase:
            obs = window(live[0], live[1], state.baseline_codes, state.baseline_buckets)
        d = decide(plan, state, obs, now)
        self.last[plan.group] = (d, obs)
        if d.action == Action.START_STEP:
            new = state.but(
                step=d.step,
                step_started_at=now,
                reason=d.reason,
                baseline_codes=live[0] if live is not None else {},
                baseline_buckets=live[1] if live is not None else None,
                rebase=live is None,
            )
            if self.rollouts.save(plan.group, new, expect=state):
                self._ensure_weights(plan, new, reason=d.reason)
        elif d.action == Action.ROLL_BACK:
            new = state.but(status=Status.ROLLED_BACK, reason=d.reason, finished_at=now, restore_pending=True)
            event = ("RolloutFailed", f"rollout to {plan.candidate} rolled back: {d.reason}", "Warning")
            if self.rollouts.save(plan.group, new, expect=state, event=event):
                self.restore(plan, new)
        elif d.action == Action.SUCCEED:
            new = state.but(status=Status.SUCCEEDED, reason=d.reason, finished_at=now)
            event = ("RolloutSucceeded", f"rollout to {plan.candidate} done: {d.reason}", "Normal")
            self.rollouts.save(plan.group, new, expect=state, event=event)
        return d

    def _ensure_weights(self, plan: RolloutPlan, state: RolloutState, reason: str | None = None) -> bool:
        """Make the group's weights those of the state's step; False when the rollout had to end
        (its candidate or baseline left the group)."""
        group = self.groups.get(plan.group)
        cand, base = group.member(plan.candidate), group.member(plan.baseline)
        if cand is None or base is None:
            gone = plan.candidate if cand is None else plan.baseline
            why = f"{gone} is no longer a member of group '{plan.group}'"
            new = state.but(status=Status.ABORTED, reason=why, finished_at=self.clock.wall())
            self.rollouts.save(plan.group, new, expect=state, event=("RolloutAborted", why, "Warning"))
            self.last[plan.group] = (Decision(Action.NONE, why, state.step), None)
            return False
        want = step_weights(plan.steps[state.step])
        if (cand.weight, base.weight) != want or cand.mirror_weight:
            self.groups.change(
                plan.group,
                weights={plan.candidate: want[0], plan.baseline: want[1]},
                mirror_weights={plan.candidate: 0} if cand.mirror_weight else None,
                reason="RolloutStep",
                message=reason
                or f"step {state.step + 1}/{len(plan.steps)}: {plan.steps[state.step]}% to {plan.candidate}",
            )
        return True

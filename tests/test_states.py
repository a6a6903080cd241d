"""The domain's states: legal transitions, and the derived facts everyone shares."""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import dataclass

import pytest

from openeas.kernel import rollout
from openeas.kernel.states import (
    ROUTABLE_SQL,
    TRANSITIONS,
    BatchState,
    IllegalTransition,
    ReplicaPhase,
    ServiceStatus,
    StressState,
    check_batch_transition,
    check_stress_transition,
    check_transition,
    desired_replicas,
    routable,
    service_status,
)

P = ReplicaPhase


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Pending", "Fetching"),  # a start begins
        ("Fetching", "Starting"),
        ("Starting", "Warming"),
        ("Warming", "Ready"),
        ("Ready", "Draining"),
        ("Draining", "Stopped"),
        ("Ready", "Failed"),  # crash or unhealthy
        ("Starting", "Failed"),  # exit or timeout during start
        ("Failed", "Pending"),  # backoff over: restart
        ("Pending", "Starting"),  # adopted after a control-plane restart
        ("Warming", "Warming"),  # staying is not a change
    ],
    ids=lambda v: v,
)
def test_legal_transitions(old: str, new: str) -> None:
    assert check_transition(old, new) == ReplicaPhase(new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Pending", "Ready"),  # skipped probing and warmup
        ("Starting", "Ready"),  # skipped warmup
        ("Stopped", "Pending"),  # a stopped replica's row is gone: nothing comes back
        ("Stopped", "Ready"),
        ("Failed", "Ready"),  # must start again first
        ("Pending", "Draining"),  # nothing to drain
        ("Ready", "Bogus"),
    ],
    ids=lambda v: v,
)
def test_illegal_transitions_raise(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_every_live_phase_can_fail_and_stop() -> None:
    for phase in P:
        if phase is not P.STOPPED:
            assert {P.FAILED, P.STOPPED} <= TRANSITIONS[phase] | {phase}, phase


@pytest.mark.parametrize(
    ("state", "desired", "expected"),
    [("Running", 3, 3), ("Stopped", 3, 0), ("Deleting", 3, 0), ("Running", 0, 0)],
    ids=["running", "stopped", "deleting", "zero"],
)
def test_desired_replicas(state: str, desired: int, expected: int) -> None:
    assert desired_replicas(state, desired) == expected


ROUTABLE_CASES = [
    ("Ready", 0, 8000, True),
    ("Ready", 1, 8000, False),  # being stopped: leaves the table before it drains
    ("Ready", 0, None, False),
    ("Draining", 0, 8000, False),
    ("Warming", 0, 8000, False),
    ("Failed", 0, 8000, False),
]


@pytest.mark.parametrize(("phase", "stopping", "port", "expected"), ROUTABLE_CASES)
def test_routable(phase: str, stopping: int, port: int | None, expected: bool) -> None:
    assert routable(phase, stopping, port) is expected


def test_routable_sql_selects_what_routable_says() -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE replicas (id INTEGER, phase TEXT, stopping INTEGER, port INTEGER)")
    rows = [
        (i, phase, stopping, port)
        for i, (phase, stopping, port) in enumerate(itertools.product(list(P), (0, 1), (None, 8000)))
    ]
    db.executemany("INSERT INTO replicas VALUES (?, ?, ?, ?)", rows)
    selected = {i for (i,) in db.execute(f"SELECT id FROM replicas WHERE {ROUTABLE_SQL}")}
    assert selected == {i for i, phase, stopping, port in rows if routable(phase, stopping, port)}
    assert len(selected) == 1


@dataclass
class R:
    phase: str
    version: int = 1
    stopping: int = 0
    restart_count: int = 0


@pytest.mark.parametrize(
    ("state", "desired", "replicas", "expected"),
    [
        ("Running", 2, [R("Ready"), R("Ready")], ServiceStatus.RUNNING),
        ("Running", 2, [R("Ready"), R("Starting")], ServiceStatus.PENDING),
        ("Running", 2, [R("Ready"), R("Ready", version=0)], ServiceStatus.UPDATING),
        ("Running", 2, [R("Ready"), R("Failed")], ServiceStatus.DEGRADED),
        ("Running", 1, [R("Starting", restart_count=2)], ServiceStatus.FAILED),  # restarting, none Ready
        ("Running", 1, [R("Ready"), R("Failed", stopping=1)], ServiceStatus.RUNNING),  # stopping ones don't count
        ("Running", 0, [], ServiceStatus.RUNNING),
        ("Stopped", 2, [R("Ready")], ServiceStatus.STOPPED),
        ("Stopped", 2, [], ServiceStatus.STOPPED),
        ("Deleting", 2, [], ServiceStatus.DELETING),
    ],
    ids=["all-ready", "coming-up", "rollout", "degraded", "failed", "stopping-ignored", "zero", "stopped-draining", "stopped", "deleting"],
)
def test_service_status(state: str, desired: int, replicas: list[R], expected: ServiceStatus) -> None:
    assert service_status(state, 1, desired, replicas) is expected


@pytest.mark.parametrize(
    ("old", "new", "legal"),
    [
        pytest.param("Running", "Succeeded", True, id="running-succeeds"),
        pytest.param("Running", "Failed", True, id="running-fails"),
        pytest.param("Running", "Cancelled", True, id="running-cancelled"),
        pytest.param("Failed", "Running", True, id="failed-resumes"),
        pytest.param("Cancelled", "Running", True, id="cancelled-resumes"),
        pytest.param("Cancelled", "Failed", True, id="cancelled-then-its-last-shard-fails"),
        pytest.param("Running", "Running", True, id="same-state-new-message"),
        pytest.param("Succeeded", "Running", False, id="succeeded-is-done"),
        pytest.param("Succeeded", "Failed", False, id="succeeded-cannot-fail"),
        pytest.param("Failed", "Succeeded", False, id="failed-cannot-succeed-without-running"),
        pytest.param("Running", "Paused", False, id="unknown-state"),
    ],
)
def test_batch_job_transitions(old: str, new: str, legal: bool) -> None:
    if legal:
        assert check_batch_transition(old, new) == BatchState(new)
    else:
        with pytest.raises(IllegalTransition, match="batch job state"):
            check_batch_transition(old, new)


@pytest.mark.parametrize(
    ("old", "new", "legal"),
    [
        pytest.param("Running", "Paused", True, id="running-pauses"),
        pytest.param("Running", "Succeeded", True, id="last-step-held"),
        pytest.param("Running", "RolledBack", True, id="slo-breach"),
        pytest.param("Running", "Aborted", True, id="running-aborted"),
        pytest.param("Running", "Running", True, id="same-status-new-step"),
        pytest.param("Paused", "Running", True, id="paused-resumes"),
        pytest.param("Paused", "Aborted", True, id="paused-aborted"),
        pytest.param("Paused", "Paused", True, id="paused-stays"),
        pytest.param("Paused", "Succeeded", False, id="paused-is-not-judged"),
        pytest.param("Paused", "RolledBack", False, id="paused-cannot-roll-back"),
        pytest.param("Succeeded", "Running", False, id="succeeded-is-done"),
        pytest.param("RolledBack", "Running", False, id="rolled-back-is-done"),
        pytest.param("Aborted", "Paused", False, id="aborted-is-done"),
        pytest.param("Succeeded", "RolledBack", False, id="no-rollback-after-success"),
        pytest.param("Running", "Cancelled", False, id="unknown-status"),
    ],
)
def test_rollout_transitions(old: str, new: str, legal: bool) -> None:
    if legal:
        assert rollout.check_transition(old, new) == rollout.Status(new)
    else:
        with pytest.raises(IllegalTransition, match="rollout status"):
            rollout.check_transition(old, new)


def test_rollout_final_statuses_are_those_outside_active() -> None:
    assert {rollout.Status.SUCCEEDED, rollout.Status.ROLLED_BACK, rollout.Status.ABORTED} == rollout.FINAL
    for status in rollout.Status:
        assert bool(rollout.TRANSITIONS[status]) is (status in rollout.ACTIVE), status


@pytest.mark.parametrize(
    ("old", "new", "legal"),
    [
        pytest.param("running", "completed", True, id="ran-to-the-end"),
        pytest.param("running", "interrupted", True, id="stopped-or-cut-by-a-restart"),
        pytest.param("running", "failed", True, id="the-run-erred"),
        pytest.param("running", "running", True, id="running-stays"),
        pytest.param("completed", "completed", True, id="upload-retried"),
        pytest.param("completed", "interrupted", False, id="completed-is-final"),
        pytest.param("interrupted", "running", False, id="interrupted-does-not-resume"),
        pytest.param("failed", "completed", False, id="failed-is-final"),
        pytest.param("completed", "running", False, id="completed-does-not-restart"),
        pytest.param("running", "Running", False, id="unknown-state"),
    ],
)
def test_stress_run_transitions(old: str, new: str, legal: bool) -> None:
    if legal:
        assert check_stress_transition(old, new) == StressState(new)
    else:
        with pytest.raises(IllegalTransition, match="stress run state"):
            check_stress_transition(old, new)

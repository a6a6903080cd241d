"""plan_rollout: table-driven. Replicas are written as 'id:version:phase[:stopping|:N in flight][@node]'."""

from __future__ import annotations

import pytest

from openeas.controller.rollout import ReplicaView, plan_rollout, restart_backoff_s


def reps(*specs: str) -> list[ReplicaView]:
    out = []
    for i, written in enumerate(specs):
        s, _, node = written.partition("@")
        parts = s.split(":")
        out.append(
            ReplicaView(
                id=parts[0],
                version=int(parts[1]),
                phase=parts[2],
                stopping=len(parts) > 3 and not parts[3].isdigit(),
                created_at=float(i),
                in_flight=int(parts[3]) if len(parts) > 3 and parts[3].isdigit() else 0,
                node=node or None,
            )
        )
    return out


CASES = [
    # (id, replicas, current_version, desired, surge, unavailable, want_create, want_stop)
    ("fresh deploy", [], 1, 2, 1, 0, 2, ()),
    ("steady", ["a:1:Ready", "b:1:Ready"], 1, 2, 1, 0, 0, ()),
    ("scale up", ["a:1:Ready"], 1, 3, 1, 0, 2, ()),
    # scale down drops the not-ready replica first, then the newest Ready one
    ("scale down prefers unready", ["a:1:Ready", "b:1:Starting", "c:1:Ready"], 1, 1, 1, 0, 0, ("b", "c")),
    # then the fewest requests in flight (the gateway's count), newest first among equals
    ("scale down fewest in flight", ["a:1:Ready:0", "b:1:Ready:5", "c:1:Ready:2"], 1, 1, 1, 0, 0, ("a", "c")),
    ("scale down unready before idle", ["a:1:Ready:0", "b:1:Warming:0", "c:1:Ready:3"], 1, 1, 1, 0, 0, ("b", "a")),
    ("scale to zero newest first", ["a:1:Ready", "b:1:Ready"], 1, 0, 1, 0, 0, ("b", "a")),
    # on nodes (Ray): one from the node holding the most of those left, before the fewest in flight
    ("scale down crowded node first", ["a:1:Ready@n1", "b:1:Ready:3@n1", "c:1:Ready@n2", "d:1:Ready@n3"],
     1, 3, 1, 0, 0, ("a",)),
    ("scale down recounts after each", ["a:1:Ready@n1", "b:1:Ready@n1", "c:1:Ready@n1", "d:1:Ready@n2",
     "e:1:Ready@n2", "f:1:Ready@n3"], 1, 3, 1, 0, 0, ("c", "e", "b")),
    ("scale down unready before crowded", ["a:1:Ready@n1", "b:1:Ready@n1", "c:1:Starting@n2"], 1, 2, 1, 0, 0, ("c",)),
    ("stopping ones do not count", ["a:1:Ready:stop"], 1, 1, 1, 0, 1, ()),
    # update, surge 1: 2 old Ready + room for 1 new; no old may go before a new one is Ready
    ("update starts surge", ["a:1:Ready", "b:1:Ready"], 2, 2, 1, 0, 1, ()),
    # new one Ready → ready total 3, min available 2 → one old may go; room is full (3 = 2 + 1)
    ("update swaps one", ["a:1:Ready", "b:1:Ready", "c:2:Ready"], 2, 2, 1, 0, 0, ("a",)),
    ("update old unready goes at once", ["a:1:Failed", "b:1:Ready"], 2, 2, 1, 0, 1, ("a",)),
    # surge 0, unavailable 1: first stop one old (2 - 1 >= 1), create nothing yet (room 0)
    ("update by unavailability", ["a:1:Ready", "b:1:Ready"], 2, 2, 0, 1, 0, ("a",)),
    # both zero would deadlock: treated as surge 1
    ("surge and unavailable zero", ["a:1:Ready"], 2, 1, 0, 0, 1, ()),
    ("update to stopped service", ["a:1:Ready", "b:2:Ready"], 2, 0, 1, 0, 0, ("b", "a")),
]


@pytest.mark.parametrize(
    "replicas,current,desired,surge,unavail,create,stop", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan_rollout(replicas, current, desired, surge, unavail, create, stop):
    plan = plan_rollout(
        reps(*replicas), current_version=current, desired=desired, max_surge=surge, max_unavailable=unavail
    )
    assert plan.create == create
    assert plan.stop == stop


@pytest.mark.parametrize("count,want", [(1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (50, 30.0)])
def test_restart_backoff_doubles_and_caps(count, want):
    assert restart_backoff_s(count) == want

"""Admission by the node's capacity (controller/capacity.py): the pure decision, its defaults,
and the process replica's OOM score and memory limit (read back from /proc)."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import pytest

from openeas.controller.capacity import (
    DEFAULT_CPU,
    DEFAULT_MEMORY_MB,
    Claim,
    Resources,
    admit,
    node_capacity,
    request_of,
)
from openeas.procfs import REPLICA_OOM_SCORE_ADJ
from openeas.runtime import ProcessRuntime
from openeas.runtime.base import LaunchSpec
from openeas.spec import parse_spec
from tests.harness import service_spec

NODE = Resources(cpu=2.0, memory_mb=1000.0)


def c(rid: str, cpu: float = 0.1, mem: float = 100.0, holds: bool = False) -> Claim:
    return Claim(id=rid, request=Resources(cpu, mem), holds=holds)


ADMIT_CASES = [
    pytest.param([c("a"), c("b")], {"a", "b"}, {}, id="all-fit"),
    # 400 + 400 fit in 1000 MB; the third needs 400 and 200 are free.
    pytest.param([c("a", mem=400), c("b", mem=400), c("c", mem=400)], {"a", "b"},
                 {"c": "not enough memory on this node: needs 400 MB, free 200 MB (of 1000 MB)"}, id="memory-full"),
    pytest.param([c("a", cpu=1.5), c("b", cpu=1)], {"a"},
                 {"b": "not enough cpu on this node: needs 1 cores, free 0.5 (of 2)"}, id="cpu-full"),
    pytest.param([c("a", cpu=1.5, mem=900), c("b", cpu=1, mem=200)], {"a"},
                 {"b": "not enough cpu on this node: needs 1 cores, free 0.5 (of 2); "
                       "not enough memory on this node: needs 200 MB, free 100 MB (of 1000 MB)"}, id="both-listed"),
    # A holder keeps its share even when it is newer than a waiting replica.
    pytest.param([c("old", mem=600), c("new", mem=600, holds=True)], {"new"},
                 {"old": "not enough memory on this node: needs 600 MB, free 400 MB (of 1000 MB)"}, id="holder-first"),
    # A smaller replica behind one that does not fit still starts.
    pytest.param([c("a", mem=500), c("big", mem=800), c("small", mem=300)], {"a", "small"},
                 {"big": "not enough memory on this node: needs 800 MB, free 500 MB (of 1000 MB)"}, id="backfill"),
    pytest.param([c("huge", mem=5000)], set(),
                 {"huge": "not enough memory on this node: needs 5000 MB, free 1000 MB (of 1000 MB)"}, id="never-fits"),
    # Holders over the capacity (an operator lowered --node-memory): nothing new, free shown as 0.
    pytest.param([c("a", mem=900, holds=True), c("b", mem=900, holds=True), c("n", mem=1)], {"a", "b"},
                 {"n": "not enough memory on this node: needs 1 MB, free 0 MB (of 1000 MB)"}, id="overcommitted"),
    pytest.param([], set(), {}, id="nothing"),
]  # fmt: skip


@pytest.mark.parametrize(("claims", "admitted", "pending"), ADMIT_CASES)
def test_admit(claims: list[Claim], admitted: set[str], pending: dict[str, str]) -> None:
    got = admit(claims, NODE)
    assert set(got.admitted) == admitted
    assert got.pending == pending


def test_freed_capacity_admits_the_next_waiting_replica() -> None:
    # 1000 MB, 300 MB each: three run, the fourth waits; one leaves and it fits.
    claims = [c(f"r{i}", mem=300) for i in range(4)]
    first = admit(claims, NODE)
    assert set(first.pending) == {"r3"}
    held = [Claim(x.id, x.request, x.id in first.admitted) for x in claims if x.id != "r0"]
    assert admit(held, NODE).admitted == {"r1", "r2", "r3"}


@pytest.mark.parametrize(
    ("metadata", "expect"),
    [
        pytest.param({}, Resources(DEFAULT_CPU, DEFAULT_MEMORY_MB), id="defaults"),
        pytest.param({"cpu": 2, "memory": 4000}, Resources(2.0, 4000.0), id="spec"),
        pytest.param({"cpu": 0.5}, Resources(0.5, DEFAULT_MEMORY_MB), id="cpu-only"),
    ],
)
def test_request_of_spec(metadata: dict[str, object], expect: Resources) -> None:
    spec = service_spec("svc")
    spec["metadata"].update(metadata)
    assert request_of(parse_spec(spec)) == expect


def test_documented_defaults() -> None:
    assert (DEFAULT_CPU, DEFAULT_MEMORY_MB) == (0.05, 256)
    # The existing tests' replicas (3-6 per service, a few services) fit a 2-core, 24 GiB machine.
    small = Resources(cpu=2.0, memory_mb=24 * 1024)
    claims = [Claim(f"r{i}", Resources(DEFAULT_CPU, DEFAULT_MEMORY_MB), False) for i in range(40)]
    assert len(admit(claims, small).admitted) == 40  # 40 x 0.05 = 2 cores, 40 x 256 MB = 10 GiB


def test_node_capacity_measures_the_node_unless_told() -> None:
    measured = node_capacity()
    assert measured.cpu >= 1 and measured.memory_mb > 100
    assert node_capacity(3, 2048) == Resources(3.0, 2048.0)


@pytest.mark.parametrize("memory_mb", [pytest.param(None, id="no-limit"), pytest.param(512, id="512MB")])
def test_process_replica_is_the_oom_killers_first_choice_with_its_memory_limit(
    tmp_path: Path, memory_mb: int | None
) -> None:
    rt = ProcessRuntime()
    launch = LaunchSpec(
        replica_id="r1",
        argv=[sys.executable, "-c", "import time; time.sleep(30)"],
        env={},
        cwd=str(tmp_path),
        log_path=str(tmp_path / "log"),
        port=0,
        memory_limit_mb=memory_mb,
    )
    ref = rt.start(launch)
    try:
        time.sleep(0.2)
        assert int(Path(f"/proc/{ref.pid}/oom_score_adj").read_text()) == REPLICA_OOM_SCORE_ADJ
        soft, _hard = resource.prlimit(ref.pid, resource.RLIMIT_DATA)
        if memory_mb is None:
            assert soft == resource.getrlimit(resource.RLIMIT_DATA)[0]
        else:
            assert soft == memory_mb * 2**20
    finally:
        rt.signal(ref, 9)

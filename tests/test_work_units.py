"""The units of work scripts/test.sh's pytest-xdist workers take (tests/conftest.py): a module,
except the container suite by engine, the async suites by queue backend, the bench smoke forms one
by one; and the longest units are handed out first."""

from __future__ import annotations

import pytest

from tests.conftest import FIRST, SERIAL, SPLIT_BY_PARAM, SPLIT_BY_TEST, in_phase, unit_rank, work_unit

C = "tests/test_e2e_container.py"
A = "tests/test_e2e_async.py"
B = "tests/test_bench_smoke.py"
K = "tests/test_e2e_async_crash.py"


@pytest.mark.parametrize(
    ("nodeid", "unit"),
    [
        pytest.param("tests/test_store.py::test_x[sqlite]", "tests/test_store.py", id="a-module"),
        pytest.param("tests/test_store.py::test_x", "tests/test_store.py", id="unparametrized"),
        pytest.param(f"{C}::test_orphan[podman]", f"{C}[podman]", id="container-podman"),
        pytest.param(f"{C}::test_bad_input[docker-bad-image]", f"{C}[docker]", id="container-docker-and-more"),
        pytest.param(f"{C}::test_no_engine_is_a_clear_error", C, id="container-no-engine"),
        pytest.param(f"{A}::test_sink[redis]", f"{A}[redis]", id="async-redis"),
        pytest.param(f"{A}::test_sink[sqlite]", f"{A}[sqlite]", id="async-sqlite"),
        pytest.param(f"{K}::test_kill[redis]", f"{K}[redis]", id="async-crash-redis"),
        pytest.param(f"{K}::test_kill[sqlite]", f"{K}[sqlite]", id="async-crash-sqlite"),
        pytest.param(f"{B}::test_bench[soak.py]", f"{B}::test_bench[soak.py]", id="bench-one-by-one"),
    ],
)
def test_work_unit(nodeid: str, unit: str) -> None:
    assert work_unit(nodeid) == unit


def test_the_longest_units_go_first_the_rest_keep_their_order() -> None:
    ranks = [unit_rank(f"{m}::test_x") for m in FIRST]
    assert ranks == sorted(ranks) and len(set(ranks)) == len(FIRST)
    assert unit_rank("tests/test_store.py::test_x") == unit_rank("tests/test_spec.py::test_y") > max(ranks)


def test_the_tables_name_existing_modules() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for module in [*SPLIT_BY_PARAM, *SPLIT_BY_TEST, *FIRST, *(s.partition("::")[0] for s in SERIAL)]:
        assert (root / module).is_file(), module
    assert not set(SERIAL) & set(FIRST), "a serial module is not handed to the workers at all"


@pytest.mark.parametrize(
    ("nodeid", "phase", "runs"),
    [
        pytest.param("tests/test_e2e_stress.py::test_x", None, True, id="plain-run-serial-module"),
        pytest.param("tests/test_store.py::test_x", None, True, id="plain-run-other-module"),
        pytest.param("tests/test_e2e_stress.py::test_x", "parallel", False, id="parallel-skips-serial"),
        pytest.param("tests/test_store.py::test_x", "parallel", True, id="parallel-runs-the-rest"),
        pytest.param("tests/test_e2e_vllm.py::test_x[a]", "serial", True, id="serial-runs-vllm"),
        pytest.param("tests/test_store.py::test_x", "serial", False, id="serial-skips-the-rest"),
        pytest.param(
            "tests/test_e2e_container.py::test_kill9_in_container_restarts_and_server_crash_adopts[docker]",
            "serial", True, id="serial-runs-a-named-test-each-param",
        ),
        pytest.param("tests/test_e2e_container.py::test_other[docker]", "parallel", True, id="its-module-stays"),
    ],
)
def test_phases(nodeid: str, phase: str | None, runs: bool) -> None:
    assert in_phase(nodeid, phase) is runs

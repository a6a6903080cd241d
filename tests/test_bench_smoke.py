"""Every benchmark in bench/ starts and finishes in its smallest form (issue 20 §1).

Each bench runs as documented (``python bench/X.py``, its folder first on ``sys.path``), with the
smallest arguments that still run every part once, and ``--no-anchors`` where it has virtualenv
anchors (Celery, locust, Ray Serve: bench/anchors.sh builds them; they are not installed here).
A bench that dies on import, on a renamed helper or on a missing flag fails here. Figures are not
checked: this machine is shared; bench/RESULTS.md holds the measured ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WRK_NGINX = ("wrk", "nginx")
COLDSTART_STANDBY = ["--standby-runs", "1", "--no-llm", "--step-s", "2", "--bake-mb", "4"]

# bench file -> (its smallest form, the Debian programs it needs beside the project)
SMOKE: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "activator.py": (["--trials", "3", "--runs", "1", "--duration", "1"], WRK_NGINX),
    "async_queue.py": (["--duration", "1", "--count", "5", "--no-anchors"], ("wrk", "redis-server")),
    "autoscaler.py": (["--runs", "1", "--no-anchors"], ()),
    "cluster.py": (["--replicas", "200", "--rounds", "2", "--rollout-replicas", "20", "--sqlite-only"], ()),
    # A 3-node Ray cluster and 30 + 30 replicas take minutes: its flags and imports are checked here.
    "cluster_rayserve.py": (["--help"], ()),
    "console_paint.py": (["--services", "3", "--loads", "1"], ("chromium",)),
    "coldstart.py": (["--size-mb", "4", "--starts", "3", "--runs", "1", *COLDSTART_STANDBY], ("podman",)),
    "gateway.py": (["--duration", "1", "--runs", "1", "--latency-duration", "0"], WRK_NGINX),
    "gateway_fleet.py": (["--changes", "2"], ()),  # PostgreSQL: found as localcluster finds it
    "gateway_cost.py": (
        ["--duration", "1", "--runs", "1", "--baseline", "HEAD", "--route-timeout", "5"],
        WRK_NGINX,
    ),
    "groups.py": (["--duration", "1", "--runs", "1"], ("wrk",)),
    "llm_routing.py": (
        [
            "--engine=testserver",
            "--requests=16",
            "--rate=20",
            "--prompt-tokens=50",
            "--balancers=least-request,prefix-affinity,least-kv",
        ],
        (),
    ),
    "routing.py": (["--changes", "6", "--poll-changes", "3"], ()),
    "runtime.py": (["--starts", "1", "--duration", "1", "--runs", "1"], ("wrk", "podman")),
    "simulate.py": (["--days", "1"], ()),
    "simulate_replay.py": (["--minutes", "0.5"], ()),  # a 30 s live replay (its verdict may miss here)
    "soak.py": (["--quick"], ()),  # runs soak_lifecycle.py and soak_gateway.py, quick forms
    "stress.py": (["--duration", "1", "--no-anchors"], WRK_NGINX),
    "vllm_running.py": (["--engine", "testserver", "--seconds", "1"], ()),  # real vLLM: bench/RESULTS.md
}
# Lines a bench's smallest form must print (each mode it measures made it to the table).
EXPECT: dict[str, tuple[str, ...]] = {
    "cluster_rayserve.py": ("--replicas", "--scale-to", "--cpu"),
    "llm_routing.py": ("| prefix-affinity |", "| least-kv |", "keys moved adding replica 3 to 2"),
    "gateway.py": ("| gateway (openeas server) |", "| gateway (routing file) |"),
    "gateway_cost.py": ("| openeas gateway at HEAD |", "verdict: gateway CPU per request"),
    "async_queue.py": ("8 Python threads, 1 process", "after kill -9 of the gateway"),
    "coldstart.py": ("scale call to first answer (gateway)", "| baked |"),
    "simulate.py": ("anchor: decide() alone", "simulate, qps + 3 cron rules", "verdict: "),
    "simulate_replay.py": ("| replica-seconds |", "| cost (RMB) |", "| scale events |", "verdict: "),
    "soak.py": ("| verdict |", "(a) slow clients:"),
    "vllm_running.py": ("| the autoscaler, read as rate(vllm:request_inference_time_seconds_sum) |", "verdict: "),
    "gateway_fleet.py": (
        "| anchor: the server's own gateway only |",
        "| two: the server's + a store-only gateway |",
        "verdict: ",
    ),
}
# Run through another file of this table, or only under their anchor's interpreter: compiled here.
NOT_RUN_ALONE = {
    "anchors.py": "helper of the benches",
    "coldstart_standby.py": "run by coldstart.py",
    "coldstart_bake.py": "run by coldstart.py",
    "coldstart_vllm.py": "run by coldstart.py --vllm (real vLLM: minutes; tests/test_e2e_vllm.py covers the path)",
    "gateway_workers.py": "the same as gateway.py --only workers (test_the_gateway_workers_pass_runs)",
    "autoscaler_ray.py": "imports Ray: run by autoscaler.py with .bench/ray's interpreter",
    "soak_gateway.py": "run by soak.py --quick",
    "soak_lifecycle.py": "run by soak.py --quick",
    "cluster_sim.py": "run by cluster.py (--only reconcile|rollout)",
}


def run_bench(name: str, args: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def test_every_bench_has_a_smoke_form() -> None:
    files = {p.name for p in BENCH.glob("*.py")}
    assert files == set(SMOKE) | set(NOT_RUN_ALONE), "add the new bench's smallest form to SMOKE"


@pytest.mark.parametrize("name", sorted(NOT_RUN_ALONE), ids=sorted(NOT_RUN_ALONE))
def test_helper_compiles(name: str) -> None:
    subprocess.run([sys.executable, "-m", "py_compile", str(BENCH / name)], check=True)


def test_no_bench_shadows_the_standard_library() -> None:
    shadowing = sorted(p.stem for p in BENCH.glob("*.py") if p.stem in sys.stdlib_module_names)
    assert shadowing == [], f"bench/ is first on sys.path when a bench runs: rename {shadowing}"


def test_a_missing_anchor_stops_the_bench() -> None:
    if (ROOT / ".bench" / "ray" / "bin" / "python").exists():
        pytest.skip("the Ray Serve anchor is installed here (.bench/ray)")
    out = run_bench("autoscaler.py", ["--runs", "1"], timeout_s=60)
    assert out.returncode != 0
    assert "anchor missing: ray" in out.stderr and "bench/anchors.sh" in out.stderr, out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE), ids=sorted(SMOKE))
def test_bench_runs_in_its_smallest_form(name: str) -> None:
    args, programs = SMOKE[name]
    missing = [p for p in programs if shutil.which(p) is None and not Path(f"/usr/sbin/{p}").exists()]
    if missing:
        pytest.skip(f"{' '.join(missing)} not installed (scripts/setup.sh installs them)")
    if "podman" in programs and os.geteuid() != 0:
        pytest.skip("podman (rootful) needs root")
    out = run_bench(name, args)
    tail = (out.stdout[-3000:] + "\n" + out.stderr[-3000:]).strip()
    assert "Traceback" not in out.stderr, tail
    if name in ("soak.py", "simulate_replay.py"):
        # A soak's or replay's verdict may miss on a loaded machine (exit 1); it must have run to it.
        assert out.returncode in (0, 1), tail
    else:
        assert out.returncode == 0, tail
    for line in EXPECT.get(name, ()):
        assert line in out.stdout, f"{line!r} missing:\n{tail}"


@pytest.mark.slow
def test_the_gateway_workers_pass_runs() -> None:
    """``bench/gateway.py --only workers`` (bench/gateway_workers.py): 2 workers vs 1 vs nginx."""
    if shutil.which("wrk") is None or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("wrk or nginx not installed (scripts/setup.sh installs them)")
    out = run_bench("gateway.py", ["--only", "workers", "--workers", "2", "--duration", "1", "--runs", "1"])
    tail = (out.stdout[-3000:] + "\n" + out.stderr[-3000:]).strip()
    assert out.returncode == 0, tail
    for line in ("| openeas gateway, 2 workers |", "| nginx, 2 workers |", "verdict: 2 workers = "):
        assert line in out.stdout, f"{line!r} missing:\n{tail}"

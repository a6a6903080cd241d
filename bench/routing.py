"""Routing-change latency, store commit → gateway table swapped: ``python bench/routing.py``.

Each change is a real store commit (service created, replica Ready, service updated, token
change, replica leaving, service deleted, in turn) read by a real gateway (in this process, on
its own uvloop thread, so both ends share one clock). Modes:

- ``push``: the server's wiring (a datagram to ``DATA/run/gateway.sock`` after each commit),
  with the safety-net poll at 60 s so only the push can explain a fast update;
- ``poll-only`` (the anchor): no datagram, the gateway polls ``routing_version`` every 0.2 s (the
  interval before pushes existed) or 1 s (the safety net now). Changes are spread at random
  within the poll period, so the latency is the poll's phase, not a lockstep artefact.

``--footprint [--src DIR]`` instead measures the gateway process itself: the time to import its
entry point and open the store source, and its RSS once started and idle; ``--src`` runs another
tree's ``src/`` (e.g. ``git archive <rev> src | tar -x -C /tmp/old`` then ``--src /tmp/old/src``).
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rig lives in tests/ (shared with tests/test_routing_push.py)

from tests.conftest_gateway import free_port  # noqa: E402
from tests.routing_harness import RoutingRig, change_cycle, percentile, spec  # noqa: E402


def latencies(push: bool, poll_s: float, changes: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    # Spread the commits over the poll period (or a few ms with push) so they sample its phase.
    spread_s = 0.005 if push else poll_s
    out: list[float] = []
    with tempfile.TemporaryDirectory(prefix="openeas-bench-") as d:
        rig = RoutingRig(Path(d), push=push, poll_interval_s=poll_s)
        try:
            rig.start_gateway()
            n = 0
            while len(out) < changes:
                for _kind, change, shows in change_cycle(n):
                    time.sleep(rng.uniform(0, spread_s))
                    out.append(rig.change(change, timeout_s=poll_s * 3 + 5))
                    assert shows(rig.table())
                    if len(out) == changes:
                        break
                n += 1
        finally:
            rig.close()
    return out


def _child_env(src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


IMPORT = (
    "import sys, time; t = time.perf_counter(); import openeas.gateway.__main__ as m; "
    "m._source(m._parse(['--data-dir', sys.argv[1]])); print(time.perf_counter() - t)"
)


def footprint(src: Path | None, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="openeas-bench-") as d:
        data = Path(d)
        from openeas.store import Store

        Store(data).create_service(spec("svc"))
        env = _child_env(src)
        def python(code: str) -> str:
            """What ``python -c code DATA_DIR`` prints, run in the tree under test."""
            return subprocess.run(
                [sys.executable, "-c", code, d], env=env, cwd=d, capture_output=True, text=True, check=True
            ).stdout.strip()

        where = python("import openeas; print(openeas.__file__)")
        imports = [float(python(IMPORT)) for _ in range(runs)]
        bare = [_wall([sys.executable, "-c", "pass"], env, d) for _ in range(runs)]
        rss, ready_s = [], []
        for _ in range(runs):
            r, s = _start_and_rss(data, env)
            rss.append(r)
            ready_s.append(s)
        mods = python(IMPORT.replace("print(time.perf_counter() - t)", "print(len(sys.modules))"))
    print(f"tree: {where}")
    ms = statistics.median(imports) * 1000
    print(
        f"gateway footprint (median of {runs}): import + store source {ms:.0f} ms "
        f"({mods} modules); interpreter start {statistics.median(bare) * 1000:.0f} ms; "
        f"process start → listening {statistics.median(ready_s) * 1000:.0f} ms; "
        f"idle RSS {statistics.median(rss) / 1024:.1f} MiB"
    )


def _wall(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True)
    return time.perf_counter() - t


def _start_and_rss(data: Path, env: dict[str, str]) -> tuple[int, float]:
    """(VmRSS in KiB after 2 s idle, seconds from spawn to answering /healthz)."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openeas.gateway", "--port", str(port), "--data-dir", str(data)],
        env=env,
        cwd=data,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.005)
            if time.perf_counter() - t0 > 30:
                raise TimeoutError("the gateway did not start")
        ready = time.perf_counter() - t0
        time.sleep(2.0)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
        return rss, ready
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--changes", type=int, default=120, help="routing changes per mode")
    p.add_argument("--poll-changes", type=int, default=60, help="changes per poll-only mode (they are slow)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--footprint", action="store_true", help="measure the gateway's import time and idle RSS")
    p.add_argument("--src", type=Path, help="with --footprint: the src/ of another tree")
    p.add_argument("--runs", type=int, default=5, help="with --footprint: runs per figure (median)")
    args = p.parse_args()
    if args.footprint:
        footprint(args.src, args.runs)
        return
    modes = [("push (poll 60 s)", True, 60.0, args.changes)]
    modes += [(f"poll-only {s:g} s", False, s, args.poll_changes) for s in (0.2, 1.0)]
    for name, push, poll_s, n in modes:
        xs = latencies(push, poll_s, n, args.seed)
        print(
            f"{name:>18}: {len(xs)} changes, commit → applied p50 {percentile(xs, 0.5) * 1000:7.2f} ms, "
            f"p99 {percentile(xs, 0.99) * 1000:7.2f} ms, max {max(xs) * 1000:7.2f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""The simulator agrees with reality (issue 24): a short trace replayed live against a real
server (real test-server replicas, the real autoscaler and gateway, short windows) and simulated
by ``openeas simulate --service`` with the cold starts that server measured (tests/live_replay.py).
The issue's tolerances: replica-seconds within 10%, cost within 5%, scale events within ±1.

The trace is 50 s (the issue asks for 10 minutes: ``python bench/simulate_replay.py --minutes 10``
runs that form; the suite has a time budget): 10 s at 2 req/s, 20 s at 10 req/s, 20 s at 2 req/s,
with a qps target of 4 per replica: 1 replica, then 3, then 1 again."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from openeas.autoscaler.trace import read_trace
from openeas.cli.main import app
from tests.harness import stop_and_reap
from tests.live_replay import cli_env, counts_of, replay, start_server

pytestmark = pytest.mark.slow

PHASES = ((10, 2), (20, 10), (20, 2))  # (seconds, requests/s)


def test_a_live_replay_and_its_simulation_agree(tmp_path: Path) -> None:
    counts = counts_of(PHASES)
    srv = start_server(tmp_path)
    try:
        fig = replay(srv, tmp_path, counts)
        assert fig.ok == fig.requests, fig
        assert fig.cold_starts_from.startswith("replay's last")
        print(fig.line())
        # 1 replica for 50 s, 2 more for about 25 s: ~100 replica-seconds
        assert 80 < fig.live_seconds < 130, fig.line()
        for what, ok, figures in fig.checks():
            assert ok, f"{what}: {figures}"

        # The gateway's own counts of the replay, exported as a trace: every request, in its second
        env = cli_env(srv)
        exported = tmp_path / "exported.csv"
        r = CliRunner().invoke(
            app, ["trace", "--service", "replay", "--seconds", "120", "-o", str(exported)], env=env
        )
        assert r.exit_code == 0, r.output
        got = read_trace(exported.open(), str(exported))
        assert got.requests == sum(counts)
        assert fig.t0 - 1 <= got.start <= fig.t0 + 1 and got.seconds <= len(counts) + 2
        # Mean seconds in flight of a 'POST /': the gateway samples its in-flight count every 0.2 s,
        # and the test server answers in about a millisecond, so every sample may find none.
        assert 0 <= got.busy.sum() / got.requests < 1.0
        missing = CliRunner().invoke(app, ["trace", "--service", "nope"], env=env)
        assert missing.exit_code == 1 and "nope" in missing.output
    finally:
        stop_and_reap(srv)

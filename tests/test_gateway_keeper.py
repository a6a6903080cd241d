"""The gateway keeper (gateway_keeper.py): a gateway the server stops on its way down is not
taken for one that died and restarted by the keeper's watch (seen when the stop of a cluster's
server raced the watch: a new gateway came up after the server had stopped its own)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openeas import gateway_keeper
from openeas.gateway_keeper import GatewayKeeper, GatewayProcess


class SlowToReturn(GatewayProcess):
    """A gateway whose stop returns ``late_s`` after the process has gone (a slow reap)."""

    late_s = 0.0

    def stop(self, grace_s: float = 1.0) -> None:
        super().stop(grace_s)
        time.sleep(self.late_s)


@pytest.mark.parametrize(
    "late_s", [pytest.param(0.0, id="stop-returns-at-once"), pytest.param(0.4, id="stop-returns-late")]
)
def test_a_stopped_gateway_is_not_restarted_by_the_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, late_s: float
) -> None:
    monkeypatch.setattr(gateway_keeper, "GATEWAY_WATCH_S", 0.05)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    keeper = GatewayKeeper(tmp_path, "127.0.0.1", 1)
    gw = SlowToReturn(proc.pid, None, proc)
    gw.late_s = late_s
    keeper.gw = gw
    restarts: list[int] = []
    monkeypatch.setattr(keeper, "start", lambda: restarts.append(1))

    async def scenario() -> None:
        watch = asyncio.create_task(keeper.watch())
        await asyncio.to_thread(keeper.stop)
        await asyncio.sleep(0.3)  # several watch rounds after the stop
        watch.cancel()

    try:
        asyncio.run(scenario())
    finally:
        proc.kill()
        proc.wait()
    assert restarts == []
    assert keeper.gw is None

"""The batch runner's retries on the one clock: a line that got no answer, a 429 or a 5xx is sent
again after RETRY_BACKOFF_S, doubled each time, at most ATTEMPTS times. A real HTTP server
answers in the gateway's place; the backoff passes in virtual time (kernel.clock.FakeClock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from openeas.batch.lines import BatchRequest, parse_line
from openeas.batch.runner import ATTEMPTS, RETRY_BACKOFF_S, BatchRunner
from openeas.kernel.clock import FakeClock
from openeas.store import Store


class Flaky:
    """Answers ``status`` to the first ``failures`` requests, then 200."""

    def __init__(self, failures: int, status: int) -> None:
        self.failures, self.status, self.seen = failures, status, 0

    async def answer(self, request: web.Request) -> web.Response:
        self.seen += 1
        if self.seen <= self.failures:
            return web.Response(status=self.status, text="busy")
        return web.json_response({"echo": await request.json()})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Flaky, str]]:
    flaky = Flaky(0, 503)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky.answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield flaky, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.mark.parametrize(
    ("failures", "status", "ok", "sent", "waited_s"),
    [
        pytest.param(0, 503, True, 1, 0.0, id="first-try"),
        pytest.param(2, 503, True, 3, RETRY_BACKOFF_S * 3, id="two-5xx-then-ok"),
        pytest.param(1, 429, True, 2, RETRY_BACKOFF_S, id="one-429-then-ok"),
        pytest.param(9, 500, False, ATTEMPTS, RETRY_BACKOFF_S * (2 ** (ATTEMPTS - 1) - 1), id="gives-up"),
        pytest.param(1, 400, False, 1, 0.0, id="a-4xx-is-not-retried"),
    ],
)
async def test_retries_back_off_on_virtual_time(
    tmp_path: Path,
    upstream: tuple[Flaky, str],
    failures: int,
    status: int,
    ok: bool,
    sent: int,
    waited_s: float,
) -> None:
    flaky, url = upstream
    flaky.failures, flaky.status = failures, status
    clock = FakeClock()
    runner = BatchRunner(Store(tmp_path), url, clock=clock)
    req = parse_line(1, b'{"custom_id": "a", "method": "POST", "url": "/", "body": {"x": 1}}')
    assert isinstance(req, BatchRequest)
    async with aiohttp.ClientSession() as session:
        runner._session = session
        call = asyncio.create_task(runner._call("svc", "token", req))
        start = clock.now()
        await clock.run_until(call.done, limit_s=60)
        answered, _line = call.result()
    assert answered is ok
    assert clock.now() - start == pytest.approx(waited_s)
    assert flaky.seen == sent

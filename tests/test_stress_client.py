"""The HTTP transport against a real test server process: open-loop send accuracy (the
acceptance check: within 2% of the target over a step, at a rate this machine sustains), errors
by kind, and streamed answers timed token by token."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import uvloop

from openeas.kernel.clock import LOOP_CLOCK
from openeas.runtime import free_port
from openeas.stress.client import HttpTransport, build_requests
from openeas.stress.generator import Generator
from openeas.stress.plan import Arrival


@pytest.fixture(scope="module")
def testserver() -> Iterator[int]:
    """A real test server process: 2 ms per request, 20 tokens a streamed answer at 400 tokens/s."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "openeas.testserver", "--port", str(port), "--latency-ms", "2",
         "--tokens-per-s", "400", "--max-tokens-default", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    import socket

    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("test server did not start") from None
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


async def _step(port: int, rate: float, duration: float, path: str = "/", body: bytes = b"{}"):
    reqs = build_requests("POST", "127.0.0.1", port, path, {}, [body])
    tr = HttpTransport("127.0.0.1", port, reqs, timeout_s=10)
    gen = Generator(tr, LOOP_CLOCK, 1)
    await tr.warm(4)
    w = await gen.rate_step(rate, duration, Arrival.CONSTANT)
    await gen.drain(10)
    await tr.close()
    return w


def test_open_loop_send_rate_within_two_percent_of_the_target(testserver: int) -> None:
    # 400 req/s for 3 s (1,200 requests): the generator uses a fraction of a core at this rate
    w = uvloop.run(_step(testserver, 400.0, 3.0))
    assert w.record.sent == 1200
    assert w.sent / w.duration_s == pytest.approx(400.0, rel=0.02)
    assert w.record.ok == 1200 and w.ok_done / w.duration_s == pytest.approx(400.0, rel=0.02)
    assert w.record.latency.percentile_ms(50) >= 2.0  # the server's 2 ms are in every latency


def test_streamed_answers_give_ttft_tpot_and_tokens(testserver: int) -> None:
    body = b'{"messages": [{"role": "user", "content": "hi"}], "stream": true}'
    w = uvloop.run(_step(testserver, 20.0, 1.0, "/v1/chat/completions", body))
    rec = w.record
    assert rec.ok == 20 and rec.tokens == 20 * 20  # 20 answers of 20 content events each
    # 400 tokens/s: a token every 2.5 ms after the 2 ms of latency; the first is paced too
    assert rec.tpot.percentile_ms(50) == pytest.approx(2.5, abs=0.6)
    assert 2.0 <= rec.ttft.percentile_ms(50) < 20.0
    assert rec.latency.percentile_ms(50) >= 2 + 20 * 2.5 - 3


def test_connection_refused_is_an_error_not_a_hang() -> None:
    async def main():
        port = free_port()
        tr = HttpTransport("127.0.0.1", port, build_requests("POST", "127.0.0.1", port, "/", {}, [b"{}"]))
        gen = Generator(tr, LOOP_CLOCK, 1)
        w = await gen.rate_step(50.0, 0.2, Arrival.CONSTANT)
        drained = await gen.drain(5)
        await tr.close()
        return w, drained

    w, drained = asyncio.run(main())
    assert drained and w.record.sent == 10 and w.record.by_status == {"connect": 10}


def test_requests_past_the_timeout_fail_as_timeouts() -> None:
    async def main():
        from openeas.testserver.app import running
        from openeas.testserver.knobs import Knobs

        async with running(Knobs(latency_ms=2000)) as srv:
            reqs = build_requests("POST", "127.0.0.1", srv.port, "/", {}, [b"{}"])
            tr = HttpTransport("127.0.0.1", srv.port, reqs, timeout_s=0.3)
            gen = Generator(tr, LOOP_CLOCK, 1)
            w = await gen.rate_step(20.0, 0.25, Arrival.CONSTANT)
            await gen.drain(3)
            await tr.close()
            return w

    w = asyncio.run(main())
    assert w.record.by_status == {"timeout": 5} and w.record.ok == 0

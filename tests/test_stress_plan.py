"""The stress plan: the EAS benchmark JSON and options become a validated plan, and every bad
input is a clear error naming the field before any load is sent."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from openeas.stress.plan import (
    MAX_DATA_BYTES,
    Arrival,
    Load,
    Mode,
    PlanError,
    from_eas,
    load_bodies,
    make_plan,
)


def plan(**values: Any):
    return make_plan({"target": "svc", **values})


def test_eas_task_maps_to_the_plan(tmp_path: Path) -> None:
    data = tmp_path / "reqs.jsonl"
    data.write_text('{"a": 1}\n\n{"a": 2}\n')
    task = {
        "base": {"duration": 120, "agentCount": 3},
        "service": {"serviceName": "svc", "requestToken": "ignored"},
        "data": {"path": str(data), "dataType": "json"},
        "http": {"headers": {"X-Tenant": "a"}, "timeout": 2500, "path": "/v1/x"},
        "optional": {
            "mode": "scan",
            "minQPS": 10,
            "maxQPS": 100,
            "qpsGrowthDelta": 10,
            "adjustInterval": 5,
            "maxRT": 250,
            "faultTolerate": 0.02,
            "faultAction": "continue",
        },
    }
    p = make_plan(from_eas(task))
    assert (p.target, p.mode, p.duration_s, p.step_s) == ("svc", Mode.SCAN, 120, 5)
    assert (p.min_qps, p.max_qps, p.qps_growth_delta, p.max_rt_ms) == (10, 100, 10, 250)
    assert p.timeout_s == 2.5  # EAS's http.timeout is in milliseconds
    assert p.fault_tolerate == 0.02 and p.fault_action.value == "continue"
    assert p.headers == {"X-Tenant": "a"} and p.path == "/v1/x"
    assert p.rates() == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert load_bodies(p) == [b'{"a": 1}', b'{"a": 2}']


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        ({"optional": {"minQps": 1}}, "optional.minQps: unknown field"),
        ({"extra": {}}, "extra: unknown section"),
        ({"base": 5}, "base: must be an object"),
        (
            {"service": {"serviceUrl": "http://10.0.0.1/x"}},
            "service.serviceUrl: OpenEAS stress-tests only its own",
        ),
        ({"http": {"timeout": "fast"}}, "http.timeout: must be a number of milliseconds"),
    ],
    ids=["typo", "unknown-section", "section-not-object", "foreign-url", "timeout-not-number"],
)
def test_bad_eas_task(task: dict[str, Any], expected: str) -> None:
    with pytest.raises(PlanError) as err:
        from_eas(task)
    assert any(expected in e for e in err.value.errors), err.value.errors


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"min_qps": 100, "max_qps": 10}, "optional.minQPS: 100 is above optional.maxQPS (10)"),
        ({"min_qps": 0}, "optional.minQPS: input should be greater than 0"),
        ({"step_s": 10, "duration_s": 5}, "optional.adjustInterval: one step (10 s) is longer than base.duration"),
        # 10 → 1000 by 10 is 100 steps of 5 s = 500 s > 60 s
        (
            {"mode": "scan", "min_qps": 10, "max_qps": 1000, "qps_growth_delta": 10, "duration_s": 60},
            "needs 100 steps x 5 s = 500 s, more than base.duration (60 s)",
        ),
        # 4 steps of 5 s at 1000..4000 req/s send 50,000 requests > 10,000
        (
            {"mode": "scan", "min_qps": 1000, "max_qps": 4000, "qps_growth_delta": 1000, "max_requests": 10_000},
            "max_requests: the scan sends about 50000 requests",
        ),
        ({"duration_s": 6}, "base.duration: auto mode needs room for 2 steps of 5 s"),
        ({"duration_s": 7200}, "base.duration: input should be less than or equal to 3600"),
        ({"mode": "sideways"}, "optional.mode: input should be 'auto', 'scan' or 'manual'"),
        ({"fault_tolerate": 2}, "optional.faultTolerate: input should be less than or equal to 1"),
        ({"path": "v1/chat"}, "http.path: must start with '/'"),
        ({"headers": {"Host": "x"}}, "http.headers.Host: set by the generator"),
        ({"headers": {"X-A": "b\r\nEvil: 1"}}, "http.headers.X-A: not a valid header"),
        ({"headers": {"X-A": "b\x00c"}}, "http.headers.X-A: not a valid header"),
        ({"path": "/v1/x HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /"}, "http.path: character ' ' at position 5 is not allowed"),
        ({"path": "/v1/x\r\nX-Evil: 1"}, "http.path: character '\\r' at position 5 is not allowed"),
        ({"path": "/v1/x\nX"}, "http.path: character '\\n' at position 5 is not allowed"),
        ({"path": "/v1/\x00"}, "http.path: character '\\x00' at position 4 is not allowed"),
        ({"path": "/v1/\t"}, "http.path: character '\\t' at position 4 is not allowed"),
        ({"path": "/v1/\x7f"}, "http.path: character '\\x7f' at position 4 is not allowed"),
        ({"path": "/v1/é"}, "http.path: character 'é' at position 4 is not allowed (control characters, spaces and non-ASCII"),
        ({"data_path": "a", "data_content": "b"}, "data: give data.path or data.content, not both"),
        ({"min_concurrency": 8, "max_concurrency": 2}, "min_concurrency: 8 is above max_concurrency (2)"),
    ],
    ids=[
        "min-above-max", "zero-rate", "step-longer-than-duration", "scan-too-long", "scan-over-request-cap",
        "auto-no-room", "duration-over-cap", "unknown-mode", "fault-over-1", "relative-path", "reserved-header",
        "header-injection", "header-nul", "path-space-smuggling", "path-crlf", "path-lf", "path-nul", "path-tab",
        "path-del", "path-non-ascii", "two-data-sources", "concurrency-min-above-max",
    ],
)  # fmt: skip
def test_impossible_settings(values: dict[str, Any], expected: str) -> None:
    with pytest.raises(PlanError) as err:
        plan(**values)
    assert any(expected in e for e in err.value.errors), err.value.errors


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "data.path: no such file"),
        ("", "data.path: holds no request"),
        ('{"a": 1,\n "b": 2}\n', "data.path: line 1 is not one JSON request"),
        ('{"a": 1}\nnot json\n', "data.path: line 2 is not one JSON request"),
        (b"\xff\xfe\x00binary", "data.path: "),
    ],
    ids=["missing", "empty", "pretty-printed-json", "junk-line", "binary"],
)
def test_bad_data_file(tmp_path: Path, content: str | bytes | None, expected: str) -> None:
    path = tmp_path / "data.jsonl"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(PlanError) as err:
        load_bodies(plan(data_path=str(path)))
    assert any(expected in e for e in err.value.errors), err.value.errors


def _fifo(tmp: Path) -> str:
    os.mkfifo(tmp / "data.fifo")
    return str(tmp / "data.fifo")


def _over_the_cap(tmp: Path) -> str:
    path = tmp / "big.jsonl"
    with path.open("wb") as f:  # 64 MiB of lines and one more byte: refused at the cap, while reading
        line = b'{"a": 1}' + b" " * 1015 + b"\n"  # 1 KiB
        f.write(line * (MAX_DATA_BYTES // len(line)) + b"\n")
    return str(path)


@pytest.mark.parametrize(
    ("make_path", "expected"),
    [
        pytest.param(lambda t: str(t), "data.path: {d} is a directory, not a regular file", id="directory"),
        pytest.param(lambda t: "/dev/zero", "data.path: /dev/zero is a device, not a regular file", id="dev-zero"),
        pytest.param(_fifo, "data.path: {d}/data.fifo is a FIFO, not a regular file", id="fifo"),
        pytest.param(_over_the_cap, "data.path: {d}/big.jsonl is larger than 64 MiB", id="over-64MiB"),
    ],
)  # fmt: skip
def test_data_file_that_is_not_a_bounded_regular_file(tmp_path: Path, make_path: Any, expected: str) -> None:
    with pytest.raises(PlanError) as err:
        load_bodies(plan(data_path=make_path(tmp_path)))
    assert err.value.errors == [expected.format(d=tmp_path)]


def test_the_data_cap_is_64MiB() -> None:
    assert MAX_DATA_BYTES == 64 * 1024 * 1024  # docs/stress.md, docs/RELIABILITY.md


@pytest.mark.parametrize(
    ("values", "bodies"),
    [
        ({"data_content": '{"x": 1}\n{"x": 2}'}, [b'{"x": 1}', b'{"x": 2}']),
        ({"data_content": base64.b64encode(b'{"x": 3}\n').decode()}, [b'{"x": 3}']),  # EAS sends base64
        ({"body": '{"prompt": "hi"}'}, [b'{"prompt": "hi"}']),
        ({}, [b"{}"]),
    ],
    ids=["content-lines", "content-base64", "body-template", "default"],
)
def test_bodies(values: dict[str, Any], bodies: list[bytes]) -> None:
    assert load_bodies(plan(**values)) == bodies


def test_openai_paths_default_to_a_streamed_request() -> None:
    p = plan(path="/v1/chat/completions")
    assert p.stream and b'"messages"' in load_bodies(p)[0]


@pytest.mark.parametrize(
    ("values", "levels"),
    [
        ({"mode": "scan", "min_qps": 10, "max_qps": 50, "qps_growth_delta": 20}, [10, 30, 50]),
        ({"mode": "scan", "min_qps": 10, "max_qps": 40, "qps_growth_delta": 20}, [10, 30]),  # 50 > max
        ({"mode": "scan", "min_qps": 0.5, "max_qps": 5.5}, [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5]),
        ({"mode": "manual", "qps": 42}, [42]),
    ],
    ids=["scan", "scan-stops-at-max", "scan-default-ten-deltas", "manual"],
)
def test_rates(values: dict[str, Any], levels: list[float]) -> None:
    assert plan(**values).rates() == pytest.approx(levels)


def test_concurrency_levels_double() -> None:
    p = plan(load="concurrency", min_concurrency=1, max_concurrency=12)
    assert p.load == Load.CONCURRENCY and p.concurrencies() == [1, 2, 4, 8, 12]
    assert plan(arrival="poisson").arrival == Arrival.POISSON

"""The autoscaler's loop on a real store (SQLite in tmp_path) with hand-written fakes for the
gateway's counters and the clocks: desired counts written with their events, the status that
describe shows (also when nothing changed), no-data warnings, the metrics gauges; and the
collectors' windows and parsers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from openeas.autoscaler.loop import Autoscaler, AutoscalerConfig
from openeas.autoscaler.metrics import ColdStarts, ServiceView, aggregate
from openeas.autoscaler.scrape import ReplicaScraper, parse_samples
from openeas.autoscaler.windows import Counter, Gauge
from openeas.kernel.clock import FakeClock
from openeas.spec import parse_spec
from openeas.spec.autoscaling import MetricTarget
from openeas.store import Store
from openeas.telemetry import ControlMetrics
from openeas.telemetry.gateway_stats import GatewayStats, ReplicaSample, ServiceSample, decode_all, encode
from openeas.testserver import ServerThread


@dataclass
class FakeTraffic:
    """The gateway-stats interface, with values the test sets."""

    rate: float | None = 0.0
    in_flight: float | None = 0.0
    held_now: int = 0
    asked: list[tuple[str, float]] = field(default_factory=list)

    def arrival_rate(self, service: str, window_s: float, now: float) -> float | None:
        self.asked.append((service, window_s))
        return self.rate

    def mean_in_flight(self, service: str, window_s: float, now: float) -> float | None:
        return self.in_flight

    def held(self, service: str, now: float) -> int:
        return self.held_now

    def last_seen(self, service: str) -> float | None:
        return 0.0


WALL = 1_704_276_000.0  # a Wednesday, 10:00 UTC


def clock_at_wall() -> FakeClock:
    """The one fake clock, its wall time at WALL (tests call tick() themselves and jump it)."""
    return FakeClock(start=WALL - FakeClock.WALL_OFFSET)


def deploy(store: Store, autoscaling: dict[str, Any], instance: int = 1, **extra: Any) -> None:
    store.create_service(
        parse_spec(
            {
                "metadata": {"name": "svc", "instance": instance},
                "containers": [{"command": "serve --port 8000", "port": 8000}],
                "autoscaling": autoscaling,
                **extra,
            }
        )
    )


POLICY = {"metric": "concurrent_requests", "target": 2, "min_replicas": 1, "max_replicas": 5}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "data")


def scaler(store: Store, traffic: FakeTraffic, clock: FakeClock, woken: list[int]) -> Autoscaler:
    return Autoscaler(
        store,
        traffic=traffic,
        clock=clock,
        wake_reconciler=lambda: woken.append(1),
        cfg=AutoscalerConfig(tick_s=0.1),
    )


async def test_a_change_is_written_with_an_event_and_wakes_the_reconciler(store: Store) -> None:
    deploy(store, POLICY)
    traffic, clock, woken = FakeTraffic(rate=1.5, in_flight=6.0), clock_at_wall(), []
    a = scaler(store, traffic, clock, woken)
    await a.tick()
    # 6 in flight / target 2 = 3 replicas
    assert store.get_service("svc").desired_replicas == 3
    ev = [e for e in store.events("svc") if e.reason == "Autoscaled"]
    assert len(ev) == 1 and "concurrent_requests" in ev[0].message and "scale up 1 → 3" in ev[0].message
    assert woken == [1]
    assert ("svc", 10.0) in traffic.asked  # the default metric window
    # the same load again: no change, no event, but a fresh decision with its reason
    clock.jump(1)
    await a.tick()
    assert len([e for e in store.events("svc") if e.reason == "Autoscaled"]) == 1
    st = a.status("svc")
    assert st is not None and st["decision"]["reason"].endswith("stay at 3 [bounds 1..5]")
    assert st["metrics"][0] | {"unit": ""} == {
        "metric": "concurrent_requests", "value": 6.0, "target": 2.0, "total": 6.0, "unit": "", "recommendation": 3,
        "reading": None,
    }  # 6 in flight over 0 Ready replicas is shown as the total itself; the gateway's: no reading named
    assert st["last_change"]["message"].startswith("concurrent_requests")


async def test_no_data_moves_nothing_and_warns_once(store: Store) -> None:
    deploy(store, POLICY, instance=2)
    traffic, clock, woken = FakeTraffic(rate=None, in_flight=None), clock_at_wall(), []
    a = scaler(store, traffic, clock, woken)
    for _ in range(3):
        await a.tick()
        clock.jump(1)
    assert store.get_service("svc").desired_replicas == 2 and woken == []
    warnings = [e for e in store.events("svc") if e.reason == "AutoscalerNoData"]
    assert len(warnings) == 1 and "no data for concurrent_requests" in warnings[0].message
    st = a.status("svc")
    assert st is not None and st["decision"]["valid"] is False


async def test_metrics_gauges_show_value_target_and_bounds(store: Store) -> None:
    deploy(store, POLICY)
    a = scaler(store, FakeTraffic(rate=1.0, in_flight=4.0), clock_at_wall(), [])
    await a.tick()
    m = ControlMetrics(store)
    m.add_collector(a.collector())
    text = m.render().decode()
    assert 'openeas_autoscaler_metric_value{metric="concurrent_requests",service="svc"} 4.0' in text
    assert 'openeas_autoscaler_metric_target{metric="concurrent_requests",service="svc"} 2.0' in text
    assert 'openeas_autoscaler_recommended_replicas{service="svc"} 2.0' in text
    assert 'openeas_autoscaler_scale_events_total{direction="up",service="svc"} 1.0' in text
    assert 'openeas_desired_replicas{service="svc"} 2.0' in text


@dataclass
class ExplainedCustom:
    """A custom-metric source that says where its total came from (as ReplicaScraper does)."""

    value: float
    how: str
    kinds: tuple[str, ...] = ("custom",)

    async def collect(self, services: Any, now: float) -> None:
        return None

    def total(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> float | None:
        return self.value

    def reading(self, service: ServiceView, metric: MetricTarget, window_s: float, now: float) -> str | None:
        return self.how


async def test_describe_metrics_and_the_event_say_which_reading_scaled(store: Store) -> None:
    deploy(store, {"metric": "custom", "target": 0.5, "min_replicas": 1, "max_replicas": 4,
                   "custom": {"metric": "vllm:num_requests_running"}})  # fmt: skip
    how = "rate(vllm:request_inference_time_seconds_sum)"
    a = Autoscaler(store, traffic=FakeTraffic(rate=1.0, in_flight=0.0), sources=[ExplainedCustom(1.2, how)],
                   clock=clock_at_wall(), cfg=AutoscalerConfig(tick_s=0.1))  # fmt: skip
    await a.tick()
    assert store.get_service("svc").desired_replicas == 3  # ⌈1.2 / 0.5⌉ = 3
    key = "custom:vllm:num_requests_running"
    (ev,) = [e for e in store.events("svc") if e.reason == "Autoscaled"]
    assert ev.message.endswith(f"; {key} read as {how}")
    st = a.status("svc")
    assert st is not None and st["metrics"][0]["reading"] == how
    m = ControlMetrics(store)
    m.add_collector(a.collector())
    line = f'openeas_autoscaler_metric_reading{{metric="{key}",reading="{how}",service="svc"}} 1.0'
    assert line in m.render().decode()


async def test_wake_from_zero_on_a_held_request(store: Store) -> None:
    deploy(store, {**POLICY, "min_replicas": 0}, instance=0)
    traffic, clock = FakeTraffic(), clock_at_wall()
    a = scaler(store, traffic, clock, [])
    await a.tick()
    assert store.get_service("svc").desired_replicas == 0
    traffic.held_now = 1  # the gateway holds one request: activation
    await a.tick()
    assert store.get_service("svc").desired_replicas == 1


async def test_an_update_keeps_the_autoscaled_count(store: Store) -> None:
    deploy(store, POLICY)
    a = scaler(store, FakeTraffic(rate=1.0, in_flight=8.0), clock_at_wall(), [])
    await a.tick()
    assert store.get_service("svc").desired_replicas == 4
    spec = store.version_spec("svc", 1).to_dict()
    spec["autoscaling"]["max_replicas"] = 3
    store.add_version(parse_spec(spec))
    assert store.get_service("svc").desired_replicas == 3  # kept, within the new max (not metadata.instance)


GAUGE = [
    # samples, window, now, expected
    pytest.param([(0, 2.0)], 10, 5, 2.0, id="one-sample-holds"),
    # 0..5 at 2, 5..10 at 6: (2x5 + 6x5) / 10 = 4
    pytest.param([(0, 2.0), (5, 6.0)], 10, 10, 4.0, id="time-weighted"),
    # window [8, 10] is all at 6
    pytest.param([(0, 2.0), (5, 6.0)], 2, 10, 6.0, id="short-window"),
    # covered part only: [3, 4] at 1 and [4, 6] at 4 → (1 + 8) / 3 = 3
    pytest.param([(3, 1.0), (4, 4.0)], 10, 6, 3.0, id="history-shorter-than-window"),
    pytest.param([(0, 2.0), (5, 6.0)], 0, 10, 6.0, id="zero-window-is-last"),
]


@pytest.mark.parametrize(("samples", "window", "now", "expected"), GAUGE)
def test_gauge_mean(samples: list[tuple[float, float]], window: float, now: float, expected: float) -> None:
    g = Gauge()
    for t, v in samples:
        g.add(t, v)
    assert g.mean(window, now) == pytest.approx(expected)


COUNTER = [
    # raw samples, window, now, expected rate
    pytest.param([(0, 100), (10, 150)], 10, 10, 5.0, id="steady"),  # 50 in 10 s
    # restart at t=10: 150 → 20 means 20 counted since; 50 + 20 = 70 over the 10 s covered = 7
    pytest.param([(0, 100), (5, 150), (10, 20)], 20, 10, 7.0, id="restart-no-negative"),
    pytest.param([(0, 100)], 10, 10, None, id="one-sample"),
    # the counter stopped at t=5: at t=20 the 20 s window holds the 50 of [0, 5]: 50/20 = 2.5 (it decays)
    pytest.param([(0, 100), (5, 150)], 20, 20, 2.5, id="stopped-decays"),
]


@pytest.mark.parametrize(("samples", "window", "now", "expected"), COUNTER)
def test_counter_rate(samples: list[tuple[float, float]], window: float, now: float, expected: float | None) -> None:
    c = Counter()
    for t, v in samples:
        c.add(t, v)
    assert c.rate(window, now) == (pytest.approx(expected) if expected is not None else None)


def datagram_stats(
    clock: FakeClock, reports: list[tuple[float, int, int, dict[str, int]]], service: str = "a"
) -> GatewayStats:
    """A real GatewayStats fed as the server feeds it: each report (time s, arrivals, in flight,
    {replica: in flight}) of ``service`` encoded by the gateway's wire format and decoded."""
    stats = GatewayStats(clock.now)
    for t, arrivals, in_flight, replicas in reports:
        rs = {rid: ReplicaSample(n, True) for rid, n in replicas.items()}
        for data in encode("gw", 60.0 + t, {service: ServiceSample(arrivals, in_flight, 0)}, replicas=rs):
            d = decode_all(data)
            stats.observe(d.gateway_id, d.samples, t, uptime_s=d.uptime_s, replicas=d.replicas)
    return stats


def test_gateway_datagrams_turn_into_windows() -> None:
    clock = FakeClock(0.0)
    g = datagram_stats(clock, [(0.0, 15, 3, {"a-1": 2, "a-2": 1}), (2.0, 37, 5, {"a-1": 4, "a-2": 1})])
    # arrivals 15, then 37 → 22 in 2 s = 11/s; in flight 3 over [0, 2) then 5 at 2: a mean of 3
    assert g.arrival_rate("a", 2.0, 2.0) == pytest.approx(11.0)
    assert g.mean_in_flight("a", 2.0, 2.0) == pytest.approx(3.0)
    assert g.mean_in_flight("b", 2.0, 2.0) is None  # no gateway named it: no data, never 0
    assert g.replica_in_flight(2.0) == {"a-1": 4, "a-2": 1}
    assert g.replica_in_flight(2.0 + 60) == {}  # stale: the gateway stopped sending


async def test_the_autoscaler_reads_the_gateway_datagrams(store: Store) -> None:
    """The loop on the server's traffic source: 6 requests in flight for 10 s / target 2 → 3."""
    deploy(store, POLICY)
    clock = clock_at_wall()
    t0 = clock.now()
    stats = datagram_stats(clock, [(t0 + i, 6 * i, 6, {}) for i in range(11)], service="svc")
    clock.jump(10)
    a = Autoscaler(store, traffic=stats, clock=clock, cfg=AutoscalerConfig(tick_s=0.1))
    await a.tick()
    assert store.get_service("svc").desired_replicas == 3
    assert a.status("svc")["metrics"][0]["value"] == pytest.approx(6.0)


def test_parse_samples_with_colons_and_labels() -> None:
    text = 'llamacpp:requests_processing 2\nvllm:num_requests_running{model_name="m 1"} 3\n' \
           'vllm:num_requests_running{model_name="m2"} 4\n# TYPE x gauge\n'
    found = parse_samples(text, {"llamacpp:requests_processing", "vllm:num_requests_running"})
    assert found["llamacpp:requests_processing"] == [("", 2.0)]
    assert sum(v for _, v in found["vllm:num_requests_running"]) == 7.0


@pytest.mark.parametrize(
    ("per", "ready", "how", "expected"),
    [({"a": 1.0, "b": 3.0}, 2, "avg", 4.0), ({"a": 1.0}, 2, "avg", 2.0), ({"a": 1.0, "b": 3.0}, 2, "max", 6.0),
     ({}, 2, "avg", None)],
    ids=["sum", "missing-one-scaled", "max", "none"],  # avg x ready: 2 x 2 = 4; 1 x 2 = 2; max: 3 x 2 = 6
)
def test_aggregate(per: dict[str, float], ready: int, how: str, expected: float | None) -> None:
    assert aggregate(per, ready, how) == expected


def test_cold_start_p90() -> None:
    c = ColdStarts()
    for s in range(1, 11):
        c.observe("svc", float(s))  # 1..10 s
    assert c.p90("svc") == 9.0  # nearest rank: ceil(0.9 x 10) = 9th value
    assert c.p90("other") is None


async def test_replica_scraper_reads_the_test_servers_in_flight_gauge() -> None:
    from openeas.autoscaler.metrics import ReplicaTarget
    from openeas.spec.autoscaling import AutoscalingPolicy

    metric = MetricTarget(kind="custom", target=1, custom_metric="testserver_requests_in_flight")
    policy = AutoscalingPolicy(source="autoscaling", metrics=(metric,), min_replicas=1, max_replicas=2)
    with ServerThread() as srv:
        srv.state.in_flight = 3  # as if three requests were being served
        view = ServiceView("svc", policy, (ReplicaTarget("r1", "127.0.0.1", srv.port, None),))
        s = ReplicaScraper()
        await s.collect([view], 0.0)
        await s.close()
    assert s.total(view, metric, 10.0, 0.0) == 3.0
    assert s.total(ServiceView("svc", policy, ()), metric, 10.0, 0.0) == 0.0  # no Ready replica: no load


class FakeNvml:
    """The few NVML calls NvmlSampler makes: one device, one process using 2 GiB."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"gpu{i}"

    def nvmlDeviceGetComputeRunningProcesses(self, handle: str) -> list[Any]:
        @dataclass
        class Proc:
            pid: int
            usedGpuMemory: int | None

        return [Proc(self.pid, 2 * 1024**3), Proc(1, None)]


def _view(kind: str, pid: int, **extra: Any) -> tuple[ServiceView, MetricTarget]:
    from openeas.autoscaler.metrics import ReplicaTarget
    from openeas.spec.autoscaling import AutoscalingPolicy

    metric = MetricTarget(kind=kind, target=1)
    policy = AutoscalingPolicy(source="autoscaling", metrics=(metric,), min_replicas=1, max_replicas=2)
    return ServiceView("svc", policy, (ReplicaTarget("r1", "127.0.0.1", 1, pid),), **extra), metric


async def test_nvml_sampler_sums_the_replicas_process_tree() -> None:
    import os

    from openeas.autoscaler.process import NvmlSampler

    view, metric = _view("gpu_memory", os.getpid())
    s = NvmlSampler(nvml=FakeNvml(os.getpid()))
    await s.collect([view], 0.0)
    assert s.total(view, metric, 10.0, 0.0) == 2048.0  # 2 GiB in MiB, one Ready replica


async def test_without_nvml_gpu_memory_is_no_data() -> None:
    import os

    from openeas.autoscaler.process import NvmlSampler

    view, metric = _view("gpu_memory", os.getpid())
    s = NvmlSampler()
    s.nvml = None  # as on a machine without a driver
    await s.collect([view], 0.0)
    assert s.total(view, metric, 10.0, 0.0) is None


BURNER = Path(__file__).parent / "fixtures" / "cpu_burner.py"


@pytest.mark.parametrize(
    ("args", "cores", "low", "high"),
    [
        # Half of one core, of a 1-core replica: 50 %; the band is generous (the machine is shared).
        pytest.param(["0.5"], 1.0, 25.0, 75.0, id="half-a-core-of-1"),
        # The same half core of a 2-core replica: 0.5 / 2 = 25 %.
        pytest.param(["0.5"], 2.0, 12.5, 37.5, id="half-a-core-of-2"),
        # The leader idles and its child burns: the process tree is measured whole.
        pytest.param(["0.5", "--child"], 1.0, 25.0, 75.0, id="burning-child"),
    ],
)
async def test_process_sampler_reads_the_cpu_a_replica_burns(
    args: list[str], cores: float, low: float, high: float
) -> None:
    import asyncio
    import os
    import signal
    import subprocess
    import sys
    import time

    from openeas.autoscaler.process import ProcessSampler

    cmd = [sys.executable, str(BURNER), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        view, cpu = _view("cpu", proc.pid, cores=cores)
        s = ProcessSampler()
        await s.collect([view], time.monotonic())
        await asyncio.sleep(2.0)  # the window the share is measured over
        now = time.monotonic()
        await s.collect([view], now)
        used = s.total(view, cpu, 10.0, now)
        assert used is not None and low <= used <= high, used
        mem = s.total(view, MetricTarget(kind="memory", target=1), 10.0, now)
        assert mem is not None and mem > 5.0  # a Python process holds more than 5 MiB
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the child too
        proc.wait()


@pytest.mark.parametrize(
    ("then_policy", "reads"),
    [
        pytest.param(False, 1, id="no-policy-read-once"),
        pytest.param(True, 2, id="a-new-version-with-a-policy-read-and-used"),
    ],
)
async def test_a_version_without_a_policy_is_read_once(store: Store, then_policy: bool, reads: int) -> None:
    store.create_service(
        parse_spec({"metadata": {"name": "svc", "instance": 1}, "containers": [{"command": "serve", "port": 8000}]})
    )
    clock = clock_at_wall()
    a = scaler(store, FakeTraffic(rate=1.0, in_flight=8.0), clock, [])
    calls: list[int] = []
    real = store.version_spec
    store.version_spec = lambda name, version: (calls.append(version), real(name, version))[1]  # type: ignore[method-assign]
    for _ in range(3):
        await a.tick()
        clock.jump(1)
    if then_policy:
        spec = real("svc", 1).to_dict() | {"autoscaling": POLICY}
        store.add_version(parse_spec(spec))
        for _ in range(3):
            await a.tick()
            clock.jump(1)
    assert len(calls) == reads
    assert (a.status("svc") is not None) is then_policy  # 8 in flight / target 2: decided once it has a policy

"""The fidelity check's verdicts on the counters impaird and the agents really write."""

from __future__ import annotations

import json

from enosnet.bench.fidelity import check
from enosnet.results.store import HostMeta, Sample


def shown(late_mean_us: float, late_max_us: float, received: int, dropped: int) -> HostMeta:
    """``impaird.py show`` output for one queue, as the after-run command records it."""
    stats = {"queues": {"0": {"received": received, "dropped": dropped, "reordered": 0, "held_max": 3,
                              "held": 0, "released": received - dropped}},
             "netlink_errors": 0, "held": 0, "time": 1.0,
             "release_late_us": {"mean": late_mean_us, "max": late_max_us, "count": received - dropped}}
    return HostMeta("client-0", "emulation.stats", json.dumps({"applied": True, "stats": stats}), "probe:run")


def test_late_releases_and_excess_drops_are_flagged_and_a_faithful_emulation_is_not() -> None:
    assert check([], duration_s=2, metadata=[shown(80, 900, 10_000, 98)], asked_loss=0.01) == []
    late = check([], duration_s=2, metadata=[shown(2500, 40_000, 10_000, 0)])
    assert late == ["client-0: the emulation released packets late (mean 2.50 ms, worst 40.0 ms)"]
    lossy = check([], duration_s=2, metadata=[shown(10, 100, 10_000, 300)], asked_loss=0.01)
    assert lossy == ["client-0: the emulation dropped 3.00 % of packets, 1 % asked"]


def test_only_the_timed_phase_counts_and_busy_cpus_without_waiting_tasks_are_no_saturation() -> None:
    one_flow = [Sample("c", "cpu", t, 99.0, "%") for t in (1.0, 2.0)]
    one_flow += [Sample("c", "cpu_pressure", t, 3.0, "%") for t in (1.0, 2.0)]
    assert check(one_flow, duration_s=2) == []
    after = [Sample("c", "cpu", 4.0, 100.0, "%"), Sample("c", "cpu_pressure", 4.0, 90.0, "%")]
    assert check(after, duration_s=2) == []  # after the clients ended: not the measurement's problem
    contended = [Sample("c", s.series, s.t, 80.0 if s.series == "cpu_pressure" else s.value, s.unit)
                 for s in one_flow]
    assert check(contended, duration_s=2)[0].startswith("the machine's CPUs were saturated (99 % busy")


def test_a_quota_is_saturated_when_the_kernel_throttled_the_host_not_when_a_short_window_passed_it() -> None:
    def host(use: float, throttled: float) -> list[Sample]:
        return [Sample("c", "cpu_quota_use", t, use, "%") for t in (1.0, 2.0)] + \
               [Sample("c", "cpu_throttled", t, throttled, "%") for t in (1.0, 2.0)]

    assert check(host(112.0, 0.0), duration_s=2) == []  # seen in CI: a light run, never throttled
    assert check(host(97.0, 5.0), duration_s=2) == ["c used its CPU quota (97 % of it, throttled in 5 % of periods)"]
    assert check(host(60.0, 30.0), duration_s=2) == ["c used its CPU quota (60 % of it, throttled in 30 % of periods)"]

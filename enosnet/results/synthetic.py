"""A synthetic experiment written through the store's public write API.

For tests, documentation and trying the report without hosts: an incast sweep
(cc × delay × repetitions, 1 server and 4 clients) whose throughput has a
known built-in difference: ``reno`` is ``effect`` slower than ``cubic`` at
20 ms and equal at 0 ms.

>>> store = ResultsStore.open(":memory:")
>>> exp = fill_synthetic(store, repetitions=2)
>>> len(store.runs(experiment=exp))
8
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from enosnet.results.store import (
    CheckResult,
    ExperimentRecord,
    HostMeta,
    HostRecord,
    Metric,
    ProcessRecord,
    ResultsStore,
    RunRecord,
    Sample,
    run_key,
)

CLIENTS = ("client-0", "client-1", "client-2", "client-3")
SERVER = "server-0"
LINK = 9.4e9  # bit/s shared by the clients at 0 ms


def fill_synthetic(store: ResultsStore, *, effect: float = 0.10, repetitions: int = 5, seed: int = 1,
                   noise: float = 0.02, failed_runs: int = 0, duration: int = 5, forced: bool = False,
                   start_time: float = 1_790_000_000.0) -> int:
    """Write one synthetic experiment and return its id (see the module docstring)."""
    rng = np.random.default_rng(seed)
    checks = [CheckResult("reachable", True, "5 of 5 hosts answer over SSH"),
              CheckResult("clock offset", True, "max |offset| 0.4 ms (bound 5 ms)"),
              CheckResult("netem applied", not forced, "RTT 0.1 ms for delay 20ms" if forced else "RTT 20.3 ms",
                          host="client-0", forced=forced)]
    exp = store.begin_experiment(ExperimentRecord(
        name="incast", file_hash="5e1f0c2a", seed=seed, order="shuffled", started=start_time, checks=checks,
        forced=forced, enosnet_version="0.1.0",
        spec={"driver": "iperf3", "duration": f"{duration}s", "repetitions": repetitions}))
    store.add_hosts(exp, [HostRecord(SERVER, "198.18.0.2", "server", "local")] +
                    [HostRecord(c, f"198.18.0.{3 + i}", "client", "local") for i, c in enumerate(CLIENTS)])
    store.add_metadata(exp, [HostMeta(h, k, v, source) for h in (SERVER, *CLIENTS) for k, v, source in (
        ("kernel", "6.1.0-28-amd64", "uname -r"), ("os", "Debian GNU/Linux 12 (bookworm)", "/etc/os-release"),
        ("mtu", "1500", "ip link"), ("net.ipv4.tcp_congestion_control", "cubic", "sysctl"),
        ("iperf3", "3.12", "iperf3 --version"), ("nic.offload.tso", "on", "ethtool -k"))])
    combos = list(itertools.product(["cubic", "reno"], ["0ms", "20ms"], range(repetitions)))
    order = rng.permutation(len(combos))
    for position, index in enumerate(order):
        cc, delay, rep = combos[int(index)]
        failed = position < failed_runs
        run = _run(rng, cc=cc, delay=delay, rep=rep, position=position, effect=effect, noise=noise,
                   duration=duration, start=start_time + 10 + position * (duration + 2), failed=failed)
        store.record_run(exp, run)
    store.end_experiment(exp, ended=start_time + 20 + len(combos) * (duration + 2))
    return exp


def _run(rng: np.random.Generator, *, cc: str, delay: str, rep: int, position: int, effect: float, noise: float,
         duration: int, start: float, failed: bool) -> RunRecord:
    params = {"cc": cc, "delay": delay}
    mean = LINK / len(CLIENTS) * (0.8 if delay == "20ms" else 1.0) * (1 - effect if cc == "reno" and
                                                                        delay == "20ms" else 1.0)
    skews = rng.uniform(0, 0.002, len(CLIENTS))
    processes = [ProcessRecord(SERVER, "iperf3-server", "server", start - 1, start - 0.99, start + duration + 0.5, 0)]
    processes += [ProcessRecord(c, "iperf3-client", "client", start, start + s, start + s + duration,
                                1 if failed and i == 2 else 0) for i, (c, s) in enumerate(zip(CLIENTS, skews,
                                                                                              strict=True))]
    common: dict[str, Any] = {"key": run_key(params, rep), "params": params, "repetition": rep, "position": position,
              "seed": position, "scheduled_start": start, "started": start + float(skews.min()),
              "ended": start + duration + 0.01, "start_skew": float(skews.max() - skews.min()),
              "processes": processes,
              "metadata": [HostMeta(c, "qdisc", f"netem delay {delay}", "tc qdisc show") for c in CLIENTS] +
                          [HostMeta(h, "kernel", "6.1.0-28-amd64", "uname -r") for h in (SERVER, *CLIENTS)]}
    if failed:
        return RunRecord(**common, status="failed", reason="client-2: iperf3 exited 1: unable to connect")
    metrics, samples = [], []
    run_level = rng.normal(1.0, noise)  # a shared per-run factor: runs differ, not only hosts
    for client in CLIENTS:
        per_second = mean * run_level * rng.normal(1.0, noise / 2, duration)
        samples += [Sample(client, "throughput", float(t + 1), float(v), "bit/s") for t, v in enumerate(per_second)]
        samples += [Sample(client, "cpu", float(t + 1), float(v), "%") for t, v in
                    enumerate(rng.normal(35 if cc == "cubic" else 33, 3, duration))]
        metrics += [Metric(client, "throughput", float(per_second.mean()), "bit/s"),
                    Metric(client, "retransmits", float(rng.poisson(20 if delay == "20ms" else 3)), "packets"),
                    Metric(client, "rtt", float(rng.normal(20.4 if delay == "20ms" else 0.2, 0.05)), "ms")]
    samples += [Sample(SERVER, "cpu", float(t + 1), float(v), "%") for t, v in enumerate(rng.normal(60, 4, duration))]
    return RunRecord(**common, metrics=metrics, samples=samples)

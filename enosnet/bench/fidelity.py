"""Was a run measured on a testbed that kept up? Flags for the run's timed phase, in a reader's words.

A run on hosts that share a machine measures the machine as much as the
network when the CPUs are saturated, when a host used up its CPU quota, or
when the emulation released packets late or dropped more than it was asked
to. Each such finding becomes a flag on the run (kept in the results, shown in
the report beside the affected numbers); ``--strict-fidelity`` fails the run
instead.

>>> from enosnet.results.store import Sample
>>> samples = [Sample("c", "cpu", t, 99.0, "%") for t in (1.0, 2.0)]
>>> samples += [Sample("c", "cpu_pressure", t, 70.0, "%") for t in (1.0, 2.0)]
>>> samples += [Sample("c", "cpu_quota_use", t, 100.0, "%") for t in (1.0, 2.0)]
>>> samples += [Sample("c", "cpu_throttled", t, 60.0, "%") for t in (1.0, 2.0)]
>>> for flag in check(samples, duration_s=2.0):
...     print(flag)
the machine's CPUs were saturated (99 % busy, tasks waited for a CPU 70 % of the time; seen from c)
c used its CPU quota (100 % of it, throttled in 60 % of periods)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enosnet.bench.conditions import STATS_KEY
from enosnet.results.store import HostMeta, Sample


@dataclass(frozen=True)
class Limits:
    """Where a run stops being trusted."""

    machine_busy: float = 95.0   # % of all CPUs, mean over the timed phase
    pressure: float = 20.0       # % of the time some task waited for a CPU (PSI), where the kernel tells
    quota_use: float = 95.0      # % of a host's CPU quota, mean over the timed phase
    throttled: float = 20.0      # % of a host's scheduler periods throttled
    late_mean_ms: float = 1.0    # mean lateness of impaird's releases
    late_max_ms: float = 20.0    # worst lateness of one release


def check(samples: Sequence[Sample], *, duration_s: float, metadata: Sequence[HostMeta] = (),
          asked_loss: float = 0.0, limits: Limits = Limits()) -> list[str]:
    """Why this run's numbers may reflect the testbed rather than the network (empty: nothing found)."""
    timed = [s for s in samples if 0.0 < s.t <= duration_s + 0.5]
    flags: list[str] = []
    # busy CPUs alone are a fast tool doing its job (one flow, one core); saturated means tasks waited for one
    pressure = _means(timed, "cpu_pressure")
    busy = {h: v for h, v in _means(timed, "cpu").items()
            if v >= limits.machine_busy and pressure.get(h, 100.0) >= limits.pressure}
    if busy:
        seen = ", ".join(sorted(busy))
        waited = max((pressure[h] for h in busy if h in pressure), default=None)
        why = "" if waited is None else f", tasks waited for a CPU {waited:.0f} % of the time;"
        flags.append(f"the machine's CPUs were saturated ({max(busy.values()):.0f} % busy{why or ','} "
                     f"seen from {seen})")
    quota, throttled = _means(timed, "cpu_quota_use"), _means(timed, "cpu_throttled")
    for host in sorted(quota):
        # the kernel's throttling is the proof: over short sample windows the mean use can pass 100 % of
        # the quota with no period throttled (a light run whose agent and shell woke together)
        held = throttled.get(host, 0.0)
        if held >= limits.throttled or (quota[host] >= limits.quota_use and held > 0):
            flags.append(f"{host} used its CPU quota ({quota[host]:.0f} % of it, throttled in "
                         f"{throttled.get(host, 0.0):.0f} % of periods)")
    flags += _emulation(metadata, asked_loss, limits)
    return flags


def _means(samples: Iterable[Sample], series: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for s in samples:
        if s.series == series and s.host is not None:
            values.setdefault(s.host, []).append(s.value)
    return {h: sum(v) / len(v) for h, v in values.items()}


def _emulation(metadata: Sequence[HostMeta], asked_loss: float, limits: Limits) -> list[str]:
    """Late releases and excess drops from impaird's counters (``STATS_KEY`` run metadata), per host."""
    flags = []
    for item in sorted(metadata, key=lambda m: m.host):
        if item.key != STATS_KEY:
            continue
        stats = _stats(item.value)
        if stats is None:
            continue
        late = stats.get("release_late_us") or {}
        mean_ms, max_ms = float(late.get("mean") or 0) / 1000, float(late.get("max") or 0) / 1000
        if late.get("count") and (mean_ms > limits.late_mean_ms or max_ms > limits.late_max_ms):
            flags.append(f"{item.host}: the emulation released packets late (mean {mean_ms:.2f} ms, "
                         f"worst {max_ms:.1f} ms)")
        queues = stats.get("queues") or {}
        received = sum(int(q.get("received") or 0) for q in queues.values() if isinstance(q, Mapping))
        dropped = sum(int(q.get("dropped") or 0) for q in queues.values() if isinstance(q, Mapping))
        if received >= 100 and dropped / received > _loss_bound(asked_loss, received):
            flags.append(f"{item.host}: the emulation dropped {100 * dropped / received:.2f} % of packets, "
                         f"{asked_loss * 100:g} % asked")
    return flags


def _loss_bound(asked: float, n: int) -> float:
    """The drop rate beyond which more was dropped than asked: 4 standard errors and half a point above it."""
    return asked + 4 * math.sqrt(max(asked * (1 - asked), 1e-6) / n) + 0.005


def _stats(value: str) -> dict[str, Any] | None:
    try:
        shown = json.loads(value)
    except ValueError:
        return None
    stats = shown.get("stats") if isinstance(shown, dict) else None
    return stats if isinstance(stats, dict) else None

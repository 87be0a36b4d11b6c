"""The agents' own instrumentation: CPU and interface counters sampled at 1 s into each run folder.

Each line of ``samples.jsonl`` is ``{"t": ns, "cpu": [/proc/stat jiffies], "net": {iface: [/proc/net/dev
counters]}, "cg": [CPU ns, periods, throttled periods, quota CPUs], "psi": µs, "udp_drops": datagrams}``
(``udp_drops``: the network namespace's UDP receive-buffer drops so far); consecutive lines give
the machine's CPU use (``cpu``, % of all its CPUs), how long some task waited for a CPU
(``cpu_pressure``, % of the time, from /proc/pressure/cpu), interface rates (bit/s) and, from the host's own
control group, the CPUs it used (``cpu_cgroup``) and, under a quota, how much of the quota it used
(``cpu_quota_use``, %) and how many of its scheduler periods were throttled (``cpu_throttled``, %).

>>> lines = ['{"t": 0, "cpu": [10, 0, 10, 80, 0], "net": {"eth0": [0, 0,0,0,0,0,0,0, 0]}, "cg": [0, 0, 0, 0.5],'
...          ' "psi": 0}',
...          '{"t": 1000000000, "cpu": [30, 0, 30, 140, 0], "net": {"eth0": [125, 0,0,0,0,0,0,0, 250]},'
...          ' "cg": [400000000, 10, 2, 0.5], "psi": 50000}']
>>> for s in parse_agent_samples(lines, host="h", start_ns=0):
...     print(s.series, s.t, s.value)
cpu 1.0 40.0
cpu_pressure 1.0 5.0
cpu_cgroup 1.0 0.4
cpu_quota_use 1.0 80.0
cpu_throttled 1.0 20.0
net_rx 1.0 1000.0
net_tx 1.0 2000.0
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from enosnet.results.store import Metric, Sample

IDLE_FIELDS = (3, 4)  # idle, iowait in /proc/stat's cpu line
RX_BYTES, TX_BYTES = 0, 8


def parse_agent_samples(lines: Iterable[str], *, host: str, start_ns: int | None) -> list[Sample]:
    """CPU use and the busiest interface's receive/transmit rates between consecutive samples."""
    points = [p for p in (_load(line) for line in lines) if p is not None]
    if len(points) < 2:
        return []
    origin = start_ns if start_ns is not None else int(points[0]["t"])
    iface = _busiest(points)
    samples: list[Sample] = []
    for before, after in itertools.pairwise(points):
        dt = (int(after["t"]) - int(before["t"])) / 1e9
        if dt <= 0:
            continue
        t = round((int(after["t"]) - origin) / 1e9, 3)
        cpu = _cpu_percent(before.get("cpu"), after.get("cpu"))
        if cpu is not None:
            samples.append(Sample(host, "cpu", t, cpu, "%"))
        if isinstance(before.get("psi"), int) and isinstance(after.get("psi"), int):
            waited = (after["psi"] - before["psi"]) / 1e6 / dt
            samples.append(Sample(host, "cpu_pressure", t, round(100.0 * min(max(waited, 0.0), 1.0), 2), "%"))
        samples += _group_samples(host, t, dt, before.get("cg"), after.get("cg"))
        if iface is not None:
            rx, tx = _delta(before, after, iface, RX_BYTES), _delta(before, after, iface, TX_BYTES)
            if rx is not None and tx is not None:
                samples.append(Sample(host, "net_rx", t, rx * 8 / dt, "bit/s"))
                samples.append(Sample(host, "net_tx", t, tx * 8 / dt, "bit/s"))
    return samples


def cpu_metric(samples: Iterable[Sample], host: str) -> list[Metric]:
    """The machine's mean CPU use seen from a host over the run and the CPUs the host itself used, as metrics."""
    metrics = []
    for series, name, unit in (("cpu", "cpu_host", "%"), ("cpu_cgroup", "cpu_cgroup", "CPUs")):
        values = [s.value for s in samples if s.series == series and s.host == host]
        if values:
            metrics.append(Metric(host, name, sum(values) / len(values), unit))
    return metrics


def _group_samples(host: str, t: float, dt: float, before: Any, after: Any) -> list[Sample]:
    if not isinstance(before, list) or not isinstance(after, list) or len(before) < 4 or len(after) < 4:
        return []
    used = (after[0] - before[0]) / 1e9 / dt
    if used < 0:
        return []
    samples = [Sample(host, "cpu_cgroup", t, round(used, 4), "CPUs")]
    quota, periods = float(after[3]), after[1] - before[1]
    if quota > 0:
        samples.append(Sample(host, "cpu_quota_use", t, round(100.0 * used / quota, 2), "%"))
        if periods > 0:
            samples.append(Sample(host, "cpu_throttled", t, round(100.0 * (after[2] - before[2]) / periods, 2), "%"))
    return samples


def interface_bytes(path: Path) -> tuple[int, int] | None:
    """Bytes received and sent by the busiest interface between a run's first and last sample.

    The agent samples as a run starts and as it ends, so this is what crossed
    the host's interface during the run: a figure independent of the tool.
    """
    points = _read_points(path)
    if points is None or len(points) < 2:
        return None
    iface = _busiest(points)
    if iface is None:
        return None
    rx, tx = _delta(points[0], points[-1], iface, RX_BYTES), _delta(points[0], points[-1], iface, TX_BYTES)
    return None if rx is None or tx is None else (rx, tx)


def udp_receive_drops(path: Path) -> int | None:
    r"""Datagrams the host's UDP sockets dropped for a full receive buffer between a run's first and last sample.

    Each was lost after the interface counted it, so what its sender sent
    again (QUIC, for one, does) crosses the interface twice.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     samples = Path(folder) / "samples.jsonl"
    ...     _ = samples.write_text('{"t": 0, "udp_drops": 7}\n{"t": 1, "udp_drops": 7}\n{"t": 2, "udp_drops": 19}\n')
    ...     udp_receive_drops(samples)
    12
    """
    points = _read_points(path)
    if points is None:
        return None
    counts = [p.get("udp_drops") for p in points]
    if len(counts) < 2 or not isinstance(counts[0], int) or not isinstance(counts[-1], int):
        return None
    return counts[-1] - counts[0]


def read_agent_samples(path: Path, *, host: str, start_ns: int | None) -> list[Sample]:
    try:
        return parse_agent_samples(path.read_text().splitlines(), host=host, start_ns=start_ns)
    except OSError:
        return []


def _read_points(path: Path) -> list[dict[str, Any]] | None:
    """The samples of a ``samples.jsonl`` (lines that are not one are skipped); None when it cannot be read."""
    try:
        return [p for p in (_load(line) for line in path.read_text().splitlines()) if p is not None]
    except OSError:
        return None


def _load(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("t"), int) else None


def _cpu_percent(before: Any, after: Any) -> float | None:
    if not isinstance(before, list) or not isinstance(after, list) or len(before) != len(after) or len(before) < 5:
        return None
    total = sum(after) - sum(before)
    idle = sum(after[i] - before[i] for i in IDLE_FIELDS)
    return round(100.0 * (total - idle) / total, 2) if total > 0 else None


def _busiest(points: list[dict[str, Any]]) -> str | None:
    first, last = points[0].get("net") or {}, points[-1].get("net") or {}
    moved = {name: _bytes(last.get(name)) - _bytes(first.get(name)) for name in last if name != "lo"}
    return max(moved, key=lambda name: moved[name]) if moved else None


def _bytes(counters: Any) -> int:
    if not isinstance(counters, list) or len(counters) <= TX_BYTES:
        return 0
    return int(counters[RX_BYTES]) + int(counters[TX_BYTES])


def _delta(before: dict[str, Any], after: dict[str, Any], iface: str, index: int) -> int | None:
    a, b = (before.get("net") or {}).get(iface), (after.get("net") or {}).get(iface)
    if not isinstance(a, list) or not isinstance(b, list) or len(a) <= index or len(b) <= index:
        return None
    return int(b[index]) - int(a[index])

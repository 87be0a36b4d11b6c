"""What s2n-netbench's programs print, read as they really print it, and what a scenario promises.

- A driver run with ``TRACE=throughput`` writes one line per second to stderr,
  the time since it started and the rates since the line before
  (``0:00:01.002151 throughput: rx=616.24MBps tx=997Bps``). The line for the
  last partial second is never written (the reporter task is dropped with the
  runtime), so these lines are per-interval samples, not totals.
- A driver that fails prints ``Error: <reason>`` (or a Rust panic) to stderr
  and exits 1.
- A scenario says how many bytes each client receives and sends, unless it
  uses ``receive_all`` or a time-bounded loop.

>>> parse_trace(["0:00:01.000000 throughput: rx=1.50MBps tx=2kBps", "Error: refused"]).error
'Error: refused'
>>> parse_rate("616.24MBps"), parse_rate("0Bps"), parse_rate("1.89GBps")
(616240000.0, 0.0, 1890000000.0)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enosnet.results.store import Sample

TRACE_LINE = re.compile(r"^(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)\s+throughput:\s+rx=(\S+)\s+tx=(\S+)\s*$")
RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKMGTP]?i?)B(?:ps|/s)$")
PREFIX = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
PANIC = re.compile(r"^thread '.*' panicked at")


@dataclass(frozen=True)
class TracePoint:
    """One trace line: seconds since the driver started, and rates (bytes/s) since the line before."""

    t: float
    rx: float
    tx: float


@dataclass
class Trace:
    """A driver's stderr: its throughput lines, and its error line if it failed."""

    points: list[TracePoint] = field(default_factory=list)
    error: str | None = None

    def intervals(self) -> Iterator[tuple[float, float, float]]:
        """Per line: its time, and the bytes received and sent since the line before (rate × interval)."""
        previous = 0.0
        for point in self.points:
            yield point.t, point.rx * (point.t - previous), point.tx * (point.t - previous)
            previous = point.t

    def totals(self) -> tuple[float, float]:
        """Bytes received and sent over the lines written (the last partial second is not among them)."""
        moved = list(self.intervals())
        return sum(rx for _, rx, _ in moved), sum(tx for _, _, tx in moved)


def parse_rate(text: str) -> float:
    """Bytes per second from the driver's rendering (``616.24MBps``, ``997Bps``, ``1.2KiBps``)."""
    match = RATE.match(text)
    if match is None:
        raise ValueError(f"not a rate: {text!r}")
    return float(match.group(1)) * PREFIX[match.group(2)]


def parse_trace(lines: Iterable[str]) -> Trace:
    """The driver's throughput lines and its failure message, from its stderr."""
    out = Trace()
    for line in lines:
        text = line.strip()
        match = TRACE_LINE.match(text)
        if match:
            hours, minutes, seconds, rx, tx = match.groups()
            t = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
            try:
                out.points.append(TracePoint(t, parse_rate(rx), parse_rate(tx)))
            except ValueError:
                continue
        elif out.error is None and (text.startswith("Error:") or PANIC.match(text)):
            out.error = text
    return out


def trace_samples(trace: Trace, *, host: str, offset: float = 0.0) -> list[Sample]:
    """Received and sent throughput (bit/s) per interval, at seconds since the run's start."""
    samples = []
    for point in trace.points:
        t = round(point.t + offset, 3)
        samples += [Sample(host, "throughput", t, point.rx * 8, "bit/s"),
                    Sample(host, "throughput_sent", t, point.tx * 8, "bit/s")]
    return samples


# ── scenarios ───────────────────────────────────────────────────────────────


def scenario_bytes(scenario: Mapping[str, Any], client: int) -> tuple[int | None, int | None]:
    """Bytes client ``client`` receives and sends when it completes its scenario (None: not fixed).

    >>> ops = [{"send": {"stream_id": 0, "bytes": 10}}, {"receive": {"stream_id": 0, "bytes": 1000}}]
    >>> sc = {"clients": [{"scenario": [{"connect": {"client_connection_id": 0}}], "connections": [{"ops": ops}]}]}
    >>> scenario_bytes(sc, 0)
    (1000, 10)
    """
    clients = scenario.get("clients") or []
    if not 0 <= client < len(clients):
        return None, None
    connections = clients[client].get("connections") or []
    rx: int | None = 0
    tx: int | None = 0
    for conn_id in _connects(clients[client].get("scenario") or []):
        if not 0 <= conn_id < len(connections):
            return None, None
        ops = connections[conn_id].get("ops") or []
        rx = _add(rx, _op_bytes(ops, "receive"))
        tx = _add(tx, _op_bytes(ops, "send"))
    return rx, tx


def _connects(ops: Sequence[Any]) -> list[int]:
    found = []
    for op in ops:
        if not isinstance(op, dict):
            continue
        if "connect" in op:
            found.append(int(op["connect"].get("client_connection_id", 0)))
        for thread in (op.get("scope") or {}).get("threads", []):
            found += _connects(thread)
    return found


def _op_bytes(ops: Sequence[Any], kind: str) -> int | None:
    total: int | None = 0
    for op in ops:
        if not isinstance(op, dict) or len(op) != 1:
            continue
        (name, body), = op.items()
        if name == kind:
            total = _add(total, int(body.get("bytes", 0)))
        elif name == f"{kind}_all":
            return None
        elif name == "profile":
            total = _add(total, _op_bytes(body.get("operations") or [], kind))
        elif name == "scope":
            for thread in body.get("threads") or []:
                total = _add(total, _op_bytes(thread, kind))
        elif name == "iterate":
            count = (body.get("value") or {}).get("count", {}).get("amount")
            inner = _op_bytes(body.get("operations") or [], kind)
            if inner and count is None:
                return None  # a loop bounded by time moves as many bytes as it can
            total = _add(total, None if inner is None else inner * int(count or 0))
    return total


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b

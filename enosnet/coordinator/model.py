"""What the coordinator talks about: workers, deadlines, and what agents report (plain data, no I/O)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enosnet.coordinator.agent.wire import DEFAULT_PORT, RunState

Params = Mapping[str, Any] | Callable[["Worker"], Mapping[str, Any]]


@dataclass(frozen=True)
class Worker:
    """One agent in one role; ``index`` is its position in the role (its SERVER_ID / CLIENT_ID)."""

    id: str
    role: str
    address: str
    port: int = DEFAULT_PORT
    index: int = 0


@dataclass(frozen=True)
class Timeouts:
    """Deadlines and retransmission knobs, in seconds.

    ``request`` bounds one request (retransmitted with backoff from ``rto_first``
    up to ``rto_max``) before its agent counts as lost; ``report_slack`` is how
    long past a run's deadline the coordinator waits for completion reports.
    ``per_agent`` widens timeouts of a fan-out by that much per agent (answers
    queue behind each other). The default lead of a scheduled start is
    ``start_in``, or 2.5 times what an ARM fan-out is expected to take when
    that is more: one round of the clock exchanges per agent (ARM is one small
    request, like a clock exchange), measured by ``ready``; before any, what
    the PREPARE fan-out took (an upper bound: PREPARE also makes the processes).
    The floor of 0.25 s leaves a lost ARM time to be sent again (after 4×RTT,
    at least ``rto_min``, plus ``per_agent`` per agent) on a LAN of up to about
    200 agents; a lead that proves too short is retried once with twice as much.
    """

    request: float = 10.0
    rto_first: float = 0.2
    rto_min: float = 0.02
    rto_max: float = 1.0
    ready: float = 30.0
    report_slack: float = 5.0
    start_in: float = 0.25
    arm_margin: float = 0.005
    per_agent: float = 0.001
    clock_samples: int = 5


@dataclass(frozen=True)
class WorkerRecord:
    """What one worker did in one run, as its agent reported it.

    Times are ns since the epoch in the agent's clock; ``offset_ns`` is the
    agent's clock minus the coordinator's, so ``start_ns - offset_ns`` is the
    start in the coordinator's clock. Paths are on the worker's host.
    """

    worker: str
    role: str
    run: str
    action: str
    state: str
    rc: int | None
    error: str | None
    scheduled_ns: int | None
    start_ns: int | None
    start_mono_ns: int | None
    exec_ns: int | None
    end_ns: int | None
    pid: int | None
    run_dir: str | None
    offset_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == RunState.EXITED and self.rc == 0

    @property
    def stdout(self) -> str | None:
        return f"{self.run_dir}/stdout" if self.run_dir else None

    @property
    def stderr(self) -> str | None:
        return f"{self.run_dir}/stderr" if self.run_dir else None

    @property
    def samples(self) -> str | None:
        return f"{self.run_dir}/samples.jsonl" if self.run_dir else None

    @property
    def seconds(self) -> float | None:
        """How long the process ran, from its start to its end (both in the agent's clock)."""
        if self.start_ns is None or self.end_ns is None:
            return None
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def start_coordinator_ns(self) -> int | None:
        if self.start_ns is None:
            return None
        return self.start_ns - (self.offset_ns or 0)

    def __repr__(self) -> str:
        return f"WorkerRecord({self.worker}, {self.run}, {self.state}, rc={self.rc})"


@dataclass
class LinkStats:
    """Datagrams between the coordinator and one agent, as the coordinator saw them."""

    sent: int = 0
    received: int = 0
    retransmitted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


@dataclass(frozen=True)
class AgentStatus:
    """One agent as ``status()`` found it; ``counters`` are the agent's own datagram counters."""

    worker: str
    roles: tuple[str, ...]
    address: str
    port: int
    state: str
    pid: int | None
    offset_ms: float | None
    rtt_ms: float | None
    counters: Mapping[str, Any]
    link: LinkStats
    runs: tuple[Mapping[str, Any], ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"worker": self.worker, "roles": list(self.roles), "address": self.address, "port": self.port,
                "state": self.state, "pid": self.pid, "offset_ms": self.offset_ms, "rtt_ms": self.rtt_ms,
                "counters": dict(self.counters), "link": vars(self.link), "runs": list(self.runs),
                "error": self.error}


@dataclass(frozen=True)
class PairResult:
    """The records of a server group + client group run."""

    servers: list[WorkerRecord]
    clients: list[WorkerRecord]

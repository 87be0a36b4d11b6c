"""The coordinator: drives groups of agents over UDP, with scheduled starts and a quiet timed phase.

>>> workers = [Worker("server-0", "server", "127.0.0.1", 7701), Worker("client-0", "client", "127.0.0.1", 7702)]
>>> coordinator = Coordinator(workers, env_id="demo", secret="0" * 32)
>>> sorted(coordinator.roles)
['client', 'server']
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enosnet.coordinator.agent.wire import (
    ACTIVE,
    DEFAULT_PORT,
    FINISHED,
    FROM_AGENT,
    MAX_ARM_AHEAD_S,
    MAX_DATAGRAM,
    Message,
    MessageType,
    ReplayGuard,
    RunState,
    WireError,
    decode,
    encode,
    env_hash,
    worker_key,
)
from enosnet.errors import ConfigError, CoordinatorError, SyncTimeout, WorkerLost
from enosnet.model import Roles

AGENT_RESTARTED = "agent restarted"
log = logging.getLogger("enosnet.coordinator")
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
    """

    request: float = 10.0
    rto_first: float = 0.2
    rto_min: float = 0.02
    rto_max: float = 1.0
    ready: float = 30.0
    report_slack: float = 5.0
    start_in: float = 0.5
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


class _Link:
    """The coordinator's side of one agent."""

    def __init__(self, worker_id: str, address: str, port: int, *, window_s: float, key: bytes) -> None:
        self.id = worker_id
        self.key = key
        self.addr = (address, port)
        self.guard = ReplayGuard(window_s=window_s)
        self.stats = LinkStats()
        self.offset_ns: int | None = None
        self.raw_offset_ns: int | None = None
        self.rtt_ns: int | None = None

    def rto(self, t: Timeouts) -> float:
        if self.rtt_ns is None:
            return t.rto_first
        return min(max(4 * self.rtt_ns / 1e9, t.rto_min), t.rto_max)


class _Pending:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[tuple[Message, int, int]] = loop.create_future()
        self.sent: dict[int, int] = {}
        self.timer: asyncio.TimerHandle | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Coordinator) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.rejected["socket_error"] = self.owner.rejected.get("socket_error", 0) + 1


class Coordinator:
    """Drives agents: ``ready``, ``start``, ``wait_ready``, ``run``, ``stop``, ``status``, ``collect``.

    Use it as ``async with Coordinator(...) as c:``; ``SyncCoordinator`` wraps it
    for plain scripts. Every call has a deadline and raises ``WorkerLost`` or
    ``SyncTimeout`` naming the hosts.
    """

    def __init__(self, workers: Iterable[Worker], *, env_id: str, secret: str, bind: str = "0.0.0.0",
                 timeouts: Timeouts | None = None, claim: bool = True, replay_window_s: float = 30.0) -> None:
        self.workers = list(workers)
        self.timeouts = timeouts or Timeouts()
        self.env = env_hash(env_id)
        self.bind, self.claim = bind, claim
        self.session = int.from_bytes(os.urandom(8), "big") >> 1
        self.seq = 0
        self.rejected: dict[str, int] = {}
        self.links: dict[str, _Link] = {}
        for worker in self.workers:
            key = worker_key(secret, worker.id).encode()
            link = self.links.setdefault(worker.id, _Link(worker.id, worker.address, worker.port,
                                                          window_s=replay_window_s, key=key))
            if link.addr != (worker.address, worker.port):
                raise ConfigError(f"worker {worker.id}: two addresses ({link.addr} and {worker.address})")
        self.roles: dict[str, list[Worker]] = {}
        self._roles_of: dict[str, tuple[str, ...]] = {}
        for worker in sorted(self.workers, key=lambda w: (w.role, w.index)):
            self.roles.setdefault(worker.role, []).append(worker)
        for worker in self.workers:
            self._roles_of[worker.id] = (*self._roles_of.get(worker.id, ()), worker.role)
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._records: dict[tuple[str, str], WorkerRecord] = {}
        self._delivered: set[tuple[str, str]] = set()
        self._ready: set[tuple[str, str]] = set()
        self._ready_at: dict[tuple[str, str], int] = {}
        self._done_at: dict[tuple[str, str], int] = {}
        self._active: dict[str, str] = {}
        self._deferred: dict[str, list[str]] = {}
        self._quiet = False
        self._round_per_link: float | None = None  # seconds per agent of one request round (from clock rounds)
        self._changed: asyncio.Event | None = None
        self._transport: asyncio.DatagramTransport | None = None

    @classmethod
    def for_roles(cls, roles: Roles, *, env_id: str, secret: str, port: int = DEFAULT_PORT,
                  **options: Any) -> Coordinator:
        """A coordinator for every host of ``roles`` (agent port from ``enosnet_agent_port`` or ``port``)."""
        return cls(workers_from_roles(roles, port=port), env_id=env_id, secret=secret, **options)

    # ── socket ─────────────────────────────────────────────────────────────

    async def open(self) -> Coordinator:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.bind((self.bind, 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self._changed = asyncio.Event()
        return self

    async def close(self) -> None:
        if self._transport is not None:
            self._flush_acks()
            self._transport.close()
            self._transport = None

    async def __aenter__(self) -> Coordinator:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None, "open() the coordinator first"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def _send(self, link: _Link, kind: MessageType, payload: dict[str, Any]) -> tuple[int, int]:
        assert self._transport is not None, "open() the coordinator first"
        self.seq += 1
        ts = time.time_ns()
        data = encode(kind, payload, key=link.key, env=self.env, worker=link.id, session=self.session,
                      seq=self.seq, ts=ts)
        self._transport.sendto(data, link.addr)
        link.stats.sent += 1
        return self.seq, ts

    def _key(self, worker: str) -> bytes | None:
        link = self.links.get(worker)
        return link.key if link is not None else None

    def _on_datagram(self, data: bytes, addr: tuple[Any, int]) -> None:
        t3 = time.time_ns()
        try:
            msg = decode(data, key=self._key, env=self.env)
        except WireError as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            return
        link = self.links.get(msg.worker)
        if link is None or msg.type not in FROM_AGENT:
            reason = "unknown_worker" if link is None else "bad_type"
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            return
        replay = link.guard.check(msg.session, msg.seq, msg.ts, t3)
        if replay:
            link.stats.reject(replay)
            return
        link.stats.received += 1
        if msg.type == MessageType.RESP:
            pending = self._pending.get((link.id, msg.ack))
            if pending is None or pending.future.done():
                return
            t0 = pending.sent[msg.ack]
            unbound = _unbound_reply(msg, self.session, t0, t3)
            if unbound:
                link.stats.reject(unbound)
                return
            pending.future.set_result((msg, t0, t3))
        else:
            self._on_event(link, msg.payload)

    # ── requests ───────────────────────────────────────────────────────────

    async def _request(self, link: _Link, kind: MessageType, payload: dict[str, Any], deadline: float,
                       spread: float = 0.0) -> tuple[Message, int, int]:
        """Send until answered or ``deadline`` (loop time); (reply, t0 of the answered send, t3).

        ``spread`` widens every timeout: in a fan-out to many agents the last
        answers queue behind the first, and retransmitting them early only adds load.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(loop)
        rto = [link.rto(self.timeouts)]

        def transmit() -> None:
            if pending.future.done():
                return
            left = deadline - loop.time()
            if left <= 0:
                pending.future.set_exception(_NoAnswer(link.id))
                return
            seq, t0 = self._send(link, kind, payload)
            if pending.sent:
                link.stats.retransmitted += 1
            pending.sent[seq] = t0
            self._pending[(link.id, seq)] = pending
            pending.timer = loop.call_later(min(rto[0] + spread, left), transmit)
            rto[0] = min(rto[0] * 2, self.timeouts.rto_max)

        transmit()
        try:
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            for seq in pending.sent:
                self._pending.pop((link.id, seq), None)

    async def _fan_out(self, links: Sequence[_Link], kind: MessageType,
                       payload: Callable[[_Link], dict[str, Any]], *, timeout: float,
                       what: str) -> dict[str, Message]:
        """One request per link, concurrently; raises ``WorkerLost`` naming those that never answered."""
        deadline = asyncio.get_running_loop().time() + timeout
        spread = self._spread(len(links))
        results = await asyncio.gather(*(self._request(link, kind, payload(link), deadline, spread)
                                         for link in links), return_exceptions=True)
        lost = [link.id for link, result in zip(links, results, strict=True) if isinstance(result, _NoAnswer)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, _NoAnswer):
                raise result
        if lost:
            raise WorkerLost(lost, f"{what}: no answer within {timeout:g} s from")
        return {link.id: result[0] for link, result in zip(links, results, strict=True)
                if not isinstance(result, BaseException)}

    def _spread(self, fan_out: int) -> float:
        return fan_out * self.timeouts.per_agent

    def _links(self, workers: Iterable[Worker]) -> list[_Link]:
        return list({w.id: self.links[w.id] for w in workers}.values())

    def _role(self, role: str) -> list[Worker]:
        if role not in self.roles:
            raise ConfigError(f"no role {role!r} (roles: {', '.join(sorted(self.roles)) or 'none'})")
        return self.roles[role]

    def _base(self) -> dict[str, Any]:
        return {"claim": True} if self.claim else {}

    # ── clocks ─────────────────────────────────────────────────────────────

    async def ready(self, roles: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
        """Check every agent answers and estimate its clock offset; worker → (offset ms, RTT ms)."""
        workers = [w for r in (roles or list(self.roles)) for w in self._role(r)]
        links = self._links(workers)
        deadline = asyncio.get_running_loop().time() + self.timeouts.request
        spread = self._spread(len(links))
        began = time.monotonic()
        results = await asyncio.gather(*(self._sync_clock(link, deadline, spread) for link in links),
                                       return_exceptions=True)
        lost = [link.id for link, result in zip(links, results, strict=True) if isinstance(result, _NoAnswer)]
        if lost:
            raise WorkerLost(lost, f"ready: no answer within {self.timeouts.request:g} s from")
        self._note_rounds(time.monotonic() - began, len(links))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return {link.id: ((link.offset_ns or 0) / 1e6, (link.rtt_ns or 0) / 1e6) for link in links}

    async def _sync_clock(self, link: _Link, deadline: float, spread: float = 0.0) -> None:
        """NTP-style exchanges; keep the offset of the one with the smallest RTT."""
        best: tuple[int, int] | None = None
        for _ in range(self.timeouts.clock_samples):
            msg, t0, t3 = await self._request(link, MessageType.HELLO, self._base(), deadline, spread)
            t1, t2 = int(msg.payload.get("t1", 0)), msg.ts
            rtt, offset = (t3 - t0) - (t2 - t1), ((t1 - t0) + (t2 - t3)) // 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        assert best is not None
        link.rtt_ns, link.raw_offset_ns = max(best[0], 0), best[1]
        link.offset_ns = _plausible_offset(best[1], link.rtt_ns)

    # ── runs ───────────────────────────────────────────────────────────────

    async def start(self, role: str, action: str, params: Params | None = None, *, run_id: str | None = None,
                    deadline_s: float | None = None) -> str:
        """Start ``action`` now on every worker of ``role`` (a service, usually); returns the run id."""
        workers = self._role(role)
        run_id = run_id or new_run_id(role)
        await self._prepare(workers, run_id, action, params, deadline_s)
        await self._fan_out(self._links(workers), MessageType.ARM, lambda _l: {**self._base(), "run": run_id,
                            "at": 0}, timeout=self.timeouts.request, what=f"start {action}")
        self._active[role] = run_id
        return run_id

    async def wait_ready(self, role: str, *, timeout: float | None = None) -> None:
        """Wait until every worker of ``role`` runs its service and listens on its port."""
        run_id = self._require_active(role)
        workers = self._role(role)
        timeout = self.timeouts.ready if timeout is None else timeout

        def exited() -> list[WorkerRecord]:
            return [r for w in workers if (r := self._records.get((run_id, w.id))) is not None]

        ok = await self._wait_until(lambda: bool(exited()) or all((run_id, w.id) in self._ready for w in workers),
                                    timeout)
        if exited():
            details = "; ".join(f"{r.worker}: {r.state} rc={r.rc} {r.error or ''}".strip() for r in exited())
            raise CoordinatorError(f"{role}: service ended before it was ready ({details}); see stderr in "
                                   f"{exited()[0].run_dir} on the host")
        if not ok:
            late = [w.id for w in workers if (run_id, w.id) not in self._ready]
            raise SyncTimeout(late, f"{role}: not listening within {timeout:g} s")

    async def wait_done(self, role: str, *, timeout: float) -> list[WorkerRecord]:
        """Wait for the run ``start(role, ...)`` began to finish on every worker (jobs started at once)."""
        run_id = self._active.pop(role, None)
        if run_id is None:
            raise ConfigError(f"no run started for role {role!r}: call start({role!r}, ...) first")
        workers = self._role(role)
        await self._wait_until(lambda: self._all_reported(run_id, workers), timeout)
        return await self._conclude(run_id, workers)

    def ready_times(self, run_id: str) -> dict[str, int]:
        """When each worker's ready event for ``run_id`` arrived (coordinator clock, ns since the epoch)."""
        return {worker: at for (run, worker), at in self._ready_at.items() if run == run_id}

    def report_times(self, run_id: str) -> dict[str, int]:
        """When each worker's completion report for ``run_id`` first arrived (coordinator clock, ns)."""
        return {worker: at for (run, worker), at in self._done_at.items() if run == run_id}

    async def run(self, role: str, action: str, params: Params | None = None, *, start_in: float | None = None,
                  deadline_s: float | None = None, run_id: str | None = None) -> list[WorkerRecord]:
        """Start ``action`` on every worker of ``role`` at one scheduled instant and wait for all to finish.

        Between the start and the last completion report the coordinator sends
        nothing. Raises ``WorkerLost`` if agents die or stop answering (the rest
        of the run is stopped first), ``SyncTimeout`` if not all could be armed
        before the start. When neither ``start_in`` nor ``run_id`` is given,
        the lead is an estimate: if it proves too short (a busy machine), the
        run is cancelled everywhere and tried once more, under a new run id,
        with twice the lead.
        """
        if start_in is not None and not 0 <= start_in <= MAX_ARM_AHEAD_S:
            raise ConfigError(f"start_in={start_in:g} s: a start is scheduled 0 to {MAX_ARM_AHEAD_S} s ahead")
        workers = self._role(role)
        links = self._links(workers)
        await self._ensure_clocks(links)
        retry = start_in is None and run_id is None
        scale = 1.0
        while True:
            this_run = run_id or new_run_id(role)
            began = time.monotonic()
            replies = await self._prepare(workers, this_run, action, params, deadline_s)
            deadline = max(float(m.payload.get("deadline_s") or 0) for m in replies.values())
            lead = self._lead(time.monotonic() - began, len(links), start_in) * scale
            start_at = time.time_ns() + int(lead * 1e9)
            try:
                await self._arm_at(links, this_run, start_at)
                break
            except SyncTimeout as exc:
                if not retry or scale > 1.0:
                    raise
                log.warning("run %s: %s after a %.2f s lead; trying again with %.2f s", this_run, exc, lead, 2 * lead)
                scale = 2.0
        run_id = this_run
        self._quiet = True
        try:
            wait_s = (start_at - time.time_ns()) / 1e9 + deadline + self.timeouts.report_slack
            await self._wait_until(lambda: self._all_reported(run_id, workers), wait_s)
        finally:
            self._quiet = False
            self._flush_acks()
        return await self._conclude(run_id, workers)

    def _lead(self, prepare_s: float, links: int, start_in: float | None) -> float:
        """How far ahead to schedule: as asked, else enough for the ARM fan-out to ``links`` agents (see Timeouts)."""
        if start_in is not None:
            return start_in
        arm_s = prepare_s if self._round_per_link is None else self._round_per_link * links
        return max(self.timeouts.start_in, 2.5 * arm_s)

    async def stop(self, role: str, *, timeout: float | None = None) -> list[WorkerRecord]:
        """Stop the service of ``role`` (process groups killed) and return its records."""
        run_id = self._active.pop(role, None)
        if run_id is None:
            return []
        workers = self._role(role)
        await self._fan_out(self._links(workers), MessageType.STOP, lambda _l: {**self._base(), "run": run_id},
                            timeout=self.timeouts.request, what="stop")
        wait_s = self.timeouts.report_slack if timeout is None else timeout
        await self._wait_until(lambda: self._all_reported(run_id, workers), wait_s)
        return await self._conclude(run_id, workers)

    async def stop_all(self, roles: Sequence[str] | None = None, *, timeout: float | None = None) -> list[str]:
        """Stop every run the agents of ``roles`` (default: all) have, whoever started it; returns those stopped.

        For leftovers of a coordinator that died (a killed ``enosnet bench``):
        prepared and armed runs are cancelled, running ones' process groups
        killed. Raises ``WorkerLost`` naming agents that do not answer.
        """
        workers = [w for r in (roles or list(self.roles)) for w in self._role(r)]
        replies = await self._fan_out(self._links(workers), MessageType.STOP, lambda _l: {"claim": True, "all": True},
                                      timeout=self.timeouts.request if timeout is None else timeout,
                                      what="stop all")
        return sorted(str(run) for m in replies.values() for run in (m.payload.get("stopping")
                      or ([m.payload["run"]] if m.payload.get("run") else [])))

    async def run_pair(self, *, servers: str, server_action: str, server_params: Params | None,
                       clients: str, client_action: str, client_params: Params | None,
                       start_in: float | None = None, deadline_s: float | None = None) -> PairResult:
        """Servers started and listening, clients run at one scheduled instant, servers stopped."""
        await self.ready([servers, clients])
        await self.start(servers, server_action, server_params)
        try:
            await self.wait_ready(servers)
            client_records = await self.run(clients, client_action, client_params, start_in=start_in,
                                            deadline_s=deadline_s)
        except BaseException:
            await self._stop_quietly(servers)
            raise
        return PairResult(await self.stop(servers), client_records)

    async def _stop_quietly(self, role: str) -> None:
        with contextlib.suppress(CoordinatorError):
            await self.stop(role)

    def records(self, run_id: str) -> list[WorkerRecord]:
        """Every record received so far for ``run_id``."""
        return [r for (run, _), r in sorted(self._records.items()) if run == run_id]

    async def _prepare(self, workers: Sequence[Worker], run_id: str, action: str, params: Params | None,
                       deadline_s: float | None) -> dict[str, Message]:
        by_link = {w.id: w for w in workers}

        def payload(link: _Link) -> dict[str, Any]:
            worker = by_link[link.id]
            values = dict(params(worker) if callable(params) else (params or {}))
            values.setdefault("index", worker.index)
            body = {**self._base(), "run": run_id, "action": action, "params": values, "timed": True}
            if deadline_s is not None:
                body["deadline_s"] = deadline_s
            return body

        try:
            replies = await self._fan_out(self._links(workers), MessageType.PREPARE, payload,
                                          timeout=self.timeouts.request, what=f"prepare {action}")
        except WorkerLost as exc:  # the others made the run's process: cancel it there
            await self._cancel([link for link in self._links(workers) if link.id not in exc.workers], run_id)
            raise
        refused = {w: m.payload.get("error") for w, m in replies.items() if "state" not in m.payload}
        if refused:
            accepted = [link for link in self._links(workers) if link.id not in refused]
            await self._cancel(accepted, run_id)
            text = "; ".join(f"{w}: {why}" for w, why in sorted(refused.items()))
            raise CoordinatorError(f"agents refused {action}: {text}")
        done = sorted(w for w, m in replies.items() if m.payload["state"] != RunState.READY)
        if done:
            raise CoordinatorError(f"run {run_id} already exists on {', '.join(done)}: nothing started again; "
                                   "use a new run id (or collect() its results)")
        return replies

    async def _ensure_clocks(self, links: Sequence[_Link]) -> None:
        unknown = [link for link in links if link.offset_ns is None]
        if unknown:
            deadline = asyncio.get_running_loop().time() + self.timeouts.request
            spread = self._spread(len(unknown))
            began = time.monotonic()
            results = await asyncio.gather(*(self._sync_clock(link, deadline, spread) for link in unknown),
                                           return_exceptions=True)
            lost = [link.id for link, res in zip(unknown, results, strict=True) if isinstance(res, BaseException)]
            if lost:
                raise WorkerLost(lost, "clock exchange: no answer from")
            self._note_rounds(time.monotonic() - began, len(unknown))

    def _note_rounds(self, elapsed: float, links: int) -> None:
        """Remember what one request round to ``links`` agents cost (``clock_samples`` rounds took ``elapsed``)."""
        if links:
            self._round_per_link = elapsed / max(self.timeouts.clock_samples, 1) / links

    async def _arm_at(self, links: Sequence[_Link], run_id: str, start_at: int) -> None:
        """ARM every link for ``start_at`` (coordinator clock); all must confirm before the start."""
        timeout = (start_at - time.time_ns()) / 1e9 - self.timeouts.arm_margin
        try:
            await self._fan_out(links, MessageType.ARM,
                                lambda link: {**self._base(), "run": run_id, "at": start_at + (link.offset_ns or 0)},
                                timeout=max(timeout, 0.001), what="arm")
        except WorkerLost as exc:
            await self._cancel(links, run_id)
            raise SyncTimeout(exc.workers, "not armed before the scheduled start; run cancelled on the others") \
                from None

    async def _cancel(self, links: Sequence[_Link], run_id: str) -> None:
        with contextlib.suppress(WorkerLost):
            await self._fan_out(links, MessageType.STOP, lambda _l: {**self._base(), "run": run_id},
                                timeout=self.timeouts.request, what="cancel")

    def _all_reported(self, run_id: str, workers: Sequence[Worker]) -> bool:
        return all((run_id, w.id) in self._records for w in workers)

    async def _conclude(self, run_id: str, workers: Sequence[Worker]) -> list[WorkerRecord]:
        """Records of the run; lost or restarted agents raise ``WorkerLost`` after the rest is stopped."""
        missing = [w for w in workers if (run_id, w.id) not in self._records]
        if missing:
            await self._chase(run_id, missing)
            missing = [w for w in workers if (run_id, w.id) not in self._records]
        restarted = [w.id for w in workers if AGENT_RESTARTED in self._error_of(run_id, w.id)]
        if missing or restarted:
            active = [w for w in workers if (run_id, w.id) not in self._records]
            others = [w for w in workers if w not in missing]
            await self._cancel(self._links(others), run_id)
            await self._wait_until(lambda: all((run_id, w.id) in self._records for w in others),
                                   self.timeouts.report_slack)
            lost = sorted({w.id for w in missing} | set(restarted))
            self._delivered.update((run_id, w.id) for w in others)
            raise WorkerLost(lost, f"run {run_id}: {len(lost)} agent(s) lost"
                             f"{' (the rest was stopped)' if active or others else ''}")
        self._delivered.update((run_id, w.id) for w in workers)
        return [self._records[(run_id, w.id)] for w in workers]

    def _error_of(self, run_id: str, worker_id: str) -> str:
        record = self._records.get((run_id, worker_id))
        return (record.error or "") if record is not None else ""

    async def _chase(self, run_id: str, missing: Sequence[Worker]) -> None:
        """Reports are late: ask the silent agents to resend; those that never answer are lost."""
        links = self._links(missing)
        deadline = asyncio.get_running_loop().time() + self.timeouts.request
        payload = {**self._base(), "force": True, "resend": True, "claim": True}
        await asyncio.gather(*(self._request(link, MessageType.STATUS, payload, deadline) for link in links),
                             return_exceptions=True)
        await self._wait_until(lambda: self._all_reported(run_id, missing), min(2.0, self.timeouts.report_slack))

    # ── events from agents ─────────────────────────────────────────────────

    def _on_event(self, link: _Link, payload: dict[str, Any]) -> None:
        event_id = str(payload.get("ev", ""))
        kind = payload.get("kind")
        if kind == "ready":
            key = (str(payload.get("run")), link.id)
            self._ready.add(key)
            self._ready_at.setdefault(key, time.time_ns())
        elif kind == "done" and isinstance(payload.get("rec"), dict):
            record = self._record(link, payload["rec"])
            self._records.setdefault((record.run, link.id), record)
            self._done_at.setdefault((record.run, link.id), time.time_ns())
        else:
            link.stats.reject("bad_event")
            return
        if self._quiet:
            self._deferred.setdefault(link.id, []).append(event_id)
        else:
            self._send(link, MessageType.ACK, {"ev": [event_id]})
        self._bump()

    def _record(self, link: _Link, rec: dict[str, Any]) -> WorkerRecord:
        run_id = str(rec.get("run"))
        roles = self._roles_of.get(link.id, ())
        role = next((r for r, active in self._active.items() if active == run_id), roles[0] if roles else "")
        if run_id.startswith(tuple(f"{r}-" for r in roles)):
            role = run_id.split("-", 1)[0]

        def num(key: str) -> int | None:
            value = rec.get(key)
            return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        run_dir = rec.get("dir")
        if not isinstance(run_dir, str) or not run_dir.endswith(f"/{run_id}"):
            run_dir = None  # cut down to fit a datagram (a very long workdir): no folder beats a wrong one

        return WorkerRecord(worker=link.id, role=role, run=run_id, action=str(rec.get("action")),
                            state=str(rec.get("state")), rc=num("rc"), error=rec.get("error"),
                            scheduled_ns=num("scheduled"), start_ns=num("start_wall"),
                            start_mono_ns=num("start_mono"), exec_ns=num("exec_ns"), end_ns=num("end_wall"),
                            pid=num("pid"), run_dir=run_dir, offset_ns=link.offset_ns)

    def _flush_acks(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for worker_id, events in deferred.items():
            for start in range(0, len(events), 8):
                self._send(self.links[worker_id], MessageType.ACK, {"ev": events[start:start + 8]})

    def _bump(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0 or self._changed is None:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return done()
        return True

    def _require_active(self, role: str) -> str:
        if role not in self._active:
            raise ConfigError(f"no service running for role {role!r}: call start({role!r}, ...) first")
        return self._active[role]

    # ── status and re-attach ───────────────────────────────────────────────

    async def status(self, *, force: bool = False, roles: Sequence[str] | None = None) -> list[AgentStatus]:
        """Every agent's state, clock offset, RTT and datagram counters; never raises for silent agents."""
        if self._quiet and not force:
            raise CoordinatorError("status refused during the timed phase (pass force=True)")
        workers = [w for r in (roles or list(self.roles)) for w in self._role(r)]
        links = self._links(workers)
        deadline = asyncio.get_running_loop().time() + min(self.timeouts.request, 3.0)
        results = await asyncio.gather(*(self._status_one(link, force, deadline) for link in links))
        return list(results)

    async def _status_one(self, link: _Link, force: bool, deadline: float) -> AgentStatus:
        roles = self._roles_of.get(link.id, ())
        try:
            await self._sync_clock(link, deadline)
            msg, _, _ = await self._request(link, MessageType.STATUS, {"force": force}, deadline)
        except _NoAnswer:
            return AgentStatus(link.id, roles, *link.addr, "unreachable", None, None, None, {}, link.stats,
                               error="no answer")
        p = msg.payload
        offset = None if link.offset_ns is None else link.offset_ns / 1e6
        rtt = None if link.rtt_ns is None else link.rtt_ns / 1e6
        if p.get("refused"):
            return AgentStatus(link.id, roles, *link.addr, "busy", None, offset, rtt, {}, link.stats,
                               error=f"refused: {p['refused']}")
        return AgentStatus(link.id, roles, *link.addr, str(p.get("state")), p.get("pid"), offset, rtt,
                           dict(p.get("ctr") or {}), link.stats, tuple(p.get("runs") or ()))

    async def collect(self, *, timeout: float = 30.0) -> list[WorkerRecord]:
        """Re-attach: take over the agents and gather every run they finished but never reported.

        Jobs still active are waited for (up to ``timeout``); services still
        running become the active run of their role (``stop(role)`` ends them).
        Nothing is started again. Returns every record not returned yet.
        """
        links = list(self.links.values())
        payload = {"force": True, "resend": True, "claim": True}
        replies = await self._fan_out(links, MessageType.STATUS, lambda _l: payload,
                                      timeout=self.timeouts.request, what="collect")
        runs = [(worker, run) for worker, msg in replies.items() for run in msg.payload.get("runs") or []
                if isinstance(run, dict)]
        self._adopt_services(runs)
        expected = {(str(run.get("run")), worker) for worker, run in runs
                    if run.get("kind") != "service" or run.get("state") in FINISHED}
        ok = await self._wait_until(lambda: expected <= set(self._records), timeout)
        if not ok:
            late = sorted({worker for run, worker in expected if (run, worker) not in self._records})
            raise SyncTimeout(late, f"collect: runs not finished within {timeout:g} s on")
        fresh = sorted(set(self._records) - self._delivered)
        self._delivered.update(fresh)
        return [self._records[key] for key in fresh]


    def _adopt_services(self, runs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Services found running on re-attach become the active run of their role, so stop(role) works."""
        for worker_id, run in runs:
            if run.get("kind") == "service" and run.get("state") in ACTIVE:
                for worker in self.workers:
                    if worker.id == worker_id:
                        self._active.setdefault(worker.role, str(run.get("run")))


def _unbound_reply(msg: Message, session: int, t0: int, t3: int) -> str | None:
    """Why a reply does not answer the request sent at ``t0`` by this process (None: it does).

    The agent echoes the request's session and send time; its own receive
    (``t1``) and send (``ts``) times must be ordered and its turnaround must fit
    inside the exchange, else the clock offset estimated from it is poison.
    """
    if msg.payload.get("re") != [session, t0]:
        return "unbound_reply"
    t1 = msg.payload.get("t1")
    if t1 is not None and (not isinstance(t1, int) or not 0 <= msg.ts - t1 <= t3 - t0):
        return "bad_timestamps"
    return None


def _plausible_offset(offset: int, rtt: int) -> int:
    """The offset closest to zero that the exchange allows.

    One NTP-style exchange only bounds the true offset to ``offset ± rtt/2``
    (the two legs may be unequal). Hosts with synchronised clocks (NTP, or the
    one kernel clock of local namespace hosts) measured under load would
    otherwise get the asymmetry of their legs as a correction, i.e. as start skew.

    >>> _plausible_offset(5_000_000, 30_000_000), _plausible_offset(-40_000_000, 30_000_000)
    (0, -25000000)
    """
    half = rtt // 2
    if abs(offset) <= half:
        return 0
    return offset - half if offset > 0 else offset + half


class _NoAnswer(Exception):
    def __init__(self, worker: str) -> None:
        self.worker = worker
        super().__init__(worker)


def new_run_id(role: str) -> str:
    """A run id unique across coordinators: role, UTC time, random suffix (at most 48 characters)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{role[:16]}-{stamp}-{os.urandom(3).hex()}"


def workers_from_roles(roles: Roles, *, port: int = DEFAULT_PORT) -> list[Worker]:
    """One ``Worker`` per host and role; the agent port comes from ``enosnet_agent_port`` when set."""
    out = []
    for role, hosts in roles.items():
        for index, host in enumerate(hosts):
            if len(host.name.encode()) > 32:
                raise ConfigError(f"host {host.name}: worker ids are at most 32 bytes; give it a shorter alias")
            out.append(Worker(host.name, role, host.address, int(host.extra.get("enosnet_agent_port", port)),
                              index))
    return out


__all__ = ["MAX_DATAGRAM", "AgentStatus", "Coordinator", "LinkStats", "PairResult", "Timeouts", "Worker",
           "WorkerRecord", "new_run_id", "workers_from_roles"]

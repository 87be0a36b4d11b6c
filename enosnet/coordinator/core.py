"""The coordinator: drives groups of agents over UDP, with scheduled starts and a quiet timed phase.

This is the front: what a caller asks for (``ready``, ``start``, ``run``,
``stop``, ``status``, ``collect``). It sits on three parts: ``channel.py``
(the socket, requests sent until answered, events acknowledged),
``clock.py`` (agents' clock offsets) and ``runs.py`` (what is known of each
run on each agent); ``model.py`` holds the data types.

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
import time
from collections.abc import Iterable, Sequence
from typing import Any

from enosnet.coordinator.agent.wire import (
    ACTIVE,
    DEFAULT_PORT,
    FINISHED,
    MAX_ARM_AHEAD_S,
    MAX_DATAGRAM,
    Message,
    MessageType,
    RunState,
    env_hash,
    worker_key,
)
from enosnet.coordinator.channel import Channel, Link, NoAnswer
from enosnet.coordinator.clock import Clock
from enosnet.coordinator.model import (
    AgentStatus,
    LinkStats,
    PairResult,
    Params,
    Timeouts,
    Worker,
    WorkerRecord,
)
from enosnet.coordinator.runs import RunBook
from enosnet.errors import ConfigError, CoordinatorError, SyncTimeout, WorkerLost
from enosnet.model import Roles

AGENT_RESTARTED = "agent restarted"
log = logging.getLogger("enosnet.coordinator")


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
        self.claim = claim
        self.links: dict[str, Link] = {}
        for worker in self.workers:
            key = worker_key(secret, worker.id).encode()
            link = self.links.setdefault(worker.id, Link(worker.id, worker.address, worker.port,
                                                         window_s=replay_window_s, key=key))
            if link.addr != (worker.address, worker.port):
                raise ConfigError(f"worker {worker.id}: two addresses ({link.addr} and {worker.address})")
        self.roles: dict[str, list[Worker]] = {}
        self._roles_of: dict[str, tuple[str, ...]] = {}
        for worker in sorted(self.workers, key=lambda w: (w.role, w.index)):
            self.roles.setdefault(worker.role, []).append(worker)
        for worker in self.workers:
            self._roles_of[worker.id] = (*self._roles_of.get(worker.id, ()), worker.role)
        self.channel = Channel(self.links, env=env_hash(env_id), timeouts=self.timeouts, bind=bind,
                               on_event=self._on_event)
        self.clock = Clock(self.channel, self.timeouts, self._base)
        self.runs = RunBook(self._roles_of)

    @classmethod
    def for_roles(cls, roles: Roles, *, env_id: str, secret: str, port: int = DEFAULT_PORT,
                  **options: Any) -> Coordinator:
        """A coordinator for every host of ``roles`` (agent port from ``enosnet_agent_port`` or ``port``)."""
        return cls(workers_from_roles(roles, port=port), env_id=env_id, secret=secret, **options)

    # ── socket ─────────────────────────────────────────────────────────────

    async def open(self) -> Coordinator:
        await self.channel.open()
        self.runs.open()
        return self

    async def close(self) -> None:
        self.channel.close()

    async def __aenter__(self) -> Coordinator:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> tuple[str, int]:
        return self.channel.address

    @property
    def rejected(self) -> dict[str, int]:
        """Datagrams refused before any link could be charged with them, by reason."""
        return self.channel.rejected

    def _links(self, workers: Iterable[Worker]) -> list[Link]:
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
        links = self._links(w for r in (roles or list(self.roles)) for w in self._role(r))
        await self.clock.sync(links, what="ready")
        return {link.id: ((link.offset_ns or 0) / 1e6, (link.rtt_ns or 0) / 1e6) for link in links}

    # ── runs ───────────────────────────────────────────────────────────────

    async def start(self, role: str, action: str, params: Params | None = None, *, run_id: str | None = None,
                    deadline_s: float | None = None) -> str:
        """Start ``action`` now on every worker of ``role`` (a service, usually); returns the run id."""
        workers = self._role(role)
        run_id = run_id or new_run_id(role)
        await self._prepare(workers, run_id, action, params, deadline_s)
        await self.channel.fan_out(self._links(workers), MessageType.ARM, lambda _l: {**self._base(), "run": run_id,
                            "at": 0}, timeout=self.timeouts.request, what=f"start {action}")
        self.runs.active[role] = run_id
        return run_id

    async def wait_ready(self, role: str, *, timeout: float | None = None) -> None:
        """Wait until every worker of ``role`` runs its service and listens on its port."""
        run_id = self._require_active(role)
        workers = self._role(role)
        timeout = self.timeouts.ready if timeout is None else timeout

        def exited() -> list[WorkerRecord]:
            return [r for w in workers if (r := self.runs.records.get((run_id, w.id))) is not None]

        ok = await self.runs.wait_until(
            lambda: bool(exited()) or all((run_id, w.id) in self.runs.ready for w in workers), timeout)
        if exited():
            details = "; ".join(f"{r.worker}: {r.state} rc={r.rc} {r.error or ''}".strip() for r in exited())
            raise CoordinatorError(f"{role}: service ended before it was ready ({details}); see stderr in "
                                   f"{exited()[0].run_dir} on the host")
        if not ok:
            late = [w.id for w in workers if (run_id, w.id) not in self.runs.ready]
            raise SyncTimeout(late, f"{role}: not listening within {timeout:g} s")

    async def wait_done(self, role: str, *, timeout: float) -> list[WorkerRecord]:
        """Wait for the run ``start(role, ...)`` began to finish on every worker (jobs started at once)."""
        run_id = self.runs.active.pop(role, None)
        if run_id is None:
            raise ConfigError(f"no run started for role {role!r}: call start({role!r}, ...) first")
        workers = self._role(role)
        await self.runs.wait_until(lambda: self.runs.all_reported(run_id, workers), timeout)
        return await self._conclude(run_id, workers)

    def ready_times(self, run_id: str) -> dict[str, int]:
        """When each worker's ready event for ``run_id`` arrived (coordinator clock, ns since the epoch)."""
        return self.runs.times(self.runs.ready_at, run_id)

    def report_times(self, run_id: str) -> dict[str, int]:
        """When each worker's completion report for ``run_id`` first arrived (coordinator clock, ns)."""
        return self.runs.times(self.runs.done_at, run_id)

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
        await self.clock.sync([link for link in links if link.offset_ns is None], what="clock exchange")
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
        self.channel.quiet = True
        try:
            wait_s = (start_at - time.time_ns()) / 1e9 + deadline + self.timeouts.report_slack
            await self.runs.wait_until(lambda: self.runs.all_reported(run_id, workers), wait_s)
        finally:
            self.channel.quiet = False
            self.channel.flush_acks()
        return await self._conclude(run_id, workers)

    def _lead(self, prepare_s: float, links: int, start_in: float | None) -> float:
        """How far ahead to schedule: as asked, else enough for the ARM fan-out to ``links`` agents (see Timeouts)."""
        if start_in is not None:
            return start_in
        arm_s = prepare_s if self.clock.round_per_link is None else self.clock.round_per_link * links
        return max(self.timeouts.start_in, 2.5 * arm_s)

    async def stop(self, role: str, *, timeout: float | None = None) -> list[WorkerRecord]:
        """Stop the service of ``role`` (process groups killed) and return its records."""
        run_id = self.runs.active.pop(role, None)
        if run_id is None:
            return []
        workers = self._role(role)
        await self.channel.fan_out(self._links(workers), MessageType.STOP, lambda _l: {**self._base(), "run": run_id},
                            timeout=self.timeouts.request, what="stop")
        wait_s = self.timeouts.report_slack if timeout is None else timeout
        await self.runs.wait_until(lambda: self.runs.all_reported(run_id, workers), wait_s)
        return await self._conclude(run_id, workers)

    async def stop_all(self, roles: Sequence[str] | None = None, *, timeout: float | None = None) -> list[str]:
        """Stop every run the agents of ``roles`` (default: all) have, whoever started it; returns those stopped.

        For leftovers of a coordinator that died (a killed ``enosnet bench``):
        prepared and armed runs are cancelled, running ones' process groups
        killed. Raises ``WorkerLost`` naming agents that do not answer.
        """
        workers = [w for r in (roles or list(self.roles)) for w in self._role(r)]
        replies = await self.channel.fan_out(self._links(workers), MessageType.STOP,
                                             lambda _l: {"claim": True, "all": True},
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
        return self.runs.of_run(run_id)

    async def _prepare(self, workers: Sequence[Worker], run_id: str, action: str, params: Params | None,
                       deadline_s: float | None) -> dict[str, Message]:
        by_link = {w.id: w for w in workers}

        def payload(link: Link) -> dict[str, Any]:
            worker = by_link[link.id]
            values = dict(params(worker) if callable(params) else (params or {}))
            values.setdefault("index", worker.index)
            body = {**self._base(), "run": run_id, "action": action, "params": values, "timed": True}
            if deadline_s is not None:
                body["deadline_s"] = deadline_s
            return body

        try:
            replies = await self.channel.fan_out(self._links(workers), MessageType.PREPARE, payload,
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

    async def _arm_at(self, links: Sequence[Link], run_id: str, start_at: int) -> None:
        """ARM every link for ``start_at`` (coordinator clock); all must confirm before the start."""
        timeout = (start_at - time.time_ns()) / 1e9 - self.timeouts.arm_margin
        try:
            await self.channel.fan_out(links, MessageType.ARM,
                                lambda link: {**self._base(), "run": run_id, "at": start_at + (link.offset_ns or 0)},
                                timeout=max(timeout, 0.001), what="arm")
        except WorkerLost as exc:
            await self._cancel(links, run_id)
            raise SyncTimeout(exc.workers, "not armed before the scheduled start; run cancelled on the others") \
                from None

    async def _cancel(self, links: Sequence[Link], run_id: str) -> None:
        with contextlib.suppress(WorkerLost):
            await self.channel.fan_out(links, MessageType.STOP, lambda _l: {**self._base(), "run": run_id},
                                timeout=self.timeouts.request, what="cancel")

    def _all_reported(self, run_id: str, workers: Sequence[Worker]) -> bool:
        return all((run_id, w.id) in self.runs.records for w in workers)

    async def _conclude(self, run_id: str, workers: Sequence[Worker]) -> list[WorkerRecord]:
        """Records of the run; lost or restarted agents raise ``WorkerLost`` after the rest is stopped."""
        missing = [w for w in workers if (run_id, w.id) not in self.runs.records]
        if missing:
            await self._chase(run_id, missing)
            missing = [w for w in workers if (run_id, w.id) not in self.runs.records]
        restarted = [w.id for w in workers if AGENT_RESTARTED in self.runs.error_of(run_id, w.id)]
        if missing or restarted:
            active = [w for w in workers if (run_id, w.id) not in self.runs.records]
            others = [w for w in workers if w not in missing]
            await self._cancel(self._links(others), run_id)
            await self.runs.wait_until(lambda: all((run_id, w.id) in self.runs.records for w in others),
                                   self.timeouts.report_slack)
            lost = sorted({w.id for w in missing} | set(restarted))
            self.runs.delivered.update((run_id, w.id) for w in others)
            raise WorkerLost(lost, f"run {run_id}: {len(lost)} agent(s) lost"
                             f"{' (the rest was stopped)' if active or others else ''}")
        self.runs.delivered.update((run_id, w.id) for w in workers)
        return [self.runs.records[(run_id, w.id)] for w in workers]

    def _error_of(self, run_id: str, worker_id: str) -> str:
        record = self.runs.records.get((run_id, worker_id))
        return (record.error or "") if record is not None else ""

    async def _chase(self, run_id: str, missing: Sequence[Worker]) -> None:
        """Reports are late: ask the silent agents to resend; those that never answer are lost."""
        links = self._links(missing)
        deadline = asyncio.get_running_loop().time() + self.timeouts.request
        payload = {**self._base(), "force": True, "resend": True, "claim": True}
        await asyncio.gather(*(self.channel.request(link, MessageType.STATUS, payload, deadline) for link in links),
                             return_exceptions=True)
        await self.runs.wait_until(lambda: self.runs.all_reported(run_id, missing),
                                   min(2.0, self.timeouts.report_slack))

    # ── events from agents ─────────────────────────────────────────────────

    def _on_event(self, link: Link, payload: dict[str, Any]) -> None:
        if not self.runs.on_event(link, payload):
            link.stats.reject("bad_event")
            return
        self.channel.ack(link, str(payload.get("ev", "")))
        self.runs.bump()

    def _require_active(self, role: str) -> str:
        if role not in self.runs.active:
            raise ConfigError(f"no service running for role {role!r}: call start({role!r}, ...) first")
        return self.runs.active[role]

    # ── status and re-attach ───────────────────────────────────────────────

    async def status(self, *, force: bool = False, roles: Sequence[str] | None = None) -> list[AgentStatus]:
        """Every agent's state, clock offset, RTT and datagram counters; never raises for silent agents."""
        if self.channel.quiet and not force:
            raise CoordinatorError("status refused during the timed phase (pass force=True)")
        workers = [w for r in (roles or list(self.roles)) for w in self._role(r)]
        links = self._links(workers)
        deadline = asyncio.get_running_loop().time() + min(self.timeouts.request, 3.0)
        results = await asyncio.gather(*(self._status_one(link, force, deadline) for link in links))
        return list(results)

    async def _status_one(self, link: Link, force: bool, deadline: float) -> AgentStatus:
        roles = self._roles_of.get(link.id, ())
        try:
            await self.clock.sync_one(link, deadline)
            msg, _, _ = await self.channel.request(link, MessageType.STATUS, {"force": force}, deadline)
        except NoAnswer:
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
        replies = await self.channel.fan_out(links, MessageType.STATUS, lambda _l: payload,
                                      timeout=self.timeouts.request, what="collect")
        runs = [(worker, run) for worker, msg in replies.items() for run in msg.payload.get("runs") or []
                if isinstance(run, dict)]
        self._adopt_services(runs)
        expected = {(str(run.get("run")), worker) for worker, run in runs
                    if run.get("kind") != "service" or run.get("state") in FINISHED}
        ok = await self.runs.wait_until(lambda: expected <= set(self.runs.records), timeout)
        if not ok:
            late = sorted({worker for run, worker in expected if (run, worker) not in self.runs.records})
            raise SyncTimeout(late, f"collect: runs not finished within {timeout:g} s on")
        fresh = sorted(set(self.runs.records) - self.runs.delivered)
        self.runs.delivered.update(fresh)
        return [self.runs.records[key] for key in fresh]


    def _adopt_services(self, runs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Services found running on re-attach become the active run of their role, so stop(role) works."""
        for worker_id, run in runs:
            if run.get("kind") == "service" and run.get("state") in ACTIVE:
                for worker in self.workers:
                    if worker.id == worker_id:
                        self.runs.active.setdefault(worker.role, str(run.get("run")))


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


__all__ = ["MAX_DATAGRAM", "AgentStatus", "Coordinator", "LinkStats", "PairResult", "Params", "Timeouts", "Worker",
           "WorkerRecord", "new_run_id", "workers_from_roles"]

"""The coordinator's transport: one UDP socket, authenticated datagrams, requests sent until answered.

A ``Channel`` holds one ``Link`` per agent (its key, address, replay guard,
RTT and counters), matches replies to the requests waiting for them, hands
every other datagram (an agent's event) to its ``on_event``, and
acknowledges events — or, while ``quiet`` (a timed phase), keeps the
acknowledgements for ``flush_acks``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from enosnet.coordinator.agent.wire import (
    FROM_AGENT,
    Message,
    MessageType,
    ReplayGuard,
    WireError,
    decode,
    encode,
)
from enosnet.coordinator.model import LinkStats, Timeouts
from enosnet.errors import WorkerLost

EventHandler = Callable[["Link", dict[str, Any]], None]


class Link:
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


class NoAnswer(Exception):
    """An agent did not answer a request before its deadline."""

    def __init__(self, worker: str) -> None:
        self.worker = worker
        super().__init__(worker)


class _Pending:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[tuple[Message, int, int]] = loop.create_future()
        self.sent: dict[int, int] = {}
        self.timer: asyncio.TimerHandle | None = None


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: Channel) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.owner.received(data)

    def error_received(self, exc: Exception) -> None:
        self.owner.rejected["socket_error"] = self.owner.rejected.get("socket_error", 0) + 1


class Channel:
    """Requests to agents and their events, over one socket bound to ``bind``."""

    def __init__(self, links: dict[str, Link], *, env: bytes, timeouts: Timeouts, bind: str,
                 on_event: EventHandler) -> None:
        self.links, self.env, self.timeouts, self.bind = links, env, timeouts, bind
        self.on_event = on_event
        self.session = int.from_bytes(os.urandom(8), "big") >> 1
        self.seq = 0
        self.rejected: dict[str, int] = {}
        self.quiet = False  # a timed phase: acknowledgements wait for flush_acks
        self._deferred: dict[str, list[str]] = {}
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.bind((self.bind, 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport

    def close(self) -> None:
        if self._transport is not None:
            self.flush_acks()
            self._transport.close()
            self._transport = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None, "open() the coordinator first"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send(self, link: Link, kind: MessageType, payload: dict[str, Any]) -> tuple[int, int]:
        """One datagram to ``link``; its (seq, send time)."""
        assert self._transport is not None, "open() the coordinator first"
        self.seq += 1
        ts = time.time_ns()
        data = encode(kind, payload, key=link.key, env=self.env, worker=link.id, session=self.session,
                      seq=self.seq, ts=ts)
        self._transport.sendto(data, link.addr)
        link.stats.sent += 1
        return self.seq, ts

    def ack(self, link: Link, event_id: str) -> None:
        """Acknowledge one event now, or after the timed phase when ``quiet``."""
        if self.quiet:
            self._deferred.setdefault(link.id, []).append(event_id)
        else:
            self.send(link, MessageType.ACK, {"ev": [event_id]})

    def flush_acks(self) -> None:
        deferred, self._deferred = self._deferred, {}
        for worker_id, events in deferred.items():
            for start in range(0, len(events), 8):
                self.send(self.links[worker_id], MessageType.ACK, {"ev": events[start:start + 8]})

    def _key(self, worker: str) -> bytes | None:
        link = self.links.get(worker)
        return link.key if link is not None else None

    def received(self, data: bytes) -> None:
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
            unbound = unbound_reply(msg, self.session, t0, t3)
            if unbound:
                link.stats.reject(unbound)
                return
            pending.future.set_result((msg, t0, t3))
        else:
            self.on_event(link, msg.payload)

    async def request(self, link: Link, kind: MessageType, payload: dict[str, Any], deadline: float,
                      spread: float = 0.0) -> tuple[Message, int, int]:
        """Send until answered or ``deadline`` (loop time); (reply, t0 of the answered send, t3).

        ``spread`` widens every timeout: in a fan-out to many agents the last
        answers queue behind the first, and retransmitting them early only adds load.
        Raises ``NoAnswer`` at the deadline.
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(loop)
        rto = [link.rto(self.timeouts)]

        def transmit() -> None:
            if pending.future.done():
                return
            left = deadline - loop.time()
            if left <= 0:
                pending.future.set_exception(NoAnswer(link.id))
                return
            seq, t0 = self.send(link, kind, payload)
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

    async def fan_out(self, links: Sequence[Link], kind: MessageType, payload: Callable[[Link], dict[str, Any]], *,
                      timeout: float, what: str) -> dict[str, Message]:
        """One request per link, concurrently; raises ``WorkerLost`` naming those that never answered."""
        deadline = asyncio.get_running_loop().time() + timeout
        spread = self.spread(len(links))
        results = await asyncio.gather(*(self.request(link, kind, payload(link), deadline, spread)
                                         for link in links), return_exceptions=True)
        raise_lost(links, results, f"{what}: no answer within {timeout:g} s from")
        return {link.id: result[0] for link, result in zip(links, results, strict=True)
                if not isinstance(result, BaseException)}

    def spread(self, fan_out: int) -> float:
        return fan_out * self.timeouts.per_agent


def raise_lost(links: Sequence[Link], results: Sequence[object], message: str) -> None:
    """After a gather of requests: ``WorkerLost`` naming the links that did not answer; any other error as is."""
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, NoAnswer):
            raise result
    lost = [link.id for link, result in zip(links, results, strict=True) if isinstance(result, NoAnswer)]
    if lost:
        raise WorkerLost(lost, message)


def unbound_reply(msg: Message, session: int, t0: int, t3: int) -> str | None:
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

"""The agent's socket: authenticated datagrams in and out, replays refused, everything counted.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any, Tuple  # noqa: UP035 (Python 3.8 hosts)

from .wire import MAX_DATAGRAM, REQUESTS, Message, MessageType, ReplayGuard, WireError, decode, encode, env_hash, fit

Addr = Tuple[str, int]  # noqa: UP006 (a runtime alias: tuple[...] fails on Python 3.8 hosts)
log = logging.getLogger("enosnet.agent")


class RateLimitedLog:
    """At most one log line per reason and interval; says how many were suppressed."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, reason: str, text: str) -> None:
        now = time.monotonic()
        if now - self._last.get(reason, -1e9) < self.interval_s:
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return
        more = self._suppressed.pop(reason, 0)
        self._last[reason] = now
        log.warning("%s%s", text, f" ({more} more suppressed)" if more else "")


class Endpoint:
    """One agent's UDP socket: requests for ``worker_id`` that pass the MAC and the replay guard come in."""

    def __init__(self, worker_id: str, key: bytes, *, env_id: str, replay_window_s: float,
                 log_interval_s: float) -> None:
        self.worker_id, self.key = worker_id, key
        self.env = env_hash(env_id)
        self.session = int.from_bytes(os.urandom(8), "big") >> 1
        self.seq = 0
        self.guard = ReplayGuard(window_s=replay_window_s)
        self.counters: dict[str, Any] = {"rx": 0, "tx": 0, "retx": 0, "refused": 0, "truncated": 0, "drop": {}}
        self.rlog = RateLimitedLog(log_interval_s)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def bind(self, address: str, port: int) -> None:
        # no SO_REUSEADDR: with it a second agent could bind the same UDP port and take half the datagrams
        try:
            self.sock.bind((address, port))
        except OSError as exc:  # socket.gaierror included: a name that does not resolve here
            if not isinstance(exc, socket.gaierror) and exc.errno != errno.EADDRNOTAVAIL:
                raise
            log.warning("bind address %s is not an address of this host (%s); listening on all interfaces",
                        address, exc.strerror or exc)
            self.sock.bind(("0.0.0.0", port))
        self.sock.setblocking(False)

    def close(self) -> None:
        self.sock.close()

    def receive(self) -> Iterator[tuple[Message, Addr, int]]:
        """The valid requests waiting on the socket (at most 256 datagrams read), with their arrival time."""
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM * 2)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.drop("recv_error", None, str(exc))
                continue
            t1 = time.time_ns()
            msg = self._check(data, addr, t1)
            if msg is not None:
                yield msg, addr, t1

    def _check(self, data: bytes, addr: Addr, t1: int) -> Message | None:
        self.counters["rx"] += 1
        try:
            msg = decode(data, key=self.key, env=self.env)
        except WireError as exc:
            self.drop(exc.reason, addr, str(exc))
            return None
        if msg.worker != self.worker_id:
            self.drop("wrong_worker", addr, msg.worker)
            return None
        if msg.type not in REQUESTS:
            self.drop("bad_type", addr, msg.type.name)
            return None
        reason = self.guard.check(msg.session, msg.seq, msg.ts, t1)
        if reason:
            self.drop(reason, addr, f"seq {msg.seq}")
            return None
        return msg

    def drop(self, reason: str, addr: Addr | None, detail: str) -> None:
        drops = self.counters["drop"]
        drops[reason] = drops.get(reason, 0) + 1
        self.rlog.warning(reason, f"dropped datagram from {addr}: {detail}")

    def send(self, kind: MessageType, payload: dict[str, Any], addr: Addr, ack: int = 0) -> None:
        """Send one datagram; a payload too large for one (many runs, a long path) is cut down, never fatal."""
        cut = fit(payload)
        if cut is not payload:
            self.counters["truncated"] += 1
            self.rlog.warning("truncated", f"{kind.name} to {addr} cut down to fit one datagram")
            payload = cut
        self.seq += 1
        data = encode(kind, payload, key=self.key, env=self.env, worker=self.worker_id,
                      session=self.session, seq=self.seq, ack=ack)
        try:
            self.sock.sendto(data, addr)
            self.counters["tx"] += 1
        except OSError as exc:
            self.drop("send_error", addr, str(exc))

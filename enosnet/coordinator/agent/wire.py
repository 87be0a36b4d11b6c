"""The wire format: one authenticated message per UDP datagram.

Stdlib-only and Python 3.8 compatible: this module ships inside the agent
zipapp. Layout (network byte order)::

    magic    4s   b"ENSN"
    version  B    1
    type     B    message type (HELLO, PREPARE, ... see ``MessageType``)
    flags    B    FLAG_ZLIB: payload is zlib-compressed JSON
    reserved B    0
    env      8s   first 8 bytes of sha256(env id)
    worker   32s  the agent's worker id, NUL-padded (target of a request, sender of a reply)
    session  Q    random per sender process: replay state is kept per session
    seq      Q    sender's sequence number, +1 per datagram (retransmissions get new numbers)
    ack      Q    the seq this datagram answers (0 when none)
    ts       q    send time, wall clock, ns since the epoch
    length   H    payload length
    payload       JSON object (UTF-8), optionally zlib-compressed
    tag      32s  HMAC-SHA256 over everything before it, keyed by the worker's key (``worker_key``)

A datagram is at most ``MAX_DATAGRAM`` (1200) bytes.

>>> key = b"secret"
>>> raw = encode(MessageType.HELLO, {}, key=key, env=env_hash("demo"), worker="w1", session=7, seq=1)
>>> msg = decode(raw, key=key, env=env_hash("demo"))
>>> (msg.type, msg.worker, msg.seq)
(<MessageType.HELLO: 1>, 'w1', 1)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

MAGIC = b"ENSN"
VERSION = 1
MAX_DATAGRAM = 1200
HEADER = struct.Struct("!4sBBBB8s32sQQQqH")
TAG_SIZE = 32
MAX_PAYLOAD = MAX_DATAGRAM - HEADER.size - TAG_SIZE
FLAG_ZLIB = 0x01
COMPRESS_OVER = 400
MAX_INFLATED = 16384
MAX_WORKER_ID = 32
DEFAULT_PORT = 7700  # the agents' UDP port unless a config says otherwise (also the role's enosnet_agent_port)
MAX_ARM_AHEAD_S = 600  # an ARM may schedule its start at most this far ahead (the agent then holds real-time priority)


class MessageType(enum.IntEnum):
    """What a datagram is. Requests go coordinator → agent, RESP/EVENT agent → coordinator."""

    HELLO = 1      # clock exchange and liveness; answered with the receive time
    PREPARE = 2    # validate an action and its parameters, create the run: ready
    ARM = 3        # start the prepared run at a time in the agent's clock (0: now)
    STOP = 4       # stop a run: process group SIGTERM, then SIGKILL after a grace
    STATUS = 5     # agent state, runs, counters (refused during a timed phase unless forced)
    ACK = 6        # acknowledges agent events (payload: event ids); never answered
    RESP = 16      # the answer to a request (ack = the request's seq)
    EVENT = 17     # agent-initiated: a run is ready or done; retransmitted until ACKed


class RunState(str, enum.Enum):  # noqa: UP042  (the agent runs on Python 3.8: no StrEnum)
    """A run's state: the same words in the agent, its state file, its replies and the coordinator."""

    READY = "ready"      # prepared: its parameters are checked, it waits for an ARM
    ARMED = "armed"      # its start instant is set
    RUNNING = "running"  # its process runs
    EXITED = "exited"    # its process ended by itself (``rc`` says how)
    STOPPED = "stopped"  # stopped by a STOP, a disarm or the agent's shutdown
    FAILED = "failed"    # it could not start, or was lost

    def __str__(self) -> str:  # the word itself on every Python (3.11 changed what str() of a mixin gives)
        return str(self.value)


FINISHED = (RunState.EXITED, RunState.STOPPED, RunState.FAILED)
ACTIVE = (RunState.ARMED, RunState.RUNNING)
IDLE = "idle"  # a worker's status when it has no run left to report


REQUESTS = frozenset({MessageType.HELLO, MessageType.PREPARE, MessageType.ARM, MessageType.STOP,
                      MessageType.STATUS, MessageType.ACK})
FROM_AGENT = frozenset({MessageType.RESP, MessageType.EVENT})


class WireError(Exception):
    """A datagram was dropped; ``reason`` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class Message:
    """One decoded, authenticated datagram."""

    __slots__ = ("ack", "flags", "payload", "seq", "session", "ts", "type", "worker")

    def __init__(self, type: MessageType, worker: str, session: int, seq: int, ack: int, ts: int,
                 payload: dict[str, Any], flags: int = 0) -> None:
        self.type = type
        self.worker = worker
        self.session = session
        self.seq = seq
        self.ack = ack
        self.ts = ts
        self.payload = payload
        self.flags = flags

    def __repr__(self) -> str:
        return f"Message({self.type.name}, {self.worker}, seq={self.seq}, ack={self.ack})"


def env_hash(env_id: str) -> bytes:
    """The 8-byte environment id carried in every header."""
    return hashlib.sha256(env_id.encode()).digest()[:8]


def worker_key(secret: str, worker: str) -> str:
    """One worker's key, derived from the environment's secret and its id (what its agent config holds).

    A host that is compromised, or a driver under test running as root, learns
    its own agent's key only: it can neither command other agents nor forge
    their reports. Ansible's ``hash('sha256')`` filter derives the same.

    >>> worker_key("s" * 32, "client-0") == worker_key("s" * 32, "client-1")
    False
    """
    return hashlib.sha256(f"{secret}:{worker}".encode()).hexdigest()


def _body(payload: dict[str, Any]) -> tuple[bytes, int]:
    body = json.dumps(payload, separators=(",", ":")).encode()
    if len(body) > COMPRESS_OVER:
        return zlib.compress(body, 6), FLAG_ZLIB
    return body, 0


def fits(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` fits one datagram."""
    return len(_body(payload)[0]) <= MAX_PAYLOAD


def fit(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` itself when it fits one datagram, else a copy cut down until it does.

    The largest string or list is halved until the payload fits, so short
    fields (ids, states, return codes) survive; ``"truncated": true`` says
    something was cut. What cannot be cut at all becomes
    ``{"truncated": true}`` with the payload's short top-level fields.

    >>> noise = "".join(hashlib.sha256(bytes([i])).hexdigest() for i in range(100))  # compression cannot help
    >>> cut = fit({"ev": "r1:done", "dir": noise})
    >>> cut["ev"], cut["truncated"], fits(cut), len(cut["dir"]) < len(noise)
    ('r1:done', True, True, True)
    """
    if fits(payload):
        return payload
    out: dict[str, Any] = json.loads(json.dumps(payload))
    out["truncated"] = True
    while not fits(out):
        if not _halve_largest(out):
            short = {k: v for k, v in payload.items() if isinstance(v, (int, float, bool)) or
                     (isinstance(v, str) and len(v) <= 64)}
            return {**short, "truncated": True}
    return out


def _halve_largest(value: dict[str, Any]) -> bool:
    """Halve the largest string (to at least 16 characters) or list found in ``value``; False when none can be."""
    best: tuple[int, Any, Any] | None = None
    stack: list[Any] = [value]
    while stack:
        container = stack.pop()
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, item in items:
            if isinstance(item, (dict, list)):
                stack.append(item)
            cuttable = (isinstance(item, str) and len(item) > 16) or (isinstance(item, list) and len(item) > 1)
            size = len(json.dumps(item)) if cuttable else 0
            if cuttable and (best is None or size > best[0]):
                best = (size, container, key)
    if best is None:
        return False
    _, container, key = best
    item = container[key]
    container[key] = item[: max(16, len(item) // 2)] if isinstance(item, str) else item[: len(item) // 2]
    return True


def encode(type: MessageType, payload: dict[str, Any], *, key: bytes, env: bytes, worker: str,
           session: int, seq: int, ack: int = 0, ts: int | None = None) -> bytes:
    """One datagram; raises ``ValueError`` when the payload does not fit (``fit`` cuts one down)."""
    body, flags = _body(payload)
    if len(body) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(body)} bytes exceeds {MAX_PAYLOAD}")
    name = worker.encode()
    if len(name) > MAX_WORKER_ID:
        raise ValueError(f"worker id {worker!r} is longer than {MAX_WORKER_ID} bytes")
    head = HEADER.pack(MAGIC, VERSION, int(type), flags, 0, env, name, session, seq, ack,
                       time.time_ns() if ts is None else ts, len(body))
    data = head + body
    return data + hmac.new(key, data, hashlib.sha256).digest()


def decode(data: bytes, *, key: bytes | Callable[[str], bytes | None], env: bytes) -> Message:
    """Parse and authenticate one datagram; raises ``WireError`` naming why it was dropped.

    ``key`` is the key, or gives the key of the worker the header names
    (None: a worker this side does not know).
    """
    if len(data) > MAX_DATAGRAM:
        raise WireError("oversized", f"{len(data)} bytes")
    if len(data) < HEADER.size + TAG_SIZE:
        raise WireError("truncated", f"{len(data)} bytes")
    magic, version, mtype, flags, _, denv, name, session, seq, ack, ts, length = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad_magic")
    if version != VERSION:
        raise WireError("bad_version", str(version))
    if length != len(data) - HEADER.size - TAG_SIZE:
        raise WireError("truncated", "length field does not match the datagram")
    body_end = len(data) - TAG_SIZE
    if callable(key):
        found = key(_worker_name(name))
        if found is None:
            raise WireError("unknown_worker", _worker_name(name))
        key = found
    expected = hmac.new(key, data[:body_end], hashlib.sha256).digest()
    if not hmac.compare_digest(expected, data[body_end:]):
        raise WireError("bad_mac")
    if denv != env:
        raise WireError("wrong_env")
    try:
        kind = MessageType(mtype)
    except ValueError:
        raise WireError("bad_type", str(mtype)) from None
    return Message(kind, _worker_name(name), session, seq, ack, ts,
                   _payload(data[HEADER.size:body_end], flags), flags)


def _worker_name(raw: bytes) -> str:
    try:
        return raw.rstrip(b"\0").decode()
    except UnicodeDecodeError:
        raise WireError("bad_payload", "worker id is not UTF-8") from None


def _payload(body: bytes, flags: int) -> dict[str, Any]:
    if flags & ~FLAG_ZLIB:
        raise WireError("bad_payload", f"unknown flags {flags:#x}")
    try:
        if flags & FLAG_ZLIB:
            inflater = zlib.decompressobj()
            body = inflater.decompress(body, MAX_INFLATED)
            if inflater.unconsumed_tail or not inflater.eof:
                raise WireError("bad_payload", "compressed payload too large or incomplete")
        value = json.loads(body.decode())
    except (ValueError, zlib.error, RecursionError) as exc:
        raise WireError("bad_payload", str(exc)[:80]) from None
    if not isinstance(value, dict):
        raise WireError("bad_payload", "not a JSON object")
    return value


class ReplayGuard:
    """Rejects datagrams seen before, too old in sequence, or outside the time window.

    Keeps, per sender session, the highest seq seen and a 64-wide bitmap below
    it (as IPsec does), so reordered datagrams still pass once.

    >>> guard = ReplayGuard(window_s=30)
    >>> now = time.time_ns()
    >>> guard.check(1, 5, now), guard.check(1, 5, now)
    (None, 'replayed')
    """

    WIDTH = 64

    def __init__(self, *, window_s: float, max_sessions: int = 256) -> None:
        self.window_ns = int(window_s * 1e9)
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[int, list[int]] = OrderedDict()

    def check(self, session: int, seq: int, ts: int, now: int | None = None) -> str | None:
        """None when the datagram is fresh (and records it), else the drop reason."""
        now = time.time_ns() if now is None else now
        if abs(now - ts) > self.window_ns:
            return "stale"
        state = self._sessions.get(session)
        if state is None:
            self._remember(session, [seq, 1])
            return None
        self._sessions.move_to_end(session)
        top, bits = state
        if seq > top:
            shift = seq - top
            state[0], state[1] = seq, ((bits << shift) | 1) & ((1 << self.WIDTH) - 1) if shift < self.WIDTH else 1
            return None
        offset = top - seq
        if offset >= self.WIDTH or bits & (1 << offset):
            return "replayed"
        state[1] = bits | (1 << offset)
        return None

    def _remember(self, session: int, state: list[int]) -> None:
        self._sessions[session] = state
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

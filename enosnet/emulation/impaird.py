#!/usr/bin/env python3
"""impaird: enosnet's one network-emulation engine, run on the host as root.

Stdlib only, Python >= 3.8, one file: copy it to a host and run it with the
system ``python3``. Whoever asks for emulation (``enosnet netem``, the
``netem`` Ansible role, a bench run's conditions) hands it the same config;
it plans the same changes, records them step by step with their undo
commands in one state folder per host, and clears exactly those. Two
backends give what ``tc netem`` gives, per destination:

``netem`` (kernels with the netem qdisc; ``auto`` picks it where it is):
  on each interface (an ifb device ``e57ifb<n>`` for ingress) an HTB root
  ``e57:`` whose unclassified traffic passes untouched; per constraint an
  HTB class at its rate (else unlimited) holding a netem qdisc with its
  delay, jitter, loss, duplication and reordering; u32 filters on the
  destination (and protocol, port) choose the class, the first match wins.

``nfqueue`` (kernels built without netem), in userspace:

- delay, jitter (uniform as netem's default, or normal), loss (optionally
  correlated, netem's model), reordering (a fraction of packets skips the
  delay, as with netem): packets matching a constraint go to an NFQUEUE
  (``iptables-legacy``, mangle table, chains ``ENOSNET_EMU_OUT`` in
  POSTROUTING for egress and ``ENOSNET_EMU_IN`` in PREROUTING for ingress);
  this daemon holds each one and gives its verdict when it is due. It speaks
  nfnetlink_queue itself over a NETLINK_NETFILTER socket.
- duplication: the kernel copies packets (nft ``dup``, table ``enosnet_emu``),
  so large GSO packets need no copy to userspace. Egress copies are made
  before the queue (they are delayed like the original), ingress copies after
  it (they loop back through ``lo``).
- rate: the same HTB classes and u32 filters as the netem backend, without
  a netem qdisc in them.

Commands (root)::

    python3 impaird.py apply --config FILE|-|JSON [--state-dir D] [--backend B] [--netem-vars]
                             [--dry-run | --check]
    python3 impaird.py clear                   [--state-dir D]
    python3 impaird.py show                    [--state-dir D]
    python3 impaird.py probe                   (has the kernel netem; packages each backend lacks)
    python3 impaird.py run --config FILE [--pidfile P]     (the daemon; apply starts it)

``apply`` replaces what an earlier ``apply`` did, and changes nothing when
the same config is still wholly in place (its output says ``"changed"``);
``--check`` prints whether it would change anything and the commands,
changing nothing. ``clear`` undoes exactly what was added (recorded step by
step in ``<state-dir>/state.json``, so a crash mid-apply still clears).
Exit codes: 0 ok, 2 bad config or usage, 1 a command failed on the host.
The config is JSON::

    {"constraints": [{"destination": "198.18.0.3/32", "direction": "egress",
                      "protocol": "udp", "port": 7700,
                      "delay": "20ms", "jitter": "2ms", "distribution": "normal",
                      "loss": "1%", "loss_correlation": "25%",
                      "duplicate": "1%", "reorder": "10%",
                      "rate": "100mbit", "limit": 10000, "device": "eth0"}],
     "backend": "auto", "queue_base": 7400, "seed": 1}

Only ``destination`` is required; see docs/emulation.md for every field.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import heapq
import ipaddress
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

VERSION = 1
DEFAULT_STATE_DIR = "/run/enosnet-emu"
DEFAULT_QUEUE_BASE = 7400
DEFAULT_LIMIT = 10000
REALTIME_PRIORITY = 10
SINK_QUEUE = 65535  # never bound: the kernel frees what is queued there and tells the sender it went out
MARK_CLONE, MARK_ORIG = 0x40000000, 0x20000000  # packet mark bits of held egress copies and their originals
MARK_MASK = MARK_CLONE | MARK_ORIG
CHAIN_OUT, CHAIN_IN = "ENOSNET_EMU_OUT", "ENOSNET_EMU_IN"
NFT_TABLE = "enosnet_emu"
TC_HANDLE = "e57"
IFB_PREFIX = "e57ifb"
LEAF_BASE = 0xE580  # the netem qdisc of class e57:<n> has handle <LEAF_BASE + n>:
UNLIMITED_BPS = 100 * 10**9  # the HTB rate of a class that only delays or loses
BACKENDS = ("auto", "netem", "nfqueue")
# whether the kernel adds a netem qdisc: in a throwaway network namespace where the host allows one, else on
# lo while lo has no qdisc of its own (removed at once); prints tc's error when it cannot
NETEM_PROBE = """
command -v tc >/dev/null || { echo "no tc on this host (install iproute2)" >&2; exit 3; }
if unshare --net true 2>/dev/null; then exec unshare --net tc qdisc add dev lo root netem delay 0ms; fi
tc qdisc show dev lo | grep -q '^qdisc netem' && exit 0
tc qdisc show dev lo | grep -q '^qdisc noqueue 0: root' || { echo "lo has a qdisc, cannot probe" >&2; exit 3; }
tc qdisc add dev lo root handle e57f: netem delay 0ms && tc qdisc del dev lo root handle e57f:
"""
NO_NETEM = ("qdisc kind is unknown", "RTNETLINK answers: No such file or directory")  # new and old tc

# ── nfnetlink_queue (include/uapi/linux/netfilter/nfnetlink_queue.h) ────────
NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_CONFIG, NFQNL_MSG_VERDICT_BATCH = 0, 1, 2, 3
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 1, 2, 3, 4, 5
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 0x1, 0x4
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NF_DROP, NF_ACCEPT = 0, 1
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
# one verdict message: nlmsghdr, nfgenmsg (queue number big-endian), NFQA_VERDICT_HDR (verdict, id big-endian)
VERDICT = struct.Struct("=IHHIIBBHHHII")
NLMSGHDR = struct.Struct("=IHHII")
# a packet message's start: nlmsg length and type, nfgenmsg queue (raw big-endian), first attribute, packet id (raw)
PACKET_START = struct.Struct("=IH12xHHHI")
PACKET_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


class ConfigProblem(ValueError):
    """The config is wrong; the message names the field."""


class CommandFailed(RuntimeError):
    """A command on this host failed; the message has the command and its error output."""


# ── values ──────────────────────────────────────────────────────────────────

# spaces around the number and unit are fine ("20 ms"); no other whitespace (it would end up in a command line)
_DURATION = re.compile(r" *(\d+(?:\.\d+)?) *(us|usec|ms|msec|s|sec) *", re.ASCII)
_PERCENT = re.compile(r" *(\d+(?:\.\d+)?) *% *", re.ASCII)
_RATE = re.compile(r" *(\d+(?:\.\d+)?) *(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|tbps) *",
                   re.IGNORECASE | re.ASCII)
_UNIT_S = {"us": 1e-6, "usec": 1e-6, "ms": 1e-3, "msec": 1e-3, "s": 1.0, "sec": 1.0}
_UNIT_BIT = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12,
             "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9, "tbps": 8 * 10**12}


def parse_duration(value: Any, field: str) -> float:
    """``"20ms"`` → 0.02 s. A duration needs a unit (us, ms, s); 0 alone is allowed."""
    if value in (0, "0"):
        return 0.0
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ConfigProblem(f"{field}: {value!r} is not a duration such as 20ms, 500us or 1s")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_percent(value: Any, field: str) -> float:
    """``"1%"`` → 0.01, within 0-100 %."""
    if value in (0, "0"):
        return 0.0
    match = _PERCENT.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ConfigProblem(f"{field}: {value!r} is not a percentage such as 1% or 0.5%")
    number = float(match.group(1))
    if number > 100:
        raise ConfigProblem(f"{field}: {value!r} is more than 100%")
    return number / 100.0


def parse_rate(value: Any, field: str) -> int:
    """``"100mbit"`` → 100_000_000 bit/s (tc's units: bit, kbit, mbit, gbit, bps = bytes/s, ...)."""
    match = _RATE.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ConfigProblem(f"{field}: {value!r} is not a rate such as 100mbit, 1gbit or 500kbit")
    bits = int(float(match.group(1)) * _UNIT_BIT[match.group(2).lower()])
    if bits < 8000:
        raise ConfigProblem(f"{field}: {value!r} is below 8kbit, too slow to shape")
    return bits


_PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132, "icmpv6": 58, "ipv6-icmp": 58}
_PORTED = {"tcp", "udp", "sctp"}
FIELDS = {"destination", "direction", "protocol", "port", "delay", "jitter", "distribution", "loss",
          "loss_correlation", "duplicate", "reorder", "rate", "limit", "device"}


def normalize(raw: Any, where: str) -> dict[str, Any]:
    """One constraint from the config, checked, with numbers in SI units (seconds, fractions, bit/s)."""
    if not isinstance(raw, dict):
        raise ConfigProblem(f"{where}: a constraint is an object, got {raw!r}")
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise ConfigProblem(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    out: dict[str, Any] = {"destination": _network(raw.get("destination"), f"{where}.destination")}
    out["family"] = ipaddress.ip_network(out["destination"]).version
    out.update(_selector(raw, where, out["family"]))
    out.update(_impairments(raw, where))
    out["rate_bps"] = parse_rate(raw["rate"], f"{where}.rate") if raw.get("rate") not in (None, "") else None
    out["device"] = _device(raw.get("device"), f"{where}.device")
    if out["jitter_s"] and not out["delay_s"]:
        raise ConfigProblem(f"{where}.jitter: jitter needs a delay to vary around, e.g. delay 20ms jitter 2ms")
    if out["reorder"] and not out["delay_s"]:
        raise ConfigProblem(f"{where}.reorder: reordering needs a delay (reordered packets skip it, as with "
                            "netem), e.g. delay 10ms reorder 25%")
    if out["rate_bps"] and out["port"] is not None and ":" in str(out["port"]):
        raise ConfigProblem(f"{where}.port: a rate limit matches one port, not a range ({out['port']})")
    return out


def _network(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigProblem(f"{field}: required, an address or prefix such as 198.18.0.3 or 198.18.0.0/24")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ConfigProblem(f"{field}: {value!r} is not an IPv4/IPv6 address or prefix") from None


def _selector(raw: dict[str, Any], where: str, family: int) -> dict[str, Any]:
    direction = raw.get("direction", "egress")
    if direction not in ("egress", "ingress"):
        raise ConfigProblem(f"{where}.direction: {direction!r} is neither egress nor ingress")
    protocol = raw.get("protocol")
    if protocol is not None:
        protocol = str(protocol).lower()
        if protocol not in _PROTOCOLS:
            raise ConfigProblem(f"{where}.protocol: {protocol!r} is not one of {', '.join(sorted(_PROTOCOLS))}")
        if protocol in ("icmp", "icmpv6", "ipv6-icmp"):
            protocol = "icmp" if family == 4 else "ipv6-icmp"
    port = raw.get("port")
    if port is not None:
        port = _port(port, f"{where}.port")
        if protocol not in _PORTED:
            raise ConfigProblem(f"{where}.port: a port needs protocol tcp, udp or sctp (got {protocol!r})")
    return {"direction": direction, "protocol": protocol, "port": port}


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def _port(value: Any, field: str) -> str:
    text = str(value)
    parts = text.split(":")
    if isinstance(value, bool) or len(parts) > 2 or not all(_is_port(p) for p in parts):
        raise ConfigProblem(f"{field}: {value!r} is not a port (1-65535) or a range such as 7700:7710")
    if len(parts) == 2 and int(parts[0]) > int(parts[1]):
        raise ConfigProblem(f"{field}: {value!r} is an empty range")
    return text


def _impairments(raw: dict[str, Any], where: str) -> dict[str, Any]:
    def opt(name: str, parse: Callable[[Any, str], float]) -> float:
        value = raw.get(name)
        return 0.0 if value in (None, "") else parse(value, f"{where}.{name}")

    distribution = raw.get("distribution", "uniform")
    if distribution not in ("uniform", "normal"):
        raise ConfigProblem(f"{where}.distribution: {distribution!r} is neither uniform nor normal")
    limit = raw.get("limit", DEFAULT_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1_000_000:
        raise ConfigProblem(f"{where}.limit: {limit!r} is not a packet count in 1-1000000")
    return {"delay_s": opt("delay", parse_duration), "jitter_s": opt("jitter", parse_duration),
            "distribution": distribution, "loss": opt("loss", parse_percent),
            "loss_correlation": opt("loss_correlation", parse_percent), "duplicate": opt("duplicate", parse_percent),
            "reorder": opt("reorder", parse_percent), "limit": limit}


def _device(value: Any, field: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,15}", value):
        raise ConfigProblem(f"{field}: {value!r} is not an interface name")
    return value


def load_config(data: Any) -> dict[str, Any]:
    """The whole config, checked: constraints normalized, queue numbers assigned."""
    if not isinstance(data, dict):
        raise ConfigProblem("config: a JSON object with a 'constraints' list")
    unknown = sorted(set(data) - {"version", "constraints", "queue_base", "seed", "realtime", "backend"})
    if unknown:
        raise ConfigProblem(f"config: unknown field(s) {', '.join(unknown)}")
    if data.get("version", VERSION) != VERSION:
        raise ConfigProblem(f"config.version: {data.get('version')!r}; this impaird reads version {VERSION}")
    raw = data.get("constraints")
    if not isinstance(raw, list):
        raise ConfigProblem("config.constraints: a list of constraints")
    base = data.get("queue_base", DEFAULT_QUEUE_BASE)
    if isinstance(base, bool) or not isinstance(base, int) or not 0 <= base < SINK_QUEUE - len(raw):
        raise ConfigProblem(f"config.queue_base: {base!r} is not a queue number (0-65535)")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigProblem(f"config.seed: {seed!r} is not an integer")
    realtime = data.get("realtime", True)
    if not isinstance(realtime, bool):
        raise ConfigProblem(f"config.realtime: {realtime!r} is not true or false")
    backend = data.get("backend", "auto")
    if backend not in BACKENDS:
        raise ConfigProblem(f"config.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    constraints = [normalize(c, f"constraints[{i}]") for i, c in enumerate(raw)]
    queue = base
    for c in constraints:
        c["queue"] = None
        if c["delay_s"] or c["jitter_s"] or c["loss"] or c["reorder"]:
            c["queue"], queue = queue, queue + 1
    return {"version": VERSION, "constraints": constraints, "seed": seed, "queue_base": base, "realtime": realtime,
            "backend": backend}


def kernel_has_netem() -> bool:
    """Whether this host's kernel adds a netem qdisc (``NETEM_PROBE``); raises when the probe cannot tell."""
    done = sh(["sh", "-c", NETEM_PROBE], check=False)
    if done.returncode == 0:
        return True
    if any(text in done.stderr for text in NO_NETEM):
        return False
    raise CommandFailed(f"could not probe for netem (exit {done.returncode}): {done.stderr.strip()[-300:]}")


def missing_packages(backend: str) -> list[str]:
    """The Debian packages ``backend`` needs that this host lacks."""
    wanted = {"tc": "iproute2"}
    if backend != "netem":
        wanted.update({"iptables-legacy": "iptables", "ip6tables-legacy": "iptables", "nft": "nftables"})
    found = {name for name in wanted
             if shutil.which(name) or any(os.path.exists(f"{folder}/{name}") for folder in ("/usr/sbin", "/sbin"))}
    return sorted({package for name, package in wanted.items() if name not in found})


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as this host will apply it: its backend chosen (``auto``: netem where the kernel has it; netem
    holds no queues) and each constraint's interface found."""
    backend = config["backend"]
    if backend == "auto":
        backend = "netem" if kernel_has_netem() else "nfqueue"
    constraints = [_routed(c) for c in config["constraints"]]
    if backend == "netem":
        constraints = [{**c, "queue": None} for c in constraints]
    return {**config, "backend": backend, "constraints": constraints}


def _routed(c: dict[str, Any]) -> dict[str, Any]:
    """``c`` with its interface: the one the route toward its destination takes, when it names none.

    So a constraint toward a host means the same rules and qdiscs whether or not its maker knew the
    interface; one toward everything (a /0) without a device keeps none.
    """
    network = ipaddress.ip_network(c["destination"])
    if c["device"] or network.prefixlen == 0:
        return c
    try:
        return {**c, "device": route_device(str(network.network_address))}
    except CommandFailed:
        return c


IMPAIRMENTS = ("delay", "jitter", "distribution", "loss", "loss_correlation", "duplicate", "reorder", "rate",
               "limit", "protocol", "port")


def from_netem_vars(data: Any) -> dict[str, Any]:
    """A config from the netem role's variables ``{"interfaces": [...], "destinations": [...]}``.

    Destinations (``{device, dest, delay, jitter, loss, rate, ...}``) come first, as the more specific;
    an interface entry (``{device, delay, jitter, loss, rate, ..., ingress: {...}}``) covers all of its
    IPv4 and IPv6 traffic, egress and, with ``ingress``, incoming. Each entry is checked here, so an
    error names the role's variable (``interfaces[0].delay``). ``backend`` may ride along.
    """
    if not isinstance(data, dict) or set(data) - {"interfaces", "destinations", "backend"}:
        raise ConfigProblem("netem vars: an object with 'interfaces' and/or 'destinations' lists")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(data.get("destinations") or []):
        where = f"destinations[{i}]"
        chosen = _role_entry(entry, where, {"device", "dest"})
        if not any(k in chosen for k in ("delay", "jitter", "loss", "duplicate", "reorder", "rate")):
            raise ConfigProblem(f"{where}: no delay, loss or rate given")
        constraint = {"destination": entry.get("dest"), "device": entry.get("device"), **chosen}
        normalize(constraint, where)
        out.append(constraint)
    for i, entry in enumerate(data.get("interfaces") or []):
        where = f"interfaces[{i}]"
        chosen = _role_entry(entry, where, {"device", "ingress"})
        if not isinstance(entry.get("device"), str) or not entry["device"]:
            raise ConfigProblem(f"{where}.device: required, the interface to constrain")
        ingress = _role_entry(entry.get("ingress") or {}, f"{where}.ingress", set())
        for direction, side, at in (("egress", chosen, where), ("ingress", ingress, f"{where}.ingress")):
            if side:
                made = [{"destination": net, "device": entry["device"], "direction": direction, **side}
                        for net in ("0.0.0.0/0", "::/0")]
                normalize(made[0], at)
                out += made
    config: dict[str, Any] = {"version": VERSION, "constraints": out}
    if "backend" in data:
        config["backend"] = data["backend"]
    return config


def _role_entry(entry: Any, where: str, keys: set[str]) -> dict[str, Any]:
    """The impairments of one entry of the netem role's variables (unknown keys refused)."""
    if not isinstance(entry, dict):
        raise ConfigProblem(f"{where}: an object, got {entry!r}")
    unknown = sorted(set(entry) - keys - set(IMPAIRMENTS))
    if unknown:
        raise ConfigProblem(f"{where}: unknown key(s) {', '.join(unknown)}; known: "
                            f"{', '.join(sorted(keys | set(IMPAIRMENTS)))}")
    return {k: entry[k] for k in IMPAIRMENTS if entry.get(k) not in (None, "")}


# ── nfnetlink_queue ─────────────────────────────────────────────────────────


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _nfmsg(msg_type: int, queue: int, attrs: bytes, flags: int) -> bytes:
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue) + attrs
    return NLMSGHDR.pack(16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, 0, 0) + body


class NfQueue:
    """One NETLINK_NETFILTER socket bound to several queues; packets are known by (queue, id) only."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.setsockopt(270, NETLINK_NO_ENOBUFS, 1)  # SOL_NETLINK: overruns drop packets, not the socket
        self.buffer = bytearray(1 << 16)
        self.errors = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def bind(self, queue: int, maxlen: int) -> None:
        """Bind ``queue``: metadata only (verdicts never change payloads), GSO packets whole, drop when full."""
        attrs = (_attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0, 0))
                 + _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                 + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
                 + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_GSO))
                 + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN)))
        self.sock.send(_nfmsg(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST | NLM_F_ACK))
        error = self._ack()
        if error:
            hint = " (another program, maybe another impaird, holds it)" if error == 16 else ""
            raise CommandFailed(f"binding NFQUEUE {queue}: {os.strerror(error)}{hint}")

    def unbind(self, queue: int) -> None:
        attrs = _attr(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0))
        self.sock.send(_nfmsg(NFQNL_MSG_CONFIG, queue, attrs, NLM_F_REQUEST))

    def _ack(self) -> int:
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if not select.select([self.sock], [], [], 1.0)[0]:
                continue
            size = self.sock.recv_into(self.buffer)
            for msg_type, offset, _length in self._messages(size):
                if msg_type == NLMSG_ERROR:
                    return -int(struct.unpack_from("=i", self.buffer, offset + 16)[0])
        raise CommandFailed("the kernel did not answer a NFQUEUE config request within 5 s")

    def _messages(self, size: int) -> Iterator[tuple[int, int, int]]:
        offset = 0
        while offset + 16 <= size:
            length, msg_type = NLMSGHDR.unpack_from(self.buffer, offset)[:2]
            if length < 16:
                return
            yield msg_type, offset, length
            offset += (length + 3) & ~3

    def receive(self, out: list[tuple[int, int]], budget: int) -> None:
        """Append (queue, packet id) of waiting packets to ``out``, reading at most ``budget`` datagrams."""
        buffer, recv, first = self.buffer, self.sock.recv_into, PACKET_START.unpack_from
        for _ in range(budget):
            try:
                size = recv(buffer, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if size >= PACKET_START.size:  # the usual datagram: one packet message, its header attribute first
                length, msg_type, queue, _alen, kind, packet_id = first(buffer)
                if msg_type == PACKET_TYPE and kind & 0x3FFF == NFQA_PACKET_HDR and (length + 3) & ~3 >= size:
                    out.append((socket.ntohs(queue), socket.ntohl(packet_id)))
                    continue
            self._parse(size, out)

    def _parse(self, size: int, out: list[tuple[int, int]]) -> None:
        packet_type = PACKET_TYPE
        if size:
            for msg_type, offset, length in self._messages(size):
                if msg_type == packet_type:
                    found = self._packet_id(offset, length)
                    if found is not None:
                        out.append(found)
                elif msg_type == NLMSG_ERROR and struct.unpack_from("=i", self.buffer, offset + 16)[0]:
                    self.errors += 1

    def _packet_id(self, offset: int, length: int) -> tuple[int, int] | None:
        queue = struct.unpack_from("!H", self.buffer, offset + 18)[0]
        at, end = offset + 20, offset + length
        while at + 4 <= end:
            alen, kind = struct.unpack_from("=HH", self.buffer, at)
            if kind & 0x3FFF == NFQA_PACKET_HDR:
                return queue, struct.unpack_from("!I", self.buffer, at + 4)[0]
            if alen < 4:
                break
            at += (alen + 3) & ~3
        return None

    def send_verdicts(self, verdicts: Sequence[tuple[int, int, int, bool]]) -> None:
        """Send (queue, id, verdict, batch) verdicts, many per datagram; ``batch`` covers every id up to ``id``."""
        chunk = 1024
        for start in range(0, len(verdicts), chunk):
            part = verdicts[start:start + chunk]
            data = bytearray(VERDICT.size * len(part))
            for i, (queue, packet_id, verdict, batch) in enumerate(part):
                kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
                VERDICT.pack_into(data, i * VERDICT.size, VERDICT.size, (NFNL_SUBSYS_QUEUE << 8) | kind,
                                  NLM_F_REQUEST, 0, 0, socket.AF_UNSPEC, 0, socket.htons(queue), 12,
                                  NFQA_VERDICT_HDR, socket.htonl(verdict), socket.htonl(packet_id))
            self.sock.send(data)

    def close(self) -> None:
        self.sock.close()


# ── the emulator ────────────────────────────────────────────────────────────


class Impairment:
    """What happens to each packet of one queue: drop, or the time it is released."""

    def __init__(self, c: dict[str, Any], rng: random.Random) -> None:
        self.delay, self.jitter = float(c["delay_s"]), float(c["jitter_s"])
        self.normal = c["distribution"] == "normal"
        self.loss, self.loss_corr, self.reorder = float(c["loss"]), float(c["loss_correlation"]), float(c["reorder"])
        self.rng = rng
        self.last_loss = 0.0
        self.stats = {"received": 0, "dropped": 0, "reordered": 0, "held_max": 0}

    def due(self, now: float) -> float | None:
        """When to release a packet that arrived at ``now``; None to drop it."""
        self.stats["received"] += 1
        if self.loss and self._lost():
            self.stats["dropped"] += 1
            return None
        if self.reorder and self.rng.random() < self.reorder:
            self.stats["reordered"] += 1
            return now
        if not self.jitter:
            return now + self.delay
        if self.normal:
            return now + max(0.0, self.rng.gauss(self.delay, self.jitter))
        return now + max(0.0, self.rng.uniform(self.delay - self.jitter, self.delay + self.jitter))

    def _lost(self) -> bool:
        # netem's correlated draw: each value leans on the previous one by the correlation
        value = self.rng.random()
        if self.loss_corr:
            value = value * (1.0 - self.loss_corr) + self.last_loss * self.loss_corr
            self.last_loss = value
        return value < self.loss


class Held:
    """Packets of one queue waiting for their verdict, to tell when one batch verdict can release many."""

    def __init__(self) -> None:
        self.order: collections.deque[int] = collections.deque()  # ids in arrival order (ids grow with arrival)
        self.waiting: set[int] = set()

    def add(self, packet_id: int) -> None:
        self.order.append(packet_id)
        self.waiting.add(packet_id)

    def release(self, ids: list[int]) -> bool:
        """Forget ``ids``; True when no packet older than the newest of them is still held."""
        self.waiting.difference_update(ids)
        while self.order and self.order[0] not in self.waiting:
            self.order.popleft()
        return not self.order or self.order[0] > max(ids)


class Emulator:
    """The daemon's loop: receive, decide, hold until due, release with precise timeouts.

    A queue without jitter or reordering releases in arrival order: a plain FIFO, and one batch
    verdict per release. Others keep a heap of (due, id) and batch only when no older packet is held.
    """

    SPIN = 0.00005  # release what is due within 50 us: select() would not wake any closer

    def __init__(self, config: dict[str, Any], stats_path: str | None) -> None:
        seed = config.get("seed")
        self.queues = {c["queue"]: c for c in config["constraints"] if c["queue"] is not None}
        self.impair = {q: Impairment(c, random.Random(None if seed is None else seed + q))
                       for q, c in self.queues.items()}
        self.fifo: dict[int, collections.deque[tuple[float, int]]] = {
            q: collections.deque() for q, i in self.impair.items() if not i.jitter and not i.reorder}
        self.held = {q: Held() for q in self.impair if q not in self.fifo}
        self.heap: list[tuple[float, int, int, int]] = []  # (due, sequence, queue, id)
        self.sequence = 0
        self.late = {"count": 0, "sum_us": 0.0, "max_us": 0.0}
        self.stats_path, self.stats_written = stats_path, 0.0
        self.running = True
        self.stats_requested = False  # set by SIGUSR1: `show` wants counters now, not within a second
        self.nfq = NfQueue()
        self.wake_r, self.wake_w = socket.socketpair()  # a signal wakes select() at once
        for end in (self.wake_r, self.wake_w):
            end.setblocking(False)

    def bind(self) -> None:
        for queue, c in self.queues.items():
            self.nfq.bind(queue, c["limit"])

    def next_due(self) -> float | None:
        heads = [fifo[0][0] for fifo in self.fifo.values() if fifo]
        if self.heap:
            heads.append(self.heap[0][0])
        return min(heads) if heads else None

    def serve(self) -> None:
        arrived: list[tuple[int, int]] = []
        sockets = [self.nfq.fileno(), self.wake_r.fileno()]
        while self.running:
            self._release(time.monotonic())
            due = self.next_due()
            timeout = 1.0 if due is None else min(1.0, max(0.0, due - time.monotonic() - self.SPIN))
            ready = select.select(sockets, [], [], timeout)[0]
            if sockets[0] in ready:
                self.nfq.receive(arrived, 256)
                self._admit(arrived, time.monotonic())
                arrived.clear()
            if sockets[1] in ready:
                self._drain_wakeups()
            self._write_stats(self.stats_requested)
            self.stats_requested = False

    def _drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(64):
                pass
        except BlockingIOError:
            pass

    def _admit(self, arrived: list[tuple[int, int]], now: float) -> None:
        drops: list[tuple[int, int, int, bool]] = []
        for queue, packet_id in arrived:
            impair = self.impair.get(queue)
            due = impair.due(now) if impair is not None else now
            if due is None:
                drops.append((queue, packet_id, NF_DROP, False))
                continue
            fifo = self.fifo.get(queue)
            if fifo is not None:
                fifo.append((due, packet_id))
                continue
            self.sequence += 1
            heapq.heappush(self.heap, (due, self.sequence, queue, packet_id))
            if queue in self.held:
                self.held[queue].add(packet_id)
        if drops:
            self.nfq.send_verdicts(drops)
        for queue, impair in self.impair.items():
            held = len(self.fifo[queue]) if queue in self.fifo else len(self.held[queue].waiting)
            impair.stats["held_max"] = max(impair.stats["held_max"], held)
        self._release(now)

    def _release(self, now: float) -> None:
        limit = now + self.SPIN
        verdicts: list[tuple[int, int, int, bool]] = []
        late: list[float] = []
        for queue, fifo in self.fifo.items():
            last = -1
            while fifo and fifo[0][0] <= limit:
                when, last = fifo.popleft()
                late.append(now - when)
            if last >= 0:
                verdicts.append((queue, last, NF_ACCEPT, True))
        due: dict[int, list[int]] = {}
        while self.heap and self.heap[0][0] <= limit:
            when, _, queue, packet_id = heapq.heappop(self.heap)
            due.setdefault(queue, []).append(packet_id)
            late.append(now - when)
        for queue, ids in due.items():
            held = self.held.get(queue)
            if held is not None and held.release(ids):
                verdicts.append((queue, max(ids), NF_ACCEPT, True))
            else:
                verdicts.extend((queue, i, NF_ACCEPT, False) for i in ids)
        if late:
            self.late["count"] += len(late)
            self.late["sum_us"] += sum(x for x in late if x > 0) * 1e6
            self.late["max_us"] = max(self.late["max_us"], max(late) * 1e6)
            self.nfq.send_verdicts(verdicts)

    def _held(self, queue: int) -> int:
        return len(self.fifo[queue]) if queue in self.fifo else len(self.held[queue].waiting)

    def stop(self) -> None:
        """Release every held packet now (and any still unread), then unbind the queues."""
        unread: list[tuple[int, int]] = []
        self.nfq.receive(unread, 100_000)
        last: dict[int, int] = {}
        for queue, packet_id in unread:
            last[queue] = max(last.get(queue, 0), packet_id)
        for queue, fifo in self.fifo.items():
            if fifo:
                last[queue] = max(last.get(queue, 0), fifo[-1][1])
            fifo.clear()
        for _, _, queue, packet_id in self.heap:
            last[queue] = max(last.get(queue, 0), packet_id)
        self.nfq.send_verdicts([(q, i, NF_ACCEPT, True) for q, i in last.items()])
        self.heap.clear()
        for held in self.held.values():
            held.waiting.clear()
        for queue in self.queues:
            self.nfq.unbind(queue)
        self._write_stats(True)
        self.nfq.close()

    def stats(self) -> dict[str, Any]:
        per_queue = {str(q): {**i.stats, "held": self._held(q),
                              "released": i.stats["received"] - i.stats["dropped"] - self._held(q)}
                     for q, i in self.impair.items()}
        count = self.late["count"] or 1
        return {"queues": per_queue, "netlink_errors": self.nfq.errors,
                "held": sum(self._held(q) for q in self.impair),
                "release_late_us": {"mean": round(self.late["sum_us"] / count, 1),
                                    "max": round(self.late["max_us"], 1), "count": self.late["count"]},
                "time": time.time()}

    def _write_stats(self, force: bool) -> None:
        now = time.monotonic()
        if self.stats_path and (force or now - self.stats_written >= 1.0):
            self.stats_written = now
            write_json(self.stats_path, self.stats())


def realtime() -> None:
    """Run under SCHED_FIFO: on a busy machine a normal process wakes milliseconds late, a real-time one does not.

    The kernel's real-time throttling still leaves others 5 % of each CPU.
    Not in a control group that gives real-time tasks only a sliver of each
    period (cgroup v1 real-time group scheduling: local hosts get 10 ms per
    second, for the agent's start gate): past it the daemon would be stopped
    until the next period, every packet with it.
    """
    share = realtime_share()
    if share is not None and share < 0.5:
        log(f"running without real-time priority: this host's control group lets real-time tasks run "
            f"{share:.1%} of the time, and past that the daemon would stall")
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (OSError, AttributeError) as exc:
        log(f"running without real-time priority ({exc}): releases may be late on a busy host")


def realtime_share(folder: str = "/sys/fs/cgroup/cpu") -> float | None:
    """The share of each period this host's control group lets real-time tasks run (None: no such limit)."""
    try:
        with open(os.path.join(folder, "cpu.rt_runtime_us")) as runtime, \
                open(os.path.join(folder, "cpu.rt_period_us")) as period:
            runtime_us, period_us = int(runtime.read()), int(period.read())
    except (OSError, ValueError):
        return None
    return None if runtime_us < 0 or period_us <= 0 else runtime_us / period_us


def run_daemon(config_path: str, pidfile: str | None) -> int:
    """Bind the queues, write the pid file (the sign of readiness), serve until SIGTERM/SIGINT."""
    config = load_config(read_json(config_path))
    stats_path = os.path.join(os.path.dirname(os.path.abspath(config_path)), "stats.json")
    emulator = Emulator(config, stats_path)
    emulator.bind()
    if config["realtime"]:
        realtime()

    def stop(_signum: int, _frame: Any) -> None:
        emulator.running = False

    def refresh(_signum: int, _frame: Any) -> None:
        emulator.stats_requested = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, refresh)
    signal.set_wakeup_fd(emulator.wake_w.fileno())
    if pidfile:
        write_text(pidfile, f"{os.getpid()}\n")
    log(f"serving queues {sorted(emulator.queues)}")
    try:
        emulator.serve()
    finally:
        emulator.stop()
        log("stopped: " + json.dumps(emulator.stats()))
    return 0


# ── rules, qdiscs and the daemon on the host ────────────────────────────────


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.path.exists(p)),
                                          None)
        if path:
            return path
    raise CommandFailed(f"none of {', '.join(names)} found on this host (install the iptables, nftables and "
                        "iproute2 packages)")


def iptables(family: int) -> str:
    # xtables NFQUEUE works only through the legacy backend where nft's queue expression is missing
    return _tool("iptables-legacy", "iptables") if family == 4 else _tool("ip6tables-legacy", "ip6tables")


def sh(argv: Sequence[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True)
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]}: not found on this host (install iproute2, iptables, nftables)") from None
    if check and done.returncode != 0:
        hint = ""
        if "qdisc kind is unknown" in done.stderr:
            kind = next((t for t in argv if t in ("netem", "htb", "ingress", "mirred")), "?")
            hint = (f" (this kernel lacks the {kind} qdisc: load it, e.g. modprobe sch_{kind}, or let the backend "
                    "be auto)")
        raise CommandFailed(f"`{' '.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}{hint}")
    return done


class Step:
    """One change to the host and the commands that undo it (recorded before the next step runs)."""

    def __init__(self, do: list[str], *undo: list[str], stdin: str | None = None) -> None:
        self.do, self.undo, self.stdin = do, list(undo), stdin

    def describe(self) -> str:
        return " ".join(self.do) + (f" <<EOF\n{self.stdin}EOF" if self.stdin else "")


def _match(c: dict[str, Any], *, ingress: bool) -> list[str]:
    interface = ["-i" if ingress else "-o", c["device"]] if c["device"] else ["!", "-i" if ingress else "-o", "lo"]
    argv = ["-s" if ingress else "-d", c["destination"], *interface]
    if c["protocol"]:
        argv += ["-p", c["protocol"]]
    if c["port"]:
        argv += ["-m", "multiport", "--ports", c["port"]]
    return argv


def _clone_mark(ingress: bool) -> list[str]:
    return [] if ingress else ["-m", "mark", "--mark", f"{MARK_CLONE:#x}/{MARK_MASK:#x}"]


def iptables_steps(config: dict[str, Any]) -> list[Step]:
    """Per family: our chains, one NFQUEUE rule per queued constraint (first match wins), jumps to them."""
    steps: list[Step] = []
    for family in (4, 6):
        tool = iptables(family) if any(c["family"] == family for c in config["constraints"]) else ""
        for chain, hook, ingress in ((CHAIN_OUT, "POSTROUTING", False), (CHAIN_IN, "PREROUTING", True)):
            chosen = [c for c in config["constraints"] if c["family"] == family and c["queue"] is not None
                      and (c["direction"] == "ingress") == ingress]
            if not chosen:
                continue
            base = [tool, "-w", "-t", "mangle"]
            steps.append(Step([*base, "-N", chain], [*base, "-F", chain], [*base, "-X", chain]))
            if not ingress:  # originals of held egress packets (see _nft_rules): freed, reported sent
                steps.append(Step([*base, "-A", chain, "-m", "mark", "--mark", f"{MARK_ORIG:#x}/{MARK_MASK:#x}",
                                   "-j", "NFQUEUE", "--queue-num", str(SINK_QUEUE)]))
            # --queue-bypass: if the daemon dies, traffic flows unimpaired instead of being cut (SSH included)
            steps.extend(Step([*base, "-A", chain, *_match(c, ingress=ingress), *_clone_mark(ingress), "-j",
                               "NFQUEUE", "--queue-num", str(c["queue"]), "--queue-bypass"]) for c in chosen)
            steps.append(Step([*base, "-I", hook, "1", "-j", chain], [*base, "-D", hook, "-j", chain]))
    return steps


def _nft_match(c: dict[str, Any], *, ingress: bool) -> list[str]:
    """nft selectors for ``c``; a port matches as source or destination, so two selectors then."""
    ip = "ip" if c["family"] == 4 else "ip6"
    interface = f'{"iifname" if ingress else "oifname"} ' + (f'== "{c["device"]}"' if c["device"] else '!= "lo"')
    head = f'{interface} {ip} {"saddr" if ingress else "daddr"} {c["destination"]}'
    if c["protocol"]:
        head += f" meta l4proto {c['protocol']}"
    if not c["port"]:
        return [head]
    port = c["port"].replace(":", "-")
    proto = c["protocol"]
    return [f"{head} {proto} dport {port}", f"{head} {proto} dport != {port} {proto} sport {port}"]


def nft_script(config: dict[str, Any], family: int) -> str | None:
    """The nft table that copies packets (duplicates, and the clones egress queues hold), or None if not needed."""
    constraints = [c for c in config["constraints"] if c["family"] == family]
    ip = "ip" if family == 4 else "ip6"
    chains = []
    # egress copies before the queue (mangle, -150) so they are delayed too; ingress copies after it
    for name, hook, priority, ingress in (("out", "postrouting", -300, False), ("in", "prerouting", -100, True)):
        chosen = [c for c in constraints if (c["direction"] == "ingress") == ingress]
        while chosen and not (chosen[-1]["duplicate"] or (chosen[-1]["queue"] is not None and not ingress)):
            chosen.pop()  # constraints after the last one with an nft rule need none here
        rules = [rule for c in chosen for sel in _nft_match(c, ingress=ingress)
                 for rule in _nft_rules(c, sel, ip, ingress=ingress)]
        if rules:
            body = "".join(f"    {r}\n" for r in rules)
            chains.append(f"  chain {name} {{\n    type filter hook {hook} priority {priority}; policy accept;\n"
                          f"{body}  }}\n")
    return f"table {ip} {NFT_TABLE} {{\n{''.join(chains)}}}\n" if chains else None


def _nft_rules(c: dict[str, Any], sel: str, ip: str, *, ingress: bool) -> list[str]:
    """Rules for one selector of ``c``; the first matching constraint wins (``accept``), as in the queue chains.

    An egress packet that is to be held is not queued itself: the socket that sent it would count it as
    unsent while held (TCP small queues would then starve the flow, which netem avoids by orphaning
    packets). Instead an unowned copy marked CLONE is queued and held, and the original, marked ORIG,
    goes to the sink queue that nothing binds, where the kernel frees it and reports it sent.
    """
    threshold = round(c["duplicate"] * 1_000_000)
    chance = f"numgen random mod 1000000 < {threshold}"
    dup = f"dup to {ip} daddr" + ("" if ingress else " device oif")
    if ingress or c["queue"] is None:
        return ([f"{sel} {chance} {dup}"] if threshold else []) + [f"{sel} accept"]
    fresh = f"meta mark & {MARK_MASK:#x} == 0"
    clone = f"meta mark set meta mark | {MARK_CLONE:#x}"
    orig = f"meta mark set meta mark & {~MARK_MASK & 0xFFFFFFFF:#x} | {MARK_ORIG:#x}"
    rules = [f"{sel} {fresh} {chance} {clone} {dup} {dup} {orig} accept"] if threshold else []
    return [*rules, f"{sel} {fresh} {clone} {dup} {orig} accept"]


def nft_steps(config: dict[str, Any]) -> list[Step]:
    steps = []
    for family, ip in ((4, "ip"), (6, "ip6")):
        script = nft_script(config, family)
        if script:
            nft = _tool("nft")
            steps.append(Step([nft, "-f", "-"], [nft, "delete", "table", ip, NFT_TABLE], stdin=script))
    return steps


def route_device(address: str) -> str:
    out = sh(["ip", "-o", "route", "get", address], check=False)
    match = re.search(r"\bdev (\S+)", out.stdout)
    if out.returncode != 0 or not match:
        raise CommandFailed(f"no route to {address} on this host to find the interface for its rate limit "
                            f"({out.stderr.strip() or out.stdout.strip()}); give the constraint a 'device'")
    return match.group(1)


def _shaped_device(c: dict[str, Any]) -> str:
    """The interface whose qdiscs carry ``c``: its own ``device``, else the route toward its destination."""
    if c["device"]:
        return str(c["device"])
    network = ipaddress.ip_network(c["destination"])
    if network.prefixlen == 0:
        raise CommandFailed(f"constraint to {network}: give it a 'device' (which interface's qdiscs carry it)")
    return route_device(str(network.network_address))


def _quantum(rate_bps: int) -> int:
    return max(1514, min(200_000, rate_bps // 8 // 100))


def _u32(c: dict[str, Any], *, ingress: bool) -> list[list[str]]:
    ip, proto = ("ip", "ip") if c["family"] == 4 else ("ip6", "ipv6")
    head = ["protocol", proto, "u32", "match", ip, "src" if ingress else "dst", c["destination"]]
    if c["protocol"]:
        head += ["match", ip, "protocol", str(_PROTOCOLS[c["protocol"]]), "0xff"]
    if not c["port"]:
        return [head]
    return [[*head, "match", ip, side, c["port"], "0xffff"] for side in ("dport", "sport")]


def tc_steps(config: dict[str, Any]) -> list[Step]:
    """The qdiscs: an HTB class per constraint that the kernel carries out, u32 filters choosing them.

    With the netem backend that is every constraint (its class holds a netem qdisc); with nfqueue only
    those with a rate (the daemon does the rest).
    """
    netem = config["backend"] == "netem"
    shaped: dict[tuple[str, bool], list[tuple[int, dict[str, Any]]]] = {}
    for i, c in enumerate(config["constraints"]):
        if c["rate_bps"] or (netem and netem_args(c)):
            shaped.setdefault((_shaped_device(c), c["direction"] == "ingress"), []).append((i + 1, c))
    steps: list[Step] = []
    ifbs = 0
    for (device, ingress), classes in sorted(shaped.items()):
        target = device
        if ingress:
            target, ifbs = f"{IFB_PREFIX}{ifbs}", ifbs + 1
            steps.append(Step(["ip", "link", "add", target, "type", "ifb"], ["ip", "link", "del", target]))
            steps.append(Step(["ip", "link", "set", target, "up"]))
            steps.append(Step(["tc", "qdisc", "add", "dev", device, "handle", "ffff:", "ingress"],
                              ["tc", "qdisc", "del", "dev", device, "handle", "ffff:", "ingress"]))
            steps.append(Step(["tc", "filter", "add", "dev", device, "parent", "ffff:", "protocol", "all", "prio", "1",
                               "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev",
                               target]))
        steps.extend(_htb_steps(target, classes, ingress=ingress, netem=netem))
    return steps


def _htb_steps(device: str, classes: list[tuple[int, dict[str, Any]]], *, ingress: bool, netem: bool) -> list[Step]:
    # unclassified traffic takes HTB's direct queue (default 0): only the constraints' traffic is touched
    steps = [Step(["tc", "qdisc", "add", "dev", device, "root", "handle", f"{TC_HANDLE}:", "htb", "default", "0"],
                  ["tc", "qdisc", "del", "dev", device, "root", "handle", f"{TC_HANDLE}:"])]
    for minor, c in classes:
        rate_bps = c["rate_bps"] or UNLIMITED_BPS
        rate = f"{rate_bps}bit"
        steps.append(Step(["tc", "class", "add", "dev", device, "parent", f"{TC_HANDLE}:", "classid",
                           f"{TC_HANDLE}:{minor:x}", "htb", "rate", rate, "ceil", rate,
                           "quantum", str(_quantum(rate_bps))]))
        if netem and netem_args(c):
            steps.append(Step(["tc", "qdisc", "add", "dev", device, "parent", f"{TC_HANDLE}:{minor:x}", "handle",
                               f"{LEAF_BASE + minor:x}:", "netem", "limit", str(c["limit"]), *netem_args(c)]))
        for match in _u32(c, ingress=ingress):
            steps.append(Step(["tc", "filter", "add", "dev", device, "parent", f"{TC_HANDLE}:", "prio", str(minor),
                               *match, "flowid", f"{TC_HANDLE}:{minor:x}"]))
    return steps


def netem_args(c: dict[str, Any]) -> list[str]:
    """The netem qdisc's words for a normalized constraint (empty when it only limits the rate)."""
    args: list[str] = []
    if c["delay_s"] or c["jitter_s"]:
        args += ["delay", _us(c["delay_s"])]
        if c["jitter_s"]:
            args.append(_us(c["jitter_s"]))
            if c["distribution"] == "normal":
                args += ["distribution", "normal"]
    for name in ("loss", "duplicate", "reorder"):
        if c[name]:
            args += [name, _percent(c[name])]
            if name == "loss" and c["loss_correlation"]:
                args.append(_percent(c["loss_correlation"]))
    return args


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.6g}%"


def plan(config: dict[str, Any]) -> list[Step]:
    """Every change ``apply`` makes (after starting the daemon, for nfqueue), in order, for a resolved config.

    The queue rules come before the nft copies and are undone after them: egress originals and copies
    are told apart only once both exist, so neither ever leaves unqueued (no spurious duplicates).
    """
    if config["backend"] == "netem":
        return tc_steps(config)
    return iptables_steps(config) + nft_steps(config) + tc_steps(config)


# ── state ───────────────────────────────────────────────────────────────────


def read_json(path: str) -> Any:
    """JSON from a file, from stdin (``-``), or inline (text starting with ``{``)."""
    if path == "-":
        return json.load(sys.stdin)
    if path.lstrip().startswith("{"):
        return json.loads(path)
    with open(path) as handle:
        return json.load(handle)


def write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(path: str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} impaird[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class State:
    """``<state-dir>/state.json``: the undo commands of what is applied, and the daemon's pid."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, "state.json")
        os.makedirs(folder, mode=0o755, exist_ok=True)
        self._lock = open(os.path.join(folder, "lock"), "w")  # noqa: SIM115 (held for the process's life)
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = read_json(self.path)
            return data
        except FileNotFoundError:
            return {"undo": [], "daemon": None, "config": None}

    def save(self, data: dict[str, Any]) -> None:
        write_json(self.path, data)

    def remove(self) -> None:
        for name in ("state.json", "config.json", "stats.json", "impaird.pid"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.folder, name))


def _daemon_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"impaird.py") for part in cmdline) and b"run" in cmdline


def start_daemon(folder: str, timeout: float = 10.0) -> int:
    """Start ``run`` in its own session; return its pid once its queues are bound (it wrote the pid file)."""
    pidfile, logfile = os.path.join(folder, "impaird.pid"), os.path.join(folder, "impaird.log")
    if os.path.exists(pidfile):
        os.unlink(pidfile)
    with open(logfile, "ab") as out:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "run", "--config",
                                 os.path.join(folder, "config.json"), "--pidfile", pidfile],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(pidfile):
            return proc.pid
        if proc.poll() is not None:
            raise CommandFailed(f"impaird exited with {proc.returncode} while binding its queues: {_tail(logfile)}")
        time.sleep(0.01)
    proc.kill()
    raise CommandFailed(f"impaird did not bind its queues within {timeout:g} s: {_tail(logfile)}")


def _tail(path: str) -> str:
    with open(path, errors="replace") as handle:
        return " | ".join(handle.read().strip().splitlines()[-3:])


def stop_daemon(pid: int, grace: float = 5.0) -> None:
    """SIGTERM (it releases what it holds), SIGKILL after ``grace`` seconds."""
    if not _daemon_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _daemon_alive(pid) or _zombie(pid):
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


GONE = re.compile(r"No chain/target/match|does a matching rule exist|No such file or directory|Cannot find device|"
                  r"Cannot delete qdisc with handle of zero|Invalid handle|Chain .* does not exist|No such device|"
                  r"Bad rule|Cannot find specified qdisc")


def undo_all(state: State, data: dict[str, Any]) -> list[str]:
    """Undo recorded steps newest first, then stop the daemon; returns what could not be undone."""
    problems = []
    while data["undo"]:
        for argv in data["undo"][-1]:
            done = sh(argv, check=False)
            if done.returncode != 0 and not GONE.search(done.stderr):
                problems.append(f"`{' '.join(argv)}`: {done.stderr.strip()}")
        data["undo"].pop()
        state.save(data)
    if data.get("daemon"):
        stop_daemon(int(data["daemon"]))
        data["daemon"] = None
        state.save(data)
    return problems


def apply(raw: dict[str, Any], folder: str) -> dict[str, Any]:
    """Make the host's emulation ``raw``: nothing changes when exactly that is still in place, else what is
    applied is replaced. Returns ``show`` with ``changed``; on failure undoes this attempt, raises CommandFailed."""
    config = resolve(load_config(raw))
    if not config["constraints"]:  # nothing asked: nothing may stay
        applied = os.path.exists(os.path.join(folder, "state.json"))
        problems = clear(folder)
        if problems:
            raise CommandFailed("could not clear the previous emulation: " + "; ".join(problems))
        return {**show(folder), "changed": applied}
    state = State(folder)
    data = state.load()
    if data.get("config") == config and in_place(data):
        return {**show(folder), "changed": False}
    problems = undo_all(state, data)
    if problems:
        raise CommandFailed("could not clear the previous emulation: " + "; ".join(problems))
    steps = plan(config)
    data = {"undo": [], "daemon": None, "config": config}
    write_json(os.path.join(folder, "config.json"), raw)
    state.save(data)
    try:
        if any(c["queue"] is not None for c in config["constraints"]):
            data["daemon"] = start_daemon(folder)
            state.save(data)
        for step in steps:
            sh(step.do, stdin=step.stdin)
            if step.undo:
                data["undo"].append(step.undo)
                state.save(data)
    except BaseException:
        undo_all(state, data)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return {**show(folder), "changed": True}


def check(raw: dict[str, Any], folder: str) -> dict[str, Any]:
    """What ``apply`` would do, changing nothing: ``changed``, the backend, and the commands it would run."""
    config = resolve(load_config(raw))
    path = os.path.join(folder, "state.json")
    data = read_json(path) if os.path.exists(path) else {}
    if not config["constraints"]:
        return {"changed": bool(data), "backend": config["backend"], "commands": ["clear"] if data else []}
    changed = not (data.get("config") == config and in_place(data))
    return {"changed": changed, "backend": config["backend"],
            "commands": [step.describe() for step in plan(config)] if changed else []}


def in_place(data: dict[str, Any]) -> bool:
    """Whether everything a recorded apply added is still there (a reboot or a hand ``tc qdisc del`` removes it)."""
    config = data.get("config") or {}
    if any(c.get("queue") is not None for c in config.get("constraints", [])) and not _daemon_alive(data.get("daemon")):
        return False
    return all(_still_there(undo[0]) for undo in data.get("undo", []) if undo)


def _still_there(undo: list[str]) -> bool:
    """Whether what ``undo`` would remove exists (undo commands of ``plan``'s steps, by their shape)."""
    if undo[:2] == ["tc", "qdisc"]:
        device = undo[undo.index("dev") + 1]
        return f"qdisc {'ingress ffff:' if 'ingress' in undo else f'htb {TC_HANDLE}: root'}" in \
            sh(["tc", "qdisc", "show", "dev", device], check=False).stdout
    if undo[:3] == ["ip", "link", "del"]:
        return sh(["ip", "link", "show", undo[3]], check=False).returncode == 0
    if "-D" in undo:  # the jump into one of our iptables chains
        return sh([arg if arg != "-D" else "-C" for arg in undo], check=False).returncode == 0
    if undo[1:3] == ["delete", "table"]:
        return sh([undo[0], "list", "table", *undo[3:]], check=False).returncode == 0
    return True  # a chain's flush: its jump above tells


def clear(folder: str) -> list[str]:
    """Undo everything applied; returns what could not be undone (empty when clean)."""
    if not os.path.isdir(folder):
        return []
    state = State(folder)
    problems = undo_all(state, state.load())
    if not problems:
        shutil.rmtree(folder, ignore_errors=True)
    return problems


def show(folder: str) -> dict[str, Any]:
    """What is applied: the config, the daemon, its counters, and the undo commands."""
    path = os.path.join(folder, "state.json")
    if not os.path.exists(path):
        return {"applied": False, "state_dir": folder}
    data = read_json(path)
    pid = data.get("daemon")
    stats_path = os.path.join(folder, "stats.json")
    if pid and _daemon_alive(pid):
        _refresh_stats(pid, stats_path)
    stats = read_json(stats_path) if os.path.exists(stats_path) else None
    return {"applied": True, "state_dir": folder, "config": data.get("config"), "undo": data.get("undo", []),
            "daemon": {"pid": pid, "alive": _daemon_alive(pid)} if pid else None, "stats": stats}


def _refresh_stats(pid: int, stats_path: str, timeout: float = 2.0) -> None:
    """Ask the daemon to write its counters now (it writes them at most once a second otherwise)."""
    before = os.stat(stats_path).st_mtime_ns if os.path.exists(stats_path) else 0
    try:
        os.kill(pid, signal.SIGUSR1)
    except OSError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(stats_path) and os.stat(stats_path).st_mtime_ns != before:
            return
        time.sleep(0.01)


# ── command line ────────────────────────────────────────────────────────────


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="impaird", description="userspace network emulation (NFQUEUE, HTB)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("apply", "apply a config (replaces what is applied)"), ("clear", "remove everything applied"),
                       ("show", "print what is applied as JSON"), ("run", "the daemon (apply starts it)"),
                       ("probe", "print whether the kernel has netem and which packages are missing, as JSON")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"default {DEFAULT_STATE_DIR}")
        if name in ("apply", "run"):
            cmd.add_argument("--config", required=True, help="config file (JSON), - for stdin, or the JSON itself")
        if name == "apply":
            cmd.add_argument("--backend", choices=BACKENDS, help="overrides the config's (default auto)")
            cmd.add_argument("--dry-run", action="store_true", help="check the config, print the commands")
            cmd.add_argument("--check", action="store_true",
                             help="print whether apply would change anything, and its commands, as JSON")
            cmd.add_argument("--netem-vars", action="store_true",
                             help="the config is the netem role's {interfaces, destinations}")
        if name == "run":
            cmd.add_argument("--pidfile", help="written once the queues are bound")
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigProblem as exc:
        sys.stderr.write(f"impaird: bad config: {exc}\n")
        return 2
    except ValueError as exc:  # unreadable JSON
        sys.stderr.write(f"impaird: bad config: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"impaird: {exc}\n")
        return 1
    except CommandFailed as exc:
        sys.stderr.write(f"impaird: {exc}\n")
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return run_daemon(args.config, args.pidfile)
    if args.command == "probe":
        print(json.dumps({"netem": kernel_has_netem(),
                          "missing": {backend: missing_packages(backend) for backend in ("netem", "nfqueue")}}))
        return 0
    if args.command == "apply":
        raw = read_json(args.config)
        if args.netem_vars:
            raw = from_netem_vars(raw)
        if args.backend:
            raw = {**raw, "backend": args.backend}
        if args.dry_run:
            print("\n".join(step.describe() for step in plan(resolve(load_config(raw)))))
            return 0
        result = check(raw, args.state_dir) if args.check else apply(raw, args.state_dir)
        print(json.dumps(result, indent=1, sort_keys=True))
        return 0
    if args.command == "clear":
        problems = clear(args.state_dir)
        for problem in problems:
            sys.stderr.write(f"impaird: could not undo {problem}\n")
        return 1 if problems else 0
    print(json.dumps(show(args.state_dir), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Round trips measured with ping: one script pinging many targets at once, one parser.

``enosnet netem validate`` runs it through Ansible, the bench's environment
checks through their shell; both read the same numbers.

>>> parse_ping("20 packets transmitted, 19 received, 5% packet loss, time 3805ms\\n"
...            "rtt min/avg/max/mdev = 20.001/20.112/21.2/0.3 ms")
Ping(sent=20, received=19, rtt_s=0.020112)
>>> parse_pings(f"## 198.18.0.3\\n3 packets transmitted, 0 received, 100% packet loss\\n")["198.18.0.3"].loss
1.0
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
AVERAGE = re.compile(r"= [\d.]+/([\d.]+)/[\d.]+/[\d.]+ ms")


@dataclass(frozen=True)
class Ping:
    """What ping said about one target: packets sent and answered, the average RTT in seconds."""

    sent: int = 0
    received: int = 0
    rtt_s: float | None = None

    @property
    def loss(self) -> float:
        """The fraction unanswered (all of it when nothing was sent)."""
        return (self.sent - self.received) / self.sent if self.sent else 1.0


def ping_script(*, count: int, interval: float) -> str:
    """A ``sh -c`` script pinging each of its arguments at once, each answer under a ``## <address>`` line.

    Every ping stops at its own deadline, so the script ends within ``count × interval + 5`` seconds.
    """
    deadline = int(count * interval) + 5
    return (f'd=$(mktemp -d); i=0; for t in "$@"; do i=$((i+1)); '
            f'(echo "## $t"; ping -n -q -c {count} -i {interval:g} -w {deadline} "$t") '
            f'> "$d/$i" 2>&1 & done; wait; cat "$d"/*; rm -rf "$d"')


def ping_command(addresses: Iterable[str], *, count: int, interval: float) -> str:
    """One shell line running ``ping_script`` on ``addresses``."""
    return shlex.join(["sh", "-c", ping_script(count=count, interval=interval), "ping", *addresses])


def parse_pings(text: str) -> dict[str, Ping]:
    """Address → ``Ping`` from ``ping_script``'s output."""
    out = {}
    for chunk in text.split("## ")[1:]:
        address, _, rest = chunk.partition("\n")
        out[address.strip()] = parse_ping(rest)
    return out


def parse_ping(text: str) -> Ping:
    """One ``ping -q`` summary (nothing sent when it has none)."""
    match = SUMMARY.search(text)
    if not match:
        return Ping()
    rtt = AVERAGE.search(text)
    return Ping(int(match[1]), int(match[2]), round(float(rtt[1]) / 1000, 9) if rtt else None)

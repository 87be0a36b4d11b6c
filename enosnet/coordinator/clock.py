"""Agents' clocks as the coordinator sees them: NTP-style exchanges, the offset of the fastest kept.

A scheduled start is sent to each agent in its own clock, so every link needs
an offset before its first ``run``; the exchanges also tell what one request
round per agent costs, which sizes the lead of a scheduled start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from enosnet.coordinator.agent.wire import MessageType
from enosnet.coordinator.channel import Channel, Link, raise_lost
from enosnet.coordinator.model import Timeouts


class Clock:
    """Clock offsets and RTTs of links, measured over ``channel``."""

    def __init__(self, channel: Channel, timeouts: Timeouts, base: Callable[[], dict[str, Any]]) -> None:
        self.channel, self.timeouts, self.base = channel, timeouts, base
        self.round_per_link: float | None = None  # seconds per agent of one request round

    async def sync(self, links: Sequence[Link], *, what: str) -> None:
        """Exchange with every link at once (``clock_samples`` rounds, within ``Timeouts.request``).

        Raises ``WorkerLost`` naming the links that did not answer (``what``: no answer within … from).
        """
        if not links:
            return
        deadline = asyncio.get_running_loop().time() + self.timeouts.request
        spread = self.channel.spread(len(links))
        rounds = clock_rounds(self.timeouts.clock_samples, len(links))
        began = time.monotonic()
        results = await asyncio.gather(*(self.sync_one(link, deadline, spread, rounds) for link in links),
                                       return_exceptions=True)
        raise_lost(links, results, f"{what}: no answer within {self.timeouts.request:g} s from")
        self.round_per_link = (time.monotonic() - began) / rounds / len(links)

    async def sync_one(self, link: Link, deadline: float, spread: float = 0.0, rounds: int | None = None) -> None:
        """NTP-style exchanges with one link; keep the offset of the one with the smallest RTT."""
        best: tuple[int, int] | None = None
        for _ in range(rounds or max(self.timeouts.clock_samples, 1)):
            msg, t0, t3 = await self.channel.request(link, MessageType.HELLO, self.base(), deadline, spread)
            t1, t2 = int(msg.payload.get("t1", 0)), msg.ts
            rtt, offset = (t3 - t0) - (t2 - t1), ((t1 - t0) + (t2 - t3)) // 2
            if best is None or rtt < best[0]:
                best = (rtt, offset)
        assert best is not None
        link.rtt_ns, link.raw_offset_ns = max(best[0], 0), best[1]
        link.offset_ns = plausible_offset(best[1], link.rtt_ns)


ROUNDS_FULL_UP_TO = 200  # links exchanged with at once beyond which fewer rounds are as good (clock_rounds)


def clock_rounds(samples: int, links: int) -> int:
    """How many exchanges per link a clock sync of ``links`` at once makes: ``samples``, fewer for many links.

    Past a few hundred links in flight, an exchange's RTT is mostly the
    coordinator's own queue, not the path: at 1000 loopback agents the
    median RTT kept was 45-68 ms after 5 rounds and 40-44 ms after 2. More
    rounds then only cost time (0.09 ms per exchange); a link's offset is
    bounded by half its RTT either way. Two rounds are kept, so one slow
    exchange is not all there is.

    >>> clock_rounds(5, 10), clock_rounds(5, 200), clock_rounds(5, 400), clock_rounds(5, 1000), clock_rounds(1, 9)
    (5, 5, 2, 2, 1)
    """
    samples = max(samples, 1)
    return min(samples, max(2, samples * ROUNDS_FULL_UP_TO // max(links, 1)))


def plausible_offset(offset: int, rtt: int) -> int:
    """The offset closest to zero that the exchange allows.

    One NTP-style exchange only bounds the true offset to ``offset ± rtt/2``
    (the two legs may be unequal). Hosts with synchronised clocks (NTP, or the
    one kernel clock of local namespace hosts) measured under load would
    otherwise get the asymmetry of their legs as a correction, i.e. as start skew.

    >>> plausible_offset(5_000_000, 30_000_000), plausible_offset(-40_000_000, 30_000_000)
    (0, -25000000)
    """
    half = rtt // 2
    if abs(offset) <= half:
        return 0
    return offset - half if offset > 0 else offset + half

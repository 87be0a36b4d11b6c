"""The agent's events for its coordinator, sent again with a backoff until acknowledged.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp). An event
(a service is ready, a run is done) goes out at once, then again after
0.25 s, 0.5 s, … up to every 4 s, until the coordinator acknowledges it;
after 10 minutes without an acknowledgement it is given up.
"""

from __future__ import annotations

from typing import Any

EVENT_FIRST_S, EVENT_MAX_S, EVENT_GIVE_UP_S = 0.25, 4.0, 600.0


class Outbox:
    """Unacknowledged events by id, each with when it is next due."""

    def __init__(self) -> None:
        self.events: dict[str, dict[str, Any]] = {}

    def add(self, event_id: str, payload: dict[str, Any], now: float) -> None:
        payload["ev"] = event_id
        self.events[event_id] = {"payload": payload, "next": 0.0, "interval": EVENT_FIRST_S, "first": now}

    def take_due(self, now: float, *, sending: bool) -> list[tuple[dict[str, Any], bool]]:
        """The payloads due now, each with whether it is a retransmission (none unless ``sending``);
        events too old are given up either way."""
        out = []
        for event_id, event in list(self.events.items()):
            if now - event["first"] > EVENT_GIVE_UP_S:
                del self.events[event_id]
                continue
            if not sending or event["next"] > now:
                continue
            out.append((event["payload"], bool(event["next"])))
            event["next"] = now + event["interval"]
            event["interval"] = min(event["interval"] * 2, EVENT_MAX_S)
        return out

    def next_due(self) -> float | None:
        return min((e["next"] for e in self.events.values()), default=None)

    def rewind(self, now: float) -> None:
        """Every event due again now, with a fresh backoff (a new coordinator claimed the agent)."""
        for event in self.events.values():
            event.update(next=0.0, interval=EVENT_FIRST_S, first=now)

    def acked(self, event_ids: list[str]) -> list[str]:
        """Forget the acknowledged events; the ids that were pending."""
        return [event_id for event_id in event_ids if self.events.pop(event_id, None) is not None]

"""The agents part of ``enosnet status``: one row per agent (state, clock offset, RTT, datagrams)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.table import Table

from enosnet.coordinator.core import AgentStatus
from enosnet.coordinator.status import agent_status
from enosnet.environment import Environment
from enosnet.model import Host, Roles
from enosnet.providers.base import HostStatus


def agents_of(environment: Environment, rows: Iterable[HostStatus]) -> list[AgentStatus]:
    """Status of the agents on the reachable hosts of ``rows`` (none when the environment has no agents)."""
    by_role: dict[str, list[Host]] = {}
    for row in rows:
        if row.reachable:
            for role in row.roles:
                by_role.setdefault(role, []).append(row.host)
    return agent_status(environment, Roles(by_role), port=environment.state().agent_port)


def print_agents(console: Console, agents: list[AgentStatus]) -> None:
    """A table of agents; nothing when there are none."""
    if not agents:
        return
    table = Table("agent", "state", "offset ms", "rtt ms", "sent", "received", "retransmitted", "rejected",
                  title="agents")
    for agent in agents:
        counters = agent.counters
        rejected = ", ".join(f"{k}={v}" for k, v in sorted((counters.get("drop") or {}).items())) or "0"
        colour = "red" if agent.state == "unreachable" else "yellow" if agent.state == "busy" else "green"
        table.add_row(agent.worker, f"[{colour}]{agent.state}[/{colour}]", _ms(agent.offset_ms), _ms(agent.rtt_ms),
                      str(counters.get("tx", "-")), str(counters.get("rx", "-")), str(counters.get("retx", "-")),
                      rejected)
    console.print(table)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

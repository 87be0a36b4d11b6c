"""Agent status for ``enosnet status``: state, clock offset, RTT and datagram counters per agent."""

from __future__ import annotations

import asyncio

from enosnet.coordinator.agent.wire import DEFAULT_PORT
from enosnet.coordinator.core import AgentStatus, Coordinator, Timeouts, workers_from_roles
from enosnet.environment import Environment
from enosnet.model import Roles


def agent_env_id(env: Environment) -> str:
    """The environment id agents of ``env`` are configured with (its directory name)."""
    return env.name


def agent_status(env: Environment, roles: Roles, *, port: int = DEFAULT_PORT, timeout: float = 1.5,
                 force: bool = False) -> list[AgentStatus]:
    """Ask every agent of ``roles`` how it is, without taking them over (a running bench keeps them).

    Agents in a timed phase answer ``busy`` unless ``force``; silent ones are
    ``unreachable``. Returns nothing when the environment has no agent secret.

    >>> agent_status(Environment("/nonexistent"), Roles({}))
    []
    """
    if not env.secret_file.exists() or not roles:
        return []
    coordinator = Coordinator(workers_from_roles(roles, port=port), env_id=agent_env_id(env), secret=env.secret(),
                              timeouts=Timeouts(request=timeout, rto_first=0.1, rto_max=0.4, clock_samples=3),
                              claim=False)

    async def ask() -> list[AgentStatus]:
        async with coordinator:
            return await coordinator.status(force=force)

    return asyncio.run(ask())

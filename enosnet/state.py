"""What an environment's ``state.json`` says, typed: read it here instead of with string keys.

The providers write the state as they go (``Environment.update_state``), so
that a crash leaves enough for ``destroy``. Everything else reads it through
:class:`EnvState`: whether hosts are deployed, which, how to reach the
agents, which config was deployed.

>>> s = EnvState.from_json({"acquired": True, "roles": {"server": [{"address": "198.18.0.2"}]},
...                         "config": {"agent": {"port": 7800}}})
>>> [h.address for h in s.deployed.all()], s.agent_port, s.released
(['198.18.0.2'], 7800, False)
>>> EnvState.from_json({}).deployed is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enosnet.model import Networks, Roles


@dataclass(frozen=True)
class AgentState:
    """How the agents were installed: the id they answer to and their port."""

    env_id: str
    port: int


@dataclass(frozen=True)
class EnvState:
    """One environment's state: its provider's progress, its hosts, its agents, the config deployed."""

    kind: str | None = None
    name: str | None = None
    acquired: bool = False
    released: bool = False
    config: Mapping[str, Any] | None = None  # the EnvConfig as deployed, in its JSON form
    roles: Roles = field(default_factory=Roles)
    networks: Networks = field(default_factory=Networks)
    agent: AgentState | None = None
    provider: Mapping[str, Any] = field(default_factory=dict)  # the provider's own records (ids, links, groups)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnvState:
        from enosnet.coordinator.agent.wire import DEFAULT_PORT  # the coordinator package, only when read

        agent, provider, roles = data.get("agent"), data.get("provider") or {}, data.get("roles") or {}
        for name, value in (("provider", provider), ("roles", roles)):
            if not isinstance(value, dict):
                raise ValueError(f"{name} is {type(value).__name__}, not an object")
        return cls(kind=data.get("kind"), name=data.get("name"), acquired=bool(data.get("acquired")),
                   released=bool(data.get("released")), config=data.get("config") or None,
                   roles=Roles.from_dict(roles),
                   networks=Networks.from_list(data.get("networks") or []),
                   agent=AgentState(str(agent.get("env_id") or ""), int(agent.get("port") or DEFAULT_PORT))
                   if isinstance(agent, dict) else None,
                   provider=dict(provider))

    @property
    def deployed(self) -> Roles | None:
        """The hosts while they are acquired and not released, else ``None``."""
        return self.roles if self.acquired and not self.released and self.roles.all() else None

    @property
    def agent_port(self) -> int:
        """The agents' port: as installed, else as the config asks, else the default."""
        from enosnet.coordinator.agent.wire import DEFAULT_PORT

        if self.agent is not None:
            return self.agent.port
        return int(((self.config or {}).get("agent") or {}).get("port") or DEFAULT_PORT)

"""``enosnet status`` shows every agent: state, clock offset, RTT and datagram counters."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from typer.testing import CliRunner

from enosnet.cli import app
from enosnet.coordinator import iperf3_actions
from enosnet.coordinator.status import agent_env_id, agent_status
from enosnet.testing import start_agents_over_ssh, stop_agents_over_ssh


@pytest.mark.hosts
def test_status_lists_agents_with_clock_and_counters(local_hosts: Callable[..., Any]) -> None:
    deployment = local_hosts({"server": 1, "client": 1})
    env, roles = deployment.env, deployment.roles
    start_agents_over_ssh(roles, env_id=agent_env_id(env), secret=env.secret(), actions=iperf3_actions())
    try:
        statuses = agent_status(env, roles)
        assert sorted(s.worker for s in statuses) == ["client-0", "server-0"]
        assert all(s.state == "idle" and s.rtt_ms is not None and s.counters["rx"] >= 4 for s in statuses)
        result = CliRunner().invoke(app, ["status", "--env", str(env.root), "--json"])
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        agents = {a["worker"]: a for a in doc["agents"]}
        assert set(agents) == {"client-0", "server-0"}
        assert all(a["state"] == "idle" and a["offset_ms"] is not None and "drop" in a["counters"]
                   for a in agents.values())
        text = CliRunner().invoke(app, ["status", "--env", str(env.root)])
        assert "agents" in text.output and "idle" in text.output
    finally:
        stop_agents_over_ssh(roles.all())
    assert [s.state for s in agent_status(env, roles, timeout=0.5)] == ["unreachable", "unreachable"]

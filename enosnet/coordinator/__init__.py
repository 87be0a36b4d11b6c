"""Coordinator ⇄ agent: many processes on many hosts start when the experiment says.

The agent (``enosnet.coordinator.agent``, shipped as a zipapp by
``build_agent_zipapp``) runs on every host; the ``Coordinator`` (asyncio) or
``SyncCoordinator`` drives them over authenticated UDP. See docs/coordinator.md.
"""

from enosnet.coordinator.catalogue import agent_config, iperf3_actions, netbench_actions
from enosnet.coordinator.core import (
    AgentStatus,
    Coordinator,
    LinkStats,
    PairResult,
    Timeouts,
    Worker,
    WorkerRecord,
    new_run_id,
    workers_from_roles,
)
from enosnet.coordinator.sync import SyncCoordinator
from enosnet.coordinator.zipapp import build_agent_zipapp

__all__ = [
    "AgentStatus",
    "Coordinator",
    "LinkStats",
    "PairResult",
    "SyncCoordinator",
    "Timeouts",
    "Worker",
    "WorkerRecord",
    "agent_config",
    "build_agent_zipapp",
    "iperf3_actions",
    "netbench_actions",
    "new_run_id",
    "workers_from_roles",
]

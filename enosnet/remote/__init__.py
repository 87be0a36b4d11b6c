"""Driving hosts: Ansible through ansible-runner, a fast SSH fan-out for commands and files, and
persistent per-host sessions.

All share one SSH connection setup (``ssh.py``), so connections opened by one
are reused by the others, and report per host with ``HostResult`` (``results.py``).
"""

from enosnet.remote.ansible import Actions, AnsibleOptions, actions, bundled, run_playbook
from enosnet.remote.fanout import Retry, lrun, pull, push, run_command, script, substitute
from enosnet.remote.results import (
    AnsibleHostResult,
    AnsibleResults,
    EventKind,
    HostEvent,
    HostResult,
    Results,
    Status,
    TaskResult,
)
from enosnet.remote.session import Session, fan_out, gather
from enosnet.remote.ssh import SshOptions, close_connections

__all__ = [
    "Actions",
    "AnsibleHostResult",
    "AnsibleOptions",
    "AnsibleResults",
    "EventKind",
    "HostEvent",
    "HostResult",
    "Results",
    "Retry",
    "Session",
    "SshOptions",
    "Status",
    "TaskResult",
    "actions",
    "bundled",
    "close_connections",
    "fan_out",
    "gather",
    "lrun",
    "pull",
    "push",
    "run_command",
    "run_playbook",
    "script",
    "substitute",
]

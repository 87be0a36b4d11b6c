"""enosnet: network benchmark experiments at scale.

>>> import enosnet
>>> enosnet.Host("198.18.0.2").name
'198.18.0.2'
"""

from enosnet.bench import BenchOptions, BenchResult, Experiment, load_experiment, run_experiment
from enosnet.config import EnvConfig, load_config, parse_config
from enosnet.coordinator import Coordinator, SyncCoordinator, WorkerRecord
from enosnet.environment import Environment
from enosnet.errors import (
    BenchError,
    CheckFailed,
    ConfigError,
    CoordinatorError,
    EnosnetError,
    EnvironmentNotFound,
    HostsFailed,
    PrivilegeError,
    ProviderError,
    RemoteError,
    ResultsError,
    SyncTimeout,
    UsageError,
    WorkerLost,
)
from enosnet.model import Host, Network, Networks, Roles
from enosnet.providers import HostStatus, Provider, make_provider
from enosnet.remote import (
    AnsibleOptions,
    AnsibleResults,
    HostEvent,
    HostResult,
    Results,
    SshOptions,
    Status,
    actions,
    close_connections,
    lrun,
    pull,
    push,
    run_command,
    run_playbook,
    script,
)

__version__ = "0.1.0"

__all__ = [
    "AnsibleOptions",
    "AnsibleResults",
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "CheckFailed",
    "ConfigError",
    "Coordinator",
    "CoordinatorError",
    "EnosnetError",
    "EnvConfig",
    "Environment",
    "EnvironmentNotFound",
    "Experiment",
    "Host",
    "HostEvent",
    "HostResult",
    "HostStatus",
    "HostsFailed",
    "Network",
    "Networks",
    "PrivilegeError",
    "Provider",
    "ProviderError",
    "RemoteError",
    "Results",
    "ResultsError",
    "Roles",
    "SshOptions",
    "Status",
    "SyncCoordinator",
    "SyncTimeout",
    "UsageError",
    "WorkerLost",
    "WorkerRecord",
    "actions",
    "close_connections",
    "load_config",
    "load_experiment",
    "lrun",
    "make_provider",
    "parse_config",
    "pull",
    "push",
    "run_command",
    "run_experiment",
    "run_playbook",
    "script",
]

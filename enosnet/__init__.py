"""enosnet: network benchmark experiments at scale.

>>> import enosnet
>>> enosnet.Host("198.18.0.2").name
'198.18.0.2'
"""

from enosnet.config import EnvConfig, load_config, parse_config
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

__version__ = "0.1.0"

__all__ = [
    "BenchError",
    "CheckFailed",
    "ConfigError",
    "CoordinatorError",
    "EnosnetError",
    "EnvConfig",
    "Environment",
    "EnvironmentNotFound",
    "Host",
    "HostStatus",
    "HostsFailed",
    "Network",
    "Networks",
    "PrivilegeError",
    "Provider",
    "ProviderError",
    "RemoteError",
    "ResultsError",
    "Roles",
    "SyncTimeout",
    "UsageError",
    "WorkerLost",
    "load_config",
    "make_provider",
    "parse_config",
]

"""enosnet: network benchmark experiments at scale.

The common path is one call: ``enosnet.deploy(config)`` returns a ``Testbed``
(hosts acquired, tools and agents installed) whose methods run commands,
benchmarks, reports and backups on those hosts; ``enosnet.attach(env)`` is the
testbed of an environment deployed earlier. Everything an experiment script
needs is importable from here.

>>> import enosnet
>>> enosnet.Host("198.18.0.2").name
'198.18.0.2'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from enosnet.environment import Environment
from enosnet.errors import (
    BenchError,
    CheckFailed,
    ConfigError,
    CoordinatorError,
    EnosnetError,
    EnvironmentBusy,
    EnvironmentNotFound,
    HostsFailed,
    InstallError,
    PrivilegeError,
    ProviderError,
    RemoteError,
    ResultsError,
    SyncTimeout,
    UsageError,
    WorkerLost,
)
from enosnet.model import Host, Network, Networks, Roles

if TYPE_CHECKING:
    from enosnet.bench import (
        BenchOptions,
        BenchResult,
        Experiment,
        RunFinished,
        RunStarted,
        load_experiment,
        run_experiment,
    )
    from enosnet.config import EnvConfig, load_config, parse_config
    from enosnet.coordinator import Coordinator, SyncCoordinator, WorkerRecord
    from enosnet.installer import InstallOptions, InstallReport, build_netbench, install
    from enosnet.netem import Constraint, Netem, RttCheck
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
    from enosnet.results.compare import CompareResult, compare
    from enosnet.results.report import Report, build_report
    from enosnet.testbed import Testbed, acquire, attach, deploy

# Everything that needs pydantic, boto3, Ansible or matplotlib loads on first use, so `import enosnet`
# (and every CLI start) stays fast.
_LAZY = {
    "enosnet.config": ("EnvConfig", "load_config", "parse_config"),
    "enosnet.providers": ("HostStatus", "Provider", "make_provider"),
    "enosnet.bench": ("BenchOptions", "BenchResult", "Experiment", "RunFinished", "RunStarted", "load_experiment",
                      "run_experiment"),
    "enosnet.coordinator": ("Coordinator", "SyncCoordinator", "WorkerRecord"),
    "enosnet.installer": ("InstallOptions", "InstallReport", "build_netbench", "install"),
    "enosnet.netem": ("Constraint", "Netem", "RttCheck"),
    "enosnet.results.compare": ("CompareResult", "compare"),
    "enosnet.results.report": ("Report", "build_report"),
    "enosnet.testbed": ("Testbed", "acquire", "attach", "deploy"),
    "enosnet.remote": ("AnsibleOptions", "AnsibleResults", "HostEvent", "HostResult", "Results", "SshOptions",
                       "Status", "actions", "close_connections", "lrun", "pull", "push", "run_command",
                       "run_playbook", "script"),
}
_LAZY_NAMES = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _LAZY_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'enosnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_NAMES})


__version__ = "0.1.0"

__all__ = [
    "AnsibleOptions",
    "AnsibleResults",
    "BenchError",
    "BenchOptions",
    "BenchResult",
    "CheckFailed",
    "CompareResult",
    "ConfigError",
    "Constraint",
    "Coordinator",
    "CoordinatorError",
    "EnosnetError",
    "EnvConfig",
    "Environment",
    "EnvironmentBusy",
    "EnvironmentNotFound",
    "Experiment",
    "Host",
    "HostEvent",
    "HostResult",
    "HostStatus",
    "HostsFailed",
    "InstallError",
    "InstallOptions",
    "InstallReport",
    "Netem",
    "Network",
    "Networks",
    "PrivilegeError",
    "Provider",
    "ProviderError",
    "RemoteError",
    "Report",
    "Results",
    "ResultsError",
    "Roles",
    "RttCheck",
    "RunFinished",
    "RunStarted",
    "SshOptions",
    "Status",
    "SyncCoordinator",
    "SyncTimeout",
    "Testbed",
    "UsageError",
    "WorkerLost",
    "WorkerRecord",
    "acquire",
    "actions",
    "attach",
    "build_netbench",
    "build_report",
    "close_connections",
    "compare",
    "deploy",
    "install",
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

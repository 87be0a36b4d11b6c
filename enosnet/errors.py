"""Every error enosnet raises, under one root.

::

    EnosnetError
    ├── ConfigError (also ValueError)     the caller's input is wrong: fix it and retry
    │   └── UsageError                    a command was called in a way that cannot work
    ├── EnvironmentNotFound               no environment directory where one was expected
    ├── EnvironmentBusy                   another command is deploying, benchmarking or destroying it
    ├── ProviderError                     acquiring or releasing hosts failed
    │   └── PrivilegeError                the provider needs root and does not have it
    ├── RemoteError                       talking to hosts failed
    │   └── HostsFailed                   some hosts failed; carries the per-host results
    ├── InstallError                      building what deploy installs failed (on the controller)
    ├── CoordinatorError                  the UDP coordinator could not drive its agents
    │   ├── WorkerLost                    agents stopped answering
    │   └── SyncTimeout                   agents did not reach a state before a deadline
    ├── BenchError                        an experiment could not run
    │   └── CheckFailed                   an environment check failed before measuring
    └── ResultsError                      the results store, report or backup failed

Operational failures (everything but ``ConfigError``) say what failed and where;
caller mistakes say which field or argument is wrong and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class EnosnetError(Exception):
    """Root of every error enosnet raises."""


class ConfigError(EnosnetError, ValueError):
    """Input from the caller (config file, experiment file, argument) is invalid.

    ``problems`` lists ``(where, reason)`` pairs, ``where`` being e.g.
    ``demo.yaml:3 roles.server``.
    """

    def __init__(self, message: str, problems: Iterable[tuple[str, str]] = ()) -> None:
        self.problems = list(problems)
        if self.problems:
            lines = "\n".join(f"  {where}: {reason}" for where, reason in self.problems)
            message = f"{message}\n{lines}"
        super().__init__(message)


class UsageError(ConfigError):
    """A command or function was called in a way that cannot work."""


class EnvironmentNotFound(EnosnetError):
    """No enosnet environment directory at the given place."""


class EnvironmentBusy(EnosnetError):
    """Another enosnet command holds the environment (deploy, bench, destroy); nothing was done."""


class ProviderError(EnosnetError):
    """Acquiring, inspecting or releasing hosts failed.

    ``code`` is the provider's own error code (an AWS error code, an exit
    status) when there is one; ``hint`` says what to do about it.
    """

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        self.code = code
        self.hint = hint
        text = message if code is None else f"{message} [{code}]"
        if hint:
            text = f"{text}\n  hint: {hint}"
        super().__init__(text)


class PrivilegeError(ProviderError):
    """The provider needs privileges (root) that this process does not have."""


class InstallError(EnosnetError):
    """Building what ``deploy`` installs failed on the controller (e.g. a cargo build of s2n-netbench)."""


class RemoteError(EnosnetError):
    """Running commands, transfers or Ansible on hosts failed."""


class HostsFailed(RemoteError):
    """Some hosts failed; ``results`` maps each host to its result."""

    def __init__(self, results: Mapping[Any, Any], message: str | None = None) -> None:
        self.results = results
        failed = [str(host) for host, result in results.items() if not getattr(result, "ok", False)]
        text = message or f"{len(failed)} of {len(results)} hosts failed: {', '.join(failed)}"
        super().__init__(text)


class CoordinatorError(EnosnetError):
    """The coordinator could not drive its agents."""


class WorkerLost(CoordinatorError):
    """Agents stopped answering; ``workers`` names them (the message names the first 20)."""

    def __init__(self, workers: Iterable[str], message: str) -> None:
        self.workers = sorted(workers)
        super().__init__(f"{message}: {_names(self.workers)}")


class SyncTimeout(CoordinatorError):
    """Agents did not reach a state before the deadline; ``workers`` names them (the message the first 20)."""

    def __init__(self, workers: Iterable[str], message: str) -> None:
        self.workers = sorted(workers)
        super().__init__(f"{message}: {_names(self.workers)}")


def _names(names: list[str], shown: int = 20) -> str:
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class BenchError(EnosnetError):
    """An experiment could not be run."""


class CheckFailed(BenchError):
    """An environment check failed before measuring."""


class ResultsError(EnosnetError):
    """The results store, the report or a backup failed."""

"""What running something on many hosts gives back: one result per host, with views.

>>> from enosnet.model import Host
>>> a, b = Host("198.18.0.2", alias="a"), Host("198.18.0.3", alias="b")
>>> results = Results({a: HostResult(a, Status.OK, rc=0, stdout="hi\\n"),
...                    b: HostResult(b, Status.FAILED, rc=2, stderr="no\\n")})
>>> [h.name for h in results.ok], [h.name for h in results.failed]
(['a'], ['b'])
>>> results["b"]
HostResult(b, failed, rc=2, attempts=1, 0.00s)
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

from enosnet.errors import HostsFailed
from enosnet.model import FrozenVars, Host


class Status(enum.StrEnum):
    """How one host (or one task on a host) ended."""

    OK = "ok"
    FAILED = "failed"  # it ran and failed (non-zero exit, failed module)
    UNREACHABLE = "unreachable"  # no connection, even after retries (refused, timed out, wrong key)
    TIMEOUT = "timeout"  # it did not finish within its timeout
    SKIPPED = "skipped"  # an Ansible task whose condition was false
    ERROR = "error"  # a local problem (missing file, unusable path)


SUCCESS = frozenset({Status.OK, Status.SKIPPED})


@dataclass(frozen=True, repr=False)
class HostResult:
    """One host's outcome of a command, a transfer or a script.

    ``rc`` is None when nothing ran to completion; ``message`` says why a host
    failed when its output does not (unreachable, timed out, local error).
    """

    host: Host
    status: Status
    rc: int | None = None
    stdout: str = ""
    stderr: str = ""
    attempts: int = 1
    duration: float = 0.0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host.name, "address": self.host.address, "status": str(self.status), "rc": self.rc,
                "stdout": self.stdout, "stderr": self.stderr, "attempts": self.attempts,
                "duration": round(self.duration, 6), "message": self.message}

    def __repr__(self) -> str:
        return f"HostResult({self.host.name}, {self.status}, rc={self.rc}, attempts={self.attempts}, " \
               f"{self.duration:.2f}s)"


@dataclass(frozen=True, repr=False)
class TaskResult:
    """One Ansible task on one host: ``action`` is the module, ``data`` its returned values."""

    host: Host
    task: str
    action: str
    status: Status
    changed: bool = False
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=FrozenVars)

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host.name, "task": self.task, "action": self.action, "status": str(self.status),
                "changed": self.changed, "message": self.message}

    def __repr__(self) -> str:
        changed = ", changed" if self.changed else ""
        return f"TaskResult({self.host.name}, {self.task!r}, {self.status}{changed})"


@dataclass(frozen=True, repr=False)
class AnsibleHostResult:
    """One host's outcome of an Ansible run: its tasks in order, and how it ended overall."""

    host: Host
    status: Status
    tasks: tuple[TaskResult, ...] = ()
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS

    @property
    def changed(self) -> int:
        """How many tasks changed something on this host."""
        return sum(t.changed for t in self.tasks)

    def task(self, name: str) -> TaskResult:
        """The (last) result of the task called ``name``; raises KeyError."""
        for result in reversed(self.tasks):
            if result.task == name:
                return result
        raise KeyError(f"{self.host.name}: no task named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host.name, "status": str(self.status), "message": self.message,
                "changed": self.changed, "tasks": [t.to_dict() for t in self.tasks]}

    def __repr__(self) -> str:
        return f"AnsibleHostResult({self.host.name}, {self.status}, tasks={len(self.tasks)}, changed={self.changed})"


class _Outcome(Protocol):
    @property
    def host(self) -> Host: ...

    @property
    def ok(self) -> bool: ...


R = TypeVar("R", bound=_Outcome)


class Results(Mapping[Host, R], Generic[R]):
    """Host → result, in host order. Index by Host or by host name.

    ``.ok`` and ``.failed`` are the same kind of map restricted to hosts that
    succeeded or failed; ``raise_for_failures()`` raises ``HostsFailed``.
    """

    def __init__(self, results: Mapping[Host, R]) -> None:
        self._results = dict(results)

    def __getitem__(self, key: Host | str) -> R:
        if isinstance(key, str):
            for host, result in self._results.items():
                if key in (host.name, host.address):
                    return result
            raise KeyError(key)
        return self._results[key]

    def __iter__(self) -> Iterator[Host]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    @property
    def ok(self) -> Self:
        return self._where(True)

    @property
    def failed(self) -> Self:
        return self._where(False)

    def _where(self, ok: bool) -> Self:
        subset = copy.copy(self)
        subset._results = {h: r for h, r in self._results.items() if r.ok is ok}
        return subset

    def raise_for_failures(self, what: str | None = None) -> Self:
        """Self when every host succeeded, else raise ``HostsFailed`` carrying these results (the message
        starts with ``what`` failed, when given)."""
        if self.failed:
            summary = failure_summary(self)
            raise HostsFailed(self, f"{what} failed: {summary}" if what else summary)
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.ok)} ok, {len(self.failed)} failed)"


class AnsibleResults(Results[AnsibleHostResult]):
    """Per-host Ansible results, plus where ansible-runner left its artifacts."""

    def __init__(self, results: Mapping[Host, AnsibleHostResult], *, artifacts: Path | None = None,
                 runner_status: str = "", rc: int | None = None) -> None:
        super().__init__(results)
        self.artifacts = artifacts
        self.runner_status = runner_status
        self.rc = rc


def failure_summary(results: Mapping[Host, Any], limit: int = 10) -> str:
    """``N of T hosts failed`` and one line per failed host (host: what went wrong)."""
    failed = [r for r in results.values() if not r.ok]
    lines = [f"{len(failed)} of {len(results)} hosts failed"]
    for result in failed[:limit]:
        lines.append(f"  {result.host.name}: {describe_failure(result)}")
    if len(failed) > limit:
        lines.append(f"  … and {len(failed) - limit} more")
    return "\n".join(lines)


def describe_failure(result: Any) -> str:
    """A one-line reason for a failed HostResult or AnsibleHostResult."""
    if isinstance(result, AnsibleHostResult):
        return result.message or str(result.status)
    if result.message:
        return str(result.message)
    last = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:]
    detail = f": {last[0]}" if last else ""
    return f"{result.status}, rc={result.rc}{detail}"


class EventKind(enum.StrEnum):
    """What a HostEvent reports."""

    PLAY = "play"  # a play starts (host is None)
    TASK = "task"  # a task starts (host is None)
    OK = "ok"
    CHANGED = "changed"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped"


@dataclass(frozen=True, repr=False)
class HostEvent:
    """Progress of an Ansible run: a play or task starting, or one host's task outcome."""

    kind: EventKind
    host: Host | None = None
    task: str = ""
    message: str = ""
    payload: Mapping[str, Any] = field(default_factory=FrozenVars)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "host": self.host.name if self.host else None, "task": self.task,
                "message": self.message}

    def __repr__(self) -> str:
        where = f"{self.host.name}, " if self.host else ""
        return f"HostEvent({where}{self.kind}, {self.task!r})"

"""Typed events an experiment emits while it runs; the CLI renders them, each run folder keeps them as JSON lines.

>>> e = RunFinished(position=3, index=0, total=12, label="cc=reno #0", status="ok", reason=None,
...                 headline=("throughput", 9.4e9, "bit/s"), seconds=4.2, folder="runs/x")
>>> event_json(e)["kind"]
'run_finished'
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enosnet.results.store import CheckResult


@dataclass(frozen=True)
class ExperimentStarted:
    """The plan is known: ``total`` runs to do now, ``skipped`` already committed (``--resume``)."""

    name: str
    experiment_id: int
    total: int
    skipped: int
    seed: int
    order: str
    estimate_s: float
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ChecksDone:
    """Every environment check made before the first run (failed ones overridden when ``forced``)."""

    results: tuple[CheckResult, ...]
    forced: bool
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RunStarted:
    position: int
    index: int
    total: int
    label: str
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RunFinished:
    """One run committed; ``headline`` is (metric, value, unit) when the driver has one."""

    position: int
    index: int
    total: int
    label: str
    status: str
    reason: str | None
    headline: tuple[str, float, str] | None
    seconds: float
    folder: str
    at: float = field(default_factory=time.time)
    fidelity: tuple[str, ...] = ()  # why the testbed may not have kept up (see enosnet.bench.fidelity)


@dataclass(frozen=True)
class ExperimentFinished:
    name: str
    done: int
    failed: int
    database: str
    runs_dir: str
    seconds: float
    at: float = field(default_factory=time.time)


Event = ExperimentStarted | ChecksDone | RunStarted | RunFinished | ExperimentFinished
Listener = Callable[[Event], None]


def event_json(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict with a ``kind`` field (snake_case of its class)."""
    kind = re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()
    return {"kind": kind, **dataclasses.asdict(event)}

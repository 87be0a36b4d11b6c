"""From an experiment to the runs it makes: combinations × repetitions, in a recorded order.

Each run has a stable key (its parameters and repetition), so a resumed
experiment knows what was done, and a position in the full order, which
``--only`` filtering does not change.

>>> from enosnet.bench.spec import parse_experiment
>>> spec = parse_experiment("name: x\\nduration: 1s\\nrepetitions: 2\\norder: as-written\\n"
...                         "parameters: {cc: [cubic, reno]}")
>>> [(r.params["cc"], r.repetition) for r in make_plan(spec).runs]
[('cubic', 0), ('reno', 0), ('cubic', 1), ('reno', 1)]
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from enosnet.bench.spec import Experiment
from enosnet.errors import UsageError
from enosnet.results.store import run_key

# What a run costs beyond its timed phase, for the dry-run estimate (measured by benchmarks/bench_overhead.py).
RUN_OVERHEAD_S = 1.5


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan: parameters, repetition, position in the full order, stable key."""

    key: str
    params: Mapping[str, Any]
    repetition: int
    position: int

    def label(self) -> str:
        """``cc=reno delay=20ms #1``: parameters and repetition, for humans."""
        values = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{values} #{self.repetition}".strip()


@dataclass(frozen=True)
class Plan:
    """The runs of an experiment in execution order, and how they were ordered."""

    experiment: Experiment
    runs: Sequence[PlannedRun]
    seed: int
    order: str
    filters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def estimate_s(self, *, per_run_overhead_s: float = RUN_OVERHEAD_S) -> float:
        """Expected wall time of the remaining runs."""
        return len(self.runs) * (self.experiment.duration_s + per_run_overhead_s)

    def without(self, done: Iterable[str]) -> Plan:
        """The plan minus runs whose keys are in ``done`` (what ``--resume`` skips)."""
        skip = set(done)
        return Plan(self.experiment, [r for r in self.runs if r.key not in skip], self.seed, self.order, self.filters)


def make_plan(spec: Experiment, *, only: Sequence[str] = ()) -> Plan:
    """Every run of ``spec`` in order (shuffled with the recorded seed, or as written), filtered by ``only``.

    ``only`` holds ``K=V`` filters: runs whose parameter K equals V (as text);
    several values for one K are alternatives, different Ks must all match.
    """
    seed = spec.effective_seed
    if spec.order == "shuffled":
        rng = random.Random(seed)
        runs = [(combo, rep) for rep in range(spec.repetitions) for combo in _block(spec.combinations(), rng)]
    else:
        runs = [(combo, rep) for rep in range(spec.repetitions) for combo in spec.combinations()]
    planned = [PlannedRun(run_key(combo, rep), combo, rep, position) for position, (combo, rep) in enumerate(runs)]
    filters = parse_only(only, spec)
    kept = [r for r in planned if _matches(r.params, filters)]
    if filters and not kept:
        raise UsageError(f"--only {' '.join(only)}: no run matches")
    return Plan(spec, kept, seed, spec.order, filters)


def _block(combinations: Sequence[Mapping[str, Any]], rng: random.Random) -> list[Mapping[str, Any]]:
    """One repetition's runs in a random order: every combination once, and each combination's builds back to back.

    Each repetition is a block holding every combination once, so slow drift
    of the testbed over the experiment falls on every combination alike. The
    builds of one combination run one right after the other, in a random order,
    so that what a build comparison pairs was measured minutes, not hours, apart.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for combo in combinations:
        groups.setdefault(run_key({k: v for k, v in combo.items() if k != "build"}, 0), []).append(combo)
    order = list(groups.values())
    rng.shuffle(order)
    for group in order:
        rng.shuffle(group)
    return [combo for group in order for combo in group]


def parse_only(only: Sequence[str], spec: Experiment) -> dict[str, tuple[str, ...]]:
    """``["cc=reno", "cc=cubic", "delay=0ms"]`` → ``{"cc": ("reno", "cubic"), "delay": ("0ms",)}``."""
    filters: dict[str, tuple[str, ...]] = {}
    names = spec.parameter_names
    for item in only:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--only {item!r}: expected K=V, e.g. --only cc=reno")
        if key not in names:
            raise UsageError(f"--only {item!r}: no parameter {key!r} (parameters: {', '.join(names) or 'none'})")
        filters[key] = (*filters.get(key, ()), value)
    return filters


def _matches(params: Mapping[str, Any], filters: Mapping[str, tuple[str, ...]]) -> bool:
    return all(str(params.get(k)) in values for k, values in filters.items())

"""Experiments: an experiment file → runs (sweep × repetitions, in a recorded order) → drivers → results database.

- :mod:`enosnet.bench.spec`: the experiment file (pydantic), ``load_experiment``
- :mod:`enosnet.bench.plan`: runs in order with stable keys, ``--only`` filters, the dry-run estimate
- :mod:`enosnet.bench.checks`: environment checks made before measuring
- :mod:`enosnet.bench.metadata`: host metadata, one command per host
- :mod:`enosnet.bench.runner`: ``run_experiment`` (each run committed atomically; resumable)
- :mod:`enosnet.bench.drivers`: the drivers (iperf3, s2n-netbench, packages' own), found by name
- :mod:`enosnet.bench.builds`: an experiment's ``builds:`` built and copied side by side to the hosts

>>> from enosnet.bench import parse_experiment, make_plan
>>> len(make_plan(parse_experiment("name: x\\nrepetitions: 3\\nparameters: {cc: [cubic, reno]}")).runs)
6
"""

from enosnet.bench.events import (
    ChecksDone,
    Event,
    ExperimentFinished,
    ExperimentStarted,
    RunFinished,
    RunStarted,
)
from enosnet.bench.plan import Plan, PlannedRun, make_plan
from enosnet.bench.runner import BenchOptions, BenchResult, run_experiment
from enosnet.bench.spec import Experiment, load_experiment, parse_experiment

__all__ = [
    "BenchOptions",
    "BenchResult",
    "ChecksDone",
    "Event",
    "Experiment",
    "ExperimentFinished",
    "ExperimentStarted",
    "Plan",
    "PlannedRun",
    "RunFinished",
    "RunStarted",
    "load_experiment",
    "make_plan",
    "parse_experiment",
    "run_experiment",
]

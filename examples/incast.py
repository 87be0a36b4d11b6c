"""The incast experiment through the Python API, as an experiment script would run it.

Acquires the local hosts of incast-env.yaml (released at the end, also on errors), starts the
agents, runs incast.yaml, prints one line per run, then builds the report.
Run as root: `sudo .venv/bin/python examples/incast.py`.
"""

from __future__ import annotations

import time
from pathlib import Path

from enosnet import Environment, load_config, make_provider
from enosnet.bench import BenchOptions, RunFinished, load_experiment, run_experiment
from enosnet.bench.events import Event
from enosnet.bench.runner import agent_access
from enosnet.coordinator import default_actions
from enosnet.coordinator.install import start_agents_over_ssh
from enosnet.results.report import build_report

HERE = Path(__file__).resolve().parent


def show(event: Event) -> None:
    if isinstance(event, RunFinished):
        value = f"{event.headline[1] / 1e9:.2f} Gbit/s" if event.headline else event.reason
        print(f"{event.index + 1}/{event.total} {event.label}: {event.status} {value}")


def main() -> None:
    env = Environment(Path(".enosnet") / time.strftime("incast-api-%Y%m%dT%H%M%SZ", time.gmtime()))
    spec = load_experiment(HERE / "incast.yaml")
    with make_provider(load_config(HERE / "incast-env.yaml"), env) as (roles, _networks):
        access = agent_access(env)
        start_agents_over_ssh(roles, env_id=access.env_id, secret=access.secret, actions=default_actions(),
                              port=access.port)
        result = run_experiment(env, spec, options=BenchOptions(), on_event=show)
    print(f"{result.done} runs ok, {result.failed} failed; results in {result.database}")
    print(f"report: {build_report(env).html}")


if __name__ == "__main__":
    main()

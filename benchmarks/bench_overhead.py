"""What `enosnet bench` costs: does it disturb the measurement, and how long does a run take beyond its timed phase?

1. Throughput of one iperf3 client/server pair measured by `enosnet bench` vs the same iperf3 commands run
   by hand over SSH on the same two hosts, interleaved in the same session: median of each and the ratio
   (target ≥ 0.98).
2. Per-run overhead on 5 hosts (1 server, 4 clients): wall time of each run minus its timed phase (target
   ≤ 1.5 s), and minus the nominal duration.

Run as root: `sudo .venv/bin/python benchmarks/bench_overhead.py [--rounds 5] [--duration 3]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from enosnet.bench.drivers import default_actions
from enosnet.bench.events import Event, RunFinished, RunStarted
from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import parse_experiment
from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.model import Host, Roles
from enosnet.providers.local import LocalProvider
from enosnet.remote.session import Session
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

MANUAL_PORT = 5301


def deploy(base: Path, name: str, roles: Mapping[str, int | Mapping[str, object]]) -> tuple[
        LocalProvider, Environment, Roles]:
    """Local hosts (a role: a count, or a local role spec such as ``{"count": 1, "cpus": 0.5}``) with agents."""
    counts = ", ".join(f"{k}: {json.dumps(v)}" for k, v in roles.items())  # JSON is YAML's flow style
    env = Environment(base / name)
    provider = LocalProvider(parse_config(f"name: {name}\nprovider: {{kind: local}}\nroles: {{{counts}}}\n"), env)
    acquired, _ = provider.init()
    access = agent_access(env)
    start_agents_over_ssh(acquired, env_id=access.env_id, secret=access.secret, actions=default_actions(),
                          port=access.port)
    return provider, env, acquired


def bench_once(env: Environment, name: str, duration: float, repetitions: int = 1,
               listener: Callable[[Event], None] | None = None) -> list[RunFinished]:
    spec = parse_experiment(f"name: {name}\nduration: {duration}s\nrepetitions: {repetitions}\norder: as-written\n"
                            "iperf3: {server_role: server, client_role: client}\n")
    finished: list[RunFinished] = []

    def keep(event: Event) -> None:
        if isinstance(event, RunFinished):
            finished.append(event)
        if listener is not None:
            listener(event)

    run_experiment(env, spec, on_event=keep)
    return finished


def bench_throughputs(env: Environment, name: str) -> list[float]:
    """Each run's throughput as `enosnet bench` measured it, in run order."""
    with ResultsStore.open(env.db_file, create=False) as store:
        exp = store.experiment(name)
        return [m.value for m in store.metrics(experiment=exp.id, name="throughput")]


def manual_throughput(shell: Session, server: Host, client: Host, duration: float) -> float:
    """The same iperf3 pair by hand: a one-off server, then the client with -J, both over SSH."""
    started = shell.run(server, f"iperf3 -s -p {MANUAL_PORT} -1 -D && sleep 0.2")
    if not started.ok:
        raise RuntimeError(f"iperf3 server: {started.stderr}")
    out = shell.run(client, f"iperf3 -c {shlex.quote(server.address)} -p {MANUAL_PORT} -t {int(duration)} -J",
                    timeout=duration + 30)
    data = json.loads(out.stdout)
    if data.get("error"):
        raise RuntimeError(f"iperf3 client: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"])


def overhead(env: Environment, events: list[RunFinished], duration: float) -> dict[str, list[float]]:
    """Per run: wall time minus the timed phase (first client start to last client end), minus ``duration``,
    and the parts before (netem, servers, arming) and after (stop, pull, parse, commit) the timed phase."""
    with ResultsStore.open(env.db_file, create=False) as store:
        runs = {r.position: r for r in store.runs(experiment=store.experiment("overhead5").id)}
    out: dict[str, list[float]] = {"phase": [], "nominal": [], "before": [], "after": []}
    for event in events:
        run = runs[event.position]
        out["nominal"].append(event.seconds - duration)
        if run.started is not None and run.ended is not None:
            out["phase"].append(event.seconds - (run.ended - run.started))
            out["before"].append(run.started - (event.at - event.seconds))
            out["after"].append(event.at - run.ended)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--overhead-runs", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bnch")
    with tempfile.TemporaryDirectory(prefix="enosnet-bench-overhead-") as tmp:
        made: list[LocalProvider] = []
        try:
            provider, pair_env, pair = deploy(Path(tmp), "pair", {"server": 1, "client": 1})
            made.append(provider)
            by_hand: list[float] = []
            with Session() as shell:
                started: list[RunStarted] = []

                def by_hand_beside(event: Event) -> None:
                    # interleaved, order alternating: by hand before the bench run in odd rounds, after it in
                    # even ones, so neither side always runs on a machine just warmed (or loaded) by the other
                    if isinstance(event, RunStarted):
                        started.append(event)
                    before = len(started) % 2 == 1
                    if isinstance(event, RunStarted if before else RunFinished):
                        by_hand.append(manual_throughput(shell, pair["server"][0], pair["client"][0],
                                                         args.duration))

                bench_once(pair_env, "pair", args.duration, repetitions=args.rounds, listener=by_hand_beside)
            by_bench = bench_throughputs(pair_env, "pair")
            for i, (a, b) in enumerate(zip(by_bench, by_hand, strict=True)):
                print(f"round {i + 1}: enosnet {a / 1e9:.2f} Gbit/s, by hand {b / 1e9:.2f} Gbit/s", flush=True)
            provider.destroy()
            made.remove(provider)
            ratio = statistics.median(by_bench) / statistics.median(by_hand)
            print(f"\nthroughput, one pair, {args.duration:g} s runs × {args.rounds} rounds "
                  "(by hand before the bench run, then after it, alternating):")
            print(f"  enosnet bench median {statistics.median(by_bench) / 1e9:.2f} Gbit/s, by hand over SSH median "
                  f"{statistics.median(by_hand) / 1e9:.2f} Gbit/s, ratio {ratio:.3f} (target ≥ 0.98)")
            paired = statistics.median(a / b for a, b in zip(by_bench, by_hand, strict=True))
            print(f"  median of the per-round ratios {paired:.3f}; load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} CPUs")

            provider, env5, _ = deploy(Path(tmp), "five", {"server": 1, "client": 4})
            made.append(provider)
            events = bench_once(env5, "overhead5", 1.0, repetitions=args.overhead_runs)
            parts = overhead(env5, events, 1.0)
            print(f"\nper-run overhead on 5 hosts (1 server, 4 clients), {len(events)} runs of 1 s:")
            print(f"  beyond the timed phase: median {statistics.median(parts['phase']):.2f} s, "
                  f"max {max(parts['phase']):.2f} s (target ≤ 1.5 s)")
            print(f"    before it (servers up, scheduled start): median {statistics.median(parts['before']):.2f} s; "
                  f"after it (stop, pull, parse, commit): median {statistics.median(parts['after']):.2f} s")
            print(f"  beyond the nominal duration: median {statistics.median(parts['nominal']):.2f} s, "
                  f"max {max(parts['nominal']):.2f} s")
            print(f"  load average during the benchmark: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        finally:
            for p in made:
                p.destroy()


if __name__ == "__main__":
    main()

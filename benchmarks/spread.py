"""How much does the 0 ms throughput of one iperf3 pair vary between repetitions, with and without isolation?

Three environments of 1 server + 1 client on this machine, measured in the same session with their runs
interleaved (the order rotates every round, so drift in the machine's load biases none of them):

- shared: no limits, both hosts on every core (what local hosts were before control groups);
- pinned: `cpuset: auto`, a core of its own per host;
- pinned + limited: as pinned, plus `cpus: 0.95` and `memory: 1G` per host.

Per environment: median, coefficient of variation, (max - min) / median, and how many runs the fidelity
check flagged; then the CV of each relative to shared.

Run as root: `sudo .venv/bin/python benchmarks/spread.py [--rounds 5] [--duration 3]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from bench_overhead import bench_once, deploy  # the same deploy and single-run helpers, one implementation

from enosnet.environment import Environment
from enosnet.providers.local import LocalProvider

PINNED = {"count": 1, "cpuset": "auto"}
LIMITED = {**PINNED, "cpus": 0.95, "memory": "1G"}
SETUPS: dict[str, dict[str, int | dict[str, object]]] = {
    "shared": {"server": 1, "client": 1},
    "pinned": {"server": PINNED, "client": PINNED},
    "pinned + limited": {"server": LIMITED, "client": LIMITED},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args()
    os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "sprd")
    names = list(SETUPS)
    with tempfile.TemporaryDirectory(prefix="enosnet-bench-spread-") as tmp:
        made: dict[str, tuple[LocalProvider, Environment]] = {}
        try:
            for i, (label, roles) in enumerate(SETUPS.items()):
                provider, env, _ = deploy(Path(tmp), f"setup{i}", roles)
                made[label] = (provider, env)
            values: dict[str, list[float]] = {label: [] for label in names}
            flagged: dict[str, int] = dict.fromkeys(names, 0)
            for r in range(args.rounds):
                order = names[r % len(names):] + names[:r % len(names)]
                for label in order:
                    [event] = bench_once(made[label][1], f"r{r}", args.duration)
                    if event.status != "ok" or event.headline is None:
                        print(f"round {r + 1} {label}: failed: {event.reason}")
                        continue
                    values[label].append(event.headline[1])
                    flagged[label] += bool(event.fidelity)
                    print(f"round {r + 1} {label:>16}: {event.headline[1] / 1e9:6.2f} Gbit/s"
                          + (f"  flagged: {'; '.join(event.fidelity)}" if event.fidelity else ""), flush=True)
        finally:
            for provider, _ in made.values():
                provider.destroy()
    print(f"\n0 ms throughput, one iperf3 pair, {args.duration:g} s runs × {args.rounds} rounds, interleaved, "
          f"on {os.cpu_count()} CPUs:")
    cvs = {}
    for label in names:
        v = values[label]
        if len(v) < 2:
            print(f"  {label:>16}: too few successful runs")
            continue
        median = statistics.median(v)
        cvs[label] = statistics.stdev(v) / statistics.mean(v)
        print(f"  {label:>16}: median {median / 1e9:.2f} Gbit/s, CV {cvs[label] * 100:.1f} %, "
              f"(max - min) / median {(max(v) - min(v)) / median * 100:.1f} %, flagged {flagged[label]} of {len(v)}")
    if "shared" in cvs:
        for label in names[1:]:
            if label in cvs and cvs["shared"] > 0:
                print(f"  CV {label} / CV shared: {cvs[label] / cvs['shared']:.2f}")


if __name__ == "__main__":
    main()

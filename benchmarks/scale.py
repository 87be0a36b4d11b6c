"""Scale: how each operation's cost grows with the number of hosts, next to the tool a user would use instead.

For each size (default 10, 50 and 200 local hosts) and round, interleaved:

  hosts up / down        enosnet's local provider    vs a bare netns + veth + sshd script
  run `uname -r`, cold   `enosnet run` (no master)   vs parallel-ssh
  run `uname -r`, warm   `enosnet run` (masters up)  vs parallel-ssh
  push 10 MB             `enosnet push`              vs parallel-scp
  first / second deploy  install (agent, tools)      vs `ansible all -m ping`
  bench run              one 2 s iperf3 run, 1 server + N-1 clients: time beyond the timed phase
  report                 `enosnet report` of that experiment

Prints medians and ratios per size and, per operation, the exponent of a
power-law fit of its cost over the sizes (1: linear in hosts, 0: flat).
Nothing passes or fails. Needs root and the Debian package pssh::

    .venv/bin/python benchmarks/scale.py [--sizes 10 50 200] [--rounds 3] [--ops up,run,push,deploy,bench]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bscal")
sys.path.insert(0, str(Path(__file__).parent))

import deploy as deploy_bench  # the peers and helpers of the per-operation benchmarks
import fanout as fanout_bench
import hosts as hosts_bench

from enosnet.bench.runner import run_experiment
from enosnet.bench.spec import parse_experiment
from enosnet.config import parse_config
from enosnet.coordinator import build_agent_zipapp
from enosnet.environment import Environment
from enosnet.installer import InstallOptions, install
from enosnet.providers.local import LocalProvider
from enosnet.remote import close_connections

OPS = ("up", "run", "push", "deploy", "bench")
Times = dict[str, list[float]]


def one_size(n: int, rounds: int, ops: Sequence[str], work: Path) -> Times:
    """Every chosen operation and its peer, ``rounds`` times, on ``n`` hosts."""
    times: Times = {}

    def note(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)
        print(f"  {n:>4} hosts  {name:34s} {seconds:8.2f} s", flush=True)

    bins = deploy_bench.binaries(work / "netbench")
    pyz = build_agent_zipapp(work / "agent.pyz")
    hosts_bench.bare_config(work)
    for r in range(rounds):
        if "up" in ops:
            bare_up, bare_down = hosts_bench.time_bare(n, work)
            note("peer: bare netns+sshd up", bare_up)
            note("peer: bare netns+sshd down", bare_down)
        env = Environment(work / f"env{n}-{r}")
        config = parse_config(f"name: scale{n}\nprovider: {{kind: local}}\nroles: {{server: 1, client: {n - 1}}}\n")
        provider = LocalProvider(config, env)
        started = time.perf_counter()
        roles, _ = provider.init(force=True)
        hosts = list(roles.all())
        try:
            if "up" in ops:
                note("enosnet hosts up", time.perf_counter() - started)
            bench = fanout_bench.Bench(env, roles, work)
            # both sides handle at most 64 hosts at once (enosnet's default -p): 200 handshakes at once on
            # 2 cores time out in the banner exchange, whichever tool makes them
            bench.n = min(n, 64)
            if "run" in ops:
                bench.cold()
                note("enosnet run, cold", bench.enosnet_run())
                note("peer: parallel-ssh", bench.pssh())
                bench.warm()
                note("enosnet run, warm", bench.enosnet_run())
            if "push" in ops:
                note("enosnet push 10 MB", bench.push())
                note("peer: parallel-scp 10 MB", bench.pscp())
            if "deploy" in ops or "bench" in ops:
                options = InstallOptions(netbench_dir=bins, agent_pyz=pyz)
                note("peer: ansible all -m ping", deploy_bench.ping(env, n))
                note("enosnet first deploy", install(env, roles, options=options).duration)
                note("enosnet second deploy", install(env, roles, options=options).duration)
            if "bench" in ops:  # the deploy above started the agents
                spec = parse_experiment(f"name: scale{n}r{r}\nduration: 2s\nrepetitions: 1\n"
                                        "checks: {netem: false}\n")
                began = time.perf_counter()
                result = run_experiment(env, spec)
                if result.failed:
                    raise RuntimeError(f"the bench run failed on {n} hosts")
                note("enosnet bench run, beyond 2 s", time.perf_counter() - began - 2.0)
                began = time.perf_counter()
                fanout_bench.timed([str(fanout_bench.BIN / "enosnet"), "report", "--experiment", spec.name,
                                    "--env", str(env.root), "--out", str(work / f"report{n}-{r}")], cwd=work)
                note("enosnet report", time.perf_counter() - began)
        finally:
            close_connections(hosts)
            began = time.perf_counter()
            provider.destroy()
            if "up" in ops:
                note("enosnet hosts down", time.perf_counter() - began)
    return times


PAIRS = [("enosnet hosts up", "peer: bare netns+sshd up"), ("enosnet hosts down", "peer: bare netns+sshd down"),
         ("enosnet run, cold", "peer: parallel-ssh"), ("enosnet run, warm", "peer: parallel-ssh"),
         ("enosnet push 10 MB", "peer: parallel-scp 10 MB"), ("enosnet first deploy", "peer: ansible all -m ping"),
         ("enosnet second deploy", "peer: ansible all -m ping"), ("enosnet bench run, beyond 2 s", None),
         ("enosnet report", None)]


def exponent(points: Sequence[tuple[int, float]]) -> float | None:
    """The slope of log(cost) over log(hosts), least squares: cost ∝ hosts^slope."""
    pts = [(math.log(n), math.log(t)) for n, t in points if t > 0]
    if len(pts) < 2:
        return None
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    var = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / var if var else None


def report(results: dict[int, Times], rounds: int, show: Callable[[str], None] = print) -> None:
    sizes = sorted(results)
    show(f"\nmedians of {rounds} round(s), seconds; ratio = enosnet / peer; growth = exponent over "
         f"{', '.join(map(str, sizes))} hosts")
    show(f"| operation | peer | {' | '.join(f'{n} hosts' for n in sizes)} | growth (enosnet / peer) |")
    show(f"|---|---|{'---|' * len(sizes)}---|")
    for ours, peer in PAIRS:
        cells, ours_pts, peer_pts = [], [], []
        for n in sizes:
            a = results[n].get(ours)
            b = results[n].get(peer) if peer else None
            if not a:
                cells.append("–")
                continue
            ma = statistics.median(a)
            ours_pts.append((n, ma))
            if b:
                mb = statistics.median(b)
                peer_pts.append((n, mb))
                cells.append(f"{ma:.2f} vs {mb:.2f} ({ma / mb:.2f}×)")
            else:
                cells.append(f"{ma:.2f}")
        if not ours_pts:
            continue
        growth = exponent(ours_pts)
        growth_peer = exponent(peer_pts)
        fit = "–" if growth is None else f"{growth:.2f}" + ("" if growth_peer is None else f" / {growth_peer:.2f}")
        show(f"| {ours} | {peer.removeprefix('peer: ') if peer else '–'} | {' | '.join(cells)} | {fit} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {', '.join(OPS)}")
    args = parser.parse_args()
    ops = [op for op in args.ops.split(",") if op]
    unknown = sorted(set(ops) - set(OPS))
    if unknown:
        parser.error(f"unknown ops {', '.join(unknown)} (known: {', '.join(OPS)})")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    results: dict[int, Times] = {}
    with tempfile.TemporaryDirectory(prefix="bscal-") as tmp:
        for n in args.sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            results[n] = one_size(n, args.rounds, ops, folder)
    report(results, args.rounds)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

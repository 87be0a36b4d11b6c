"""What enosnet costs an s2n-netbench measurement, and what building once saves.

1. Throughput per driver (tcp, s2n-tls, s2n-quic): `enosnet bench` vs the same binaries, scenario and
   hosts run by hand over SSH (server started, client timed inside its host, server killed),
   interleaved run by run, by-hand side alternating before and after: medians and ratio (target ≥ 0.98).
2. Per-run overhead on 5 hosts (4 servers, 1 client: netbench's incast): a run's wall time beyond its
   client's own run time (target ≤ 1.5 s).
3. Deploy to N local hosts (default 20): the netbench role pushing one controller build (cached) vs
   building on every host: one real `cargo install` of the tcp driver and the tools into an empty target
   folder, as each host would run it, times N (time and CPU).

Run as root after `make netbench`: `.venv/bin/python benchmarks/netbench.py [--rounds 5] [--hosts 20]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from enosnet.bench.drivers import default_actions
from enosnet.bench.events import Event, RunFinished, RunStarted
from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import parse_experiment
from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.installer import InstallOptions, install
from enosnet.model import FrozenVars, Host, Roles
from enosnet.netbench_build import HOST_TOOLS, build, crates_for, rust_tool
from enosnet.providers.local import LocalProvider
from enosnet.remote.session import Session
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

DRIVERS = ("tcp", "s2n-tls", "s2n-quic")
MANUAL_PORT = 4533


def deploy(base: Path, name: str, roles: dict[str, int], bin_dir: Path) -> tuple[LocalProvider, Environment, Roles]:
    counts = ", ".join(f"{k}: {v}" for k, v in roles.items())
    env = Environment(base / name)
    provider = LocalProvider(parse_config(f"name: {name}\nprovider: {{kind: local}}\nroles: {{{counts}}}\n"), env)
    acquired, _ = provider.init()
    access = agent_access(env)
    start_agents_over_ssh(acquired, env_id=access.env_id, secret=access.secret,
                          actions=default_actions(netbench={"bin_dir": str(bin_dir)}), port=access.port)
    return provider, env, acquired


def experiment(name: str, bin_dir: Path, options: str, repetitions: int) -> str:
    return (f"name: {name}\ndriver: netbench\nduration: 5s\nrepetitions: {repetitions}\norder: as-written\n"
            f"netbench:\n  generate: {{program: {bin_dir / 's2n-netbench-scenarios'}, options: {{{options}}}}}\n"
            f"  drivers: [{', '.join(DRIVERS)}]\n")


def by_hand(shell: Session, server: Host, client: Host, bin_dir: Path, driver: str, response: int) -> float:
    """The same driver pair by hand over SSH: throughput from the client's own run time inside its host."""
    scenario = "/var/lib/enosnet/scenarios/byhand.json"
    make = f"{bin_dir}/s2n-netbench-scenarios --request_response.response_size {response} /tmp/byhand >/dev/null"
    made = shell.run(server, f"{make} && cat /tmp/byhand/request_response.json")  # one scenario: one certificate
    for host in (server, client):
        shell.run(host, f"mkdir -p /var/lib/enosnet/scenarios && cat > {scenario}", stdin=made.stdout.encode())
    start = shell.run(server, f"PORT={MANUAL_PORT} nohup {bin_dir}/s2n-netbench-driver-server-{driver} "
                              f"{scenario} >/dev/null 2>&1 & sleep 0.3")
    if not start.ok:
        raise RuntimeError(f"server: {start.stderr}")
    timed = (f"s=$(date +%s%N); SERVER_0={shlex.quote(server.address)}:{MANUAL_PORT} TRACE=disabled "
             f"{bin_dir}/s2n-netbench-driver-client-{driver} {scenario} || exit 1; echo $(( $(date +%s%N) - s ))")
    out = shell.run(client, timed, timeout=120)
    shell.run(server, f"pkill -f s2n-netbench-driver-server-{driver}; true")
    if not out.ok:
        raise RuntimeError(f"client: {out.stderr}")
    return response * 8 / (int(out.stdout.strip()) / 1e9)


def throughput(base: Path, bin_dir: Path, rounds: int, response: int) -> None:
    provider, env, pair = deploy(base, "pair", {"server": 1, "client": 1}, bin_dir)
    manual: dict[str, list[float]] = {d: [] for d in DRIVERS}
    try:
        with Session() as shell:
            started: list[RunStarted] = []

            def beside(event: Event) -> None:
                if isinstance(event, RunStarted):
                    started.append(event)
                driver = DRIVERS[(len(started) - 1) % len(DRIVERS)]
                before = len(started) % 2 == 1  # alternate: by hand before this run, then after the next
                if isinstance(event, RunStarted if before else RunFinished):
                    manual[driver].append(by_hand(shell, pair["server"][0], pair["client"][0], bin_dir, driver,
                                                  response))

            spec = parse_experiment(experiment("pair", bin_dir, f"response_size: {response}", rounds))
            run_experiment(env, spec, on_event=beside)
        with ResultsStore.open(env.db_file, create=False) as store:
            measured: dict[str, list[float]] = {d: [] for d in DRIVERS}
            for m in store.metrics(name="throughput"):
                measured[str(m.params["driver"])].append(m.value)
    finally:
        provider.destroy()
    print(f"\nthroughput, 1 server + 1 client, {response / 1e6:.0f} MB response, {rounds} rounds per driver:")
    for d in DRIVERS:
        a, b = statistics.median(measured[d]), statistics.median(manual[d])
        print(f"  {d:9s} enosnet median {a / 1e9:.2f} Gbit/s, by hand {b / 1e9:.2f} Gbit/s, ratio {a / b:.3f} "
              "(target ≥ 0.98)")


def overhead(base: Path, bin_dir: Path, runs: int) -> None:
    provider, env, _ = deploy(base, "five", {"server": 4, "client": 1}, bin_dir)
    events: list[RunFinished] = []
    try:
        spec = parse_experiment(experiment("five", bin_dir, "servers: 4, response_size: 10MB", runs))
        run_experiment(env, spec, on_event=lambda e: events.append(e) if isinstance(e, RunFinished) else None)
        with ResultsStore.open(env.db_file, create=False) as store:
            duration = {m.run_id: m.value for m in store.metrics(name="duration")}
            position = {r.id: r.position for r in store.runs()}
    finally:
        provider.destroy()
    by_position = {position[run_id]: seconds for run_id, seconds in duration.items()}
    extra = [e.seconds - by_position[e.position] for e in events if e.position in by_position]
    print(f"\nper-run overhead on 5 hosts (4 servers, 1 client), {len(extra)} runs:")
    print(f"  wall time beyond the client's own run time: median {statistics.median(extra):.2f} s, "
          f"max {max(extra):.2f} s (target ≤ 1.5 s)")


def deploy_cost(base: Path, hosts: int) -> None:
    crates = crates_for(["tcp"], tools=HOST_TOOLS)
    built = build(crates)
    provider, env, roles = deploy(base, "many", {"host": hosts}, built.bin_dir)
    try:
        options = InstallOptions(agent=False, netbench_dir=built.bin_dir,
                                 netbench_vars=FrozenVars({"netbench_drivers": ["tcp"]}))
        cpu0, t0 = _cpu(), time.monotonic()
        install(env, roles, options=options)
        push_s, push_cpu = time.monotonic() - t0, _cpu() - cpu0
    finally:
        provider.destroy()
    with tempfile.TemporaryDirectory(prefix="nb-build-") as scratch:
        cpu0, t0 = _cpu(), time.monotonic()
        for crate in crates:  # what every host would do: the same crates, from an empty target folder
            subprocess.run([rust_tool("cargo"), "install", "--locked", "--root", scratch, crate, "--version",
                            f"={crates[crate]}"], env={**os.environ, "CARGO_TARGET_DIR": f"{scratch}/target"},
                           check=True, capture_output=True)
        one_s, one_cpu = time.monotonic() - t0, _cpu() - cpu0
    print(f"\ndeploy of s2n-netbench (tcp driver and tools) to {hosts} local hosts:")
    print(f"  build once (cached) and push: {push_s:.1f} s, {push_cpu:.1f} CPU s")
    everywhere = hosts * one_cpu / (os.cpu_count() or 1)  # the hosts share this machine's cores
    print(f"  one host building for itself: {one_s:.0f} s, {one_cpu:.0f} CPU s; {hosts} hosts on this machine's "
          f"{os.cpu_count()} cores: at least {everywhere:.0f} s, {hosts * one_cpu:.0f} CPU s")
    print(f"  ratio (building everywhere / build once and push): time ≥ {everywhere / push_s:.0f}x, "
          f"CPU {hosts * one_cpu / push_cpu:.0f}x")


def _cpu() -> float:
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--overhead-runs", type=int, default=6)
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--response", type=int, default=1_000_000_000, help="bytes the client receives per run")
    parser.add_argument("--skip-build", action="store_true", help="skip the per-host build measurement (minutes)")
    args = parser.parse_args()
    os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bnb")
    bin_dir = build(crates_for(DRIVERS, tools=("s2n-netbench-scenarios",))).bin_dir
    with tempfile.TemporaryDirectory(prefix="enosnet-bench-netbench-") as tmp:
        throughput(Path(tmp), bin_dir, args.rounds, args.response)
        overhead(Path(tmp), bin_dir, args.overhead_runs)
        if not args.skip_build:
            deploy_cost(Path(tmp), args.hosts)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

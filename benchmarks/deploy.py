"""Install step: first and second ``deploy`` on 20 and 100 local hosts, next to a bare ``ansible all -m ping``.

Each round acquires fresh hosts (not timed), then runs, interleaved: ping,
first install, ping, second install, ping. The peer is Ansible's own ping
module on the same inventory with the same forks and pipelining: the least
any Ansible-driven deploy can cost. Targets: first deploy ≤ 10×, second
deploy ≤ 3× ping. The install pushes the real s2n-netbench binaries (built
once per machine, like ``make netbench``; ``--stand-ins`` pushes tiny
scripts instead). Run as root::

    .venv/bin/python benchmarks/deploy.py [--hosts 20 100] [--rounds 3] [--stand-ins]

To compare with another revision, run this same script with that
revision's package first on the path (``PYTHONPATH=/path/to/checkout``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from enosnet.config import parse_config
from enosnet.coordinator import build_agent_zipapp
from enosnet.environment import Environment
from enosnet.installer import InstallOptions, install
from enosnet.netbench_build import build, crates_for
from enosnet.providers.local import LocalProvider

os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bdepl")
ANSIBLE = str(Path(sys.executable).with_name("ansible"))
BINARIES = ["s2n-netbench-collector", "s2n-netbench-scenarios", "s2n-netbench-driver-server-tcp",
            "s2n-netbench-driver-client-tcp", "s2n-netbench-driver-server-s2n-quic",
            "s2n-netbench-driver-client-s2n-quic"]


def binaries(folder: Path, *, real: bool = True) -> Path:
    """The folder of netbench binaries to push: the real build (cached per machine) or stand-ins."""
    if real:
        return build(crates_for(["tcp", "s2n-quic"])).bin_dir
    return stand_ins(folder)


def stand_ins(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    for name in BINARIES:
        (folder / name).write_text(f"#!/bin/sh\necho {name}\n")
        (folder / name).chmod(0o755)
    return folder


def ping(env: Environment, forks: int) -> float:
    """Seconds for ``ansible all -m ping`` on the environment's inventory."""
    environ = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_HOST_KEY_CHECKING": "True"}
    start = time.monotonic()
    out = subprocess.run([ANSIBLE, "all", "-i", str(env.inventory_file), "-m", "ping", "-f", str(forks)],
                         env=environ, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    if out.returncode != 0:
        raise RuntimeError(f"ansible ping failed: {out.stdout[-2000:]}")
    return elapsed


def one_round(folder: Path, hosts: int, bins: Path, pyz: Path) -> tuple[float, float, float, int]:
    """(median ping s, first install s, second install s, changes in the second install) on fresh hosts."""
    half = hosts // 2
    text = f"name: bench\nprovider: {{kind: local}}\nroles: {{server: {half}, client: {hosts - half}}}\n"
    env = Environment(folder / "env")
    provider = LocalProvider(parse_config(text), env)
    try:
        roles, _ = provider.init()
        options = InstallOptions(netbench_dir=bins, agent_pyz=pyz)
        pings = [ping(env, hosts)]
        first = install(env, roles, options=options)
        pings.append(ping(env, hosts))
        second = install(env, roles, options=options)
        pings.append(ping(env, hosts))
        return statistics.median(pings), first.duration, second.duration, second.changed
    finally:
        provider.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stand-ins", action="store_true", help="push tiny scripts, not the real binaries")
    args = parser.parse_args()
    rows: dict[int, list[tuple[float, float, float, int]]] = {n: [] for n in args.hosts}
    with tempfile.TemporaryDirectory(prefix="enosnet-bench-deploy-") as tmp:
        bins = binaries(Path(tmp) / "netbench", real=not args.stand_ins)
        pyz = build_agent_zipapp(Path(tmp) / "agent.pyz")  # once: the sources may change while it runs
        for i in range(args.rounds):
            for n in args.hosts:  # sizes interleaved, so a slow spell of the machine hits all of them
                row = one_round(Path(tmp) / f"r{i}-{n}", n, bins, pyz)
                rows[n].append(row)
                print(f"round {i + 1}, {n} hosts: ping {row[0]:.2f} s, first deploy {row[1]:.1f} s, "
                      f"second deploy {row[2]:.1f} s ({row[3]} changes)", flush=True)
    print(f"\n{'real' if not args.stand_ins else 'stand-in'} netbench binaries, {args.rounds} rounds (medians)")
    for n, done in rows.items():
        ping_s, first_s, second_s = (statistics.median(r[k] for r in done) for k in range(3))
        print(f"{n} local hosts")
        print(f"  ansible all -m ping : {ping_s:6.2f} s")
        print(f"  first deploy        : {first_s:6.2f} s  ({first_s / ping_s:.1f}× ping; target ≤ 10×)")
        print(f"  second deploy       : {second_s:6.2f} s  ({second_s / ping_s:.1f}× ping; target ≤ 3×)")
        print(f"  changes in second deploys: {[r[3] for r in done]}")


if __name__ == "__main__":
    main()

"""Local provider: time to bring up and tear down 10 and 50 hosts, next to a bare shell peer.

The peer is what a person would script by hand: a network namespace and a veth
per host and sshd started with ``ip netns exec`` — no overlay root, no PID or
UTS namespace, no state. Both are timed until every sshd answers, in the same
run, interleaved. Run as root::

    .venv/bin/python benchmarks/hosts.py [--rounds 3] [--sizes 10 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from enosnet.config import parse_config
from enosnet.environment import Environment, make_keypair
from enosnet.model import Host
from enosnet.providers.base import wait_ssh
from enosnet.providers.local import LocalProvider

os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bhost")

BARE_UP = r"""
set -e
n=$1; dir=$2
mkdir -p /run/sshd
ip link add bbare type bridge; ip addr add 198.19.250.1/24 dev bbare; ip link set bbare up
for i in $(seq 1 $n); do
  ip netns add bare$i
  ip link add bare$i type veth peer name eth0 netns bare$i
  ip link set bare$i master bbare up
  ip -n bare$i link set lo up; ip -n bare$i addr add 198.19.250.$((i+1))/24 dev eth0; ip -n bare$i link set eth0 up
  ip netns exec bare$i /usr/sbin/sshd -f $dir/sshd_config -o PidFile=$dir/sshd$i.pid &
done
wait
"""

BARE_DOWN = r"""
n=$1; dir=$2
for i in $(seq 1 $n); do kill $(cat $dir/sshd$i.pid 2>/dev/null) 2>/dev/null; ip netns del bare$i; done
ip link del bbare
while ip -br link | grep -q '^bare'; do sleep 0.05; done  # veths vanish asynchronously
"""


def bare_config(folder: Path) -> None:
    make_keypair(folder / "host_key", comment="bare")
    (folder / "sshd_config").write_text(
        f"HostKey {folder}/host_key\nUsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n")


def time_bare(n: int, folder: Path) -> tuple[float, float]:
    start = time.monotonic()
    try:
        subprocess.run(["bash", "-c", BARE_UP, "up", str(n), str(folder)], check=True, capture_output=True)
        hosts = [Host(f"198.19.250.{i + 1}") for i in range(1, n + 1)]
        if wait_ssh(hosts, time.monotonic() + 30):
            raise RuntimeError("bare sshd did not come up")
        up = time.monotonic() - start
    finally:
        start = time.monotonic()
        subprocess.run(["bash", "-c", BARE_DOWN, "down", str(n), str(folder)], capture_output=True)
    return up, time.monotonic() - start


def time_enosnet(n: int, folder: Path) -> tuple[float, float]:
    config = parse_config(f"name: bench{n}\nprovider: {{kind: local}}\nroles: {{node: {n}}}\n")
    provider = LocalProvider(config, Environment(folder / f"env{n}"))
    start = time.monotonic()
    try:
        provider.init(force=True)
        up = time.monotonic() - start
    finally:
        start = time.monotonic()
        provider.destroy()
    return up, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bare_config(folder)
        results: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(args.rounds):
            for n in args.sizes:
                results.setdefault(("enosnet", n), []).append(time_enosnet(n, folder))
                results.setdefault(("bare", n), []).append(time_bare(n, folder))
    print(f"{'hosts':>5} {'tool':>8} {'up (s)':>8} {'down (s)':>9}   (medians of {args.rounds} rounds)")
    for n in args.sizes:
        med = {tool: [statistics.median(x[i] for x in results[(tool, n)]) for i in (0, 1)]
               for tool in ("enosnet", "bare")}
        for tool in ("enosnet", "bare"):
            print(f"{n:>5} {tool:>8} {med[tool][0]:>8.2f} {med[tool][1]:>9.2f}")
        print(f"{n:>5} {'ratio':>8} {med['enosnet'][0] / med['bare'][0]:>8.2f}x "
              f"{med['enosnet'][1] / med['bare'][1]:>8.2f}x  (enosnet / bare)")


if __name__ == "__main__":
    main()

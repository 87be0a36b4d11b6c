"""impaird (the userspace netem stand-in): delay accuracy, TCP throughput and UDP packet rate through it.

Two local hosts; each round measures, interleaved: no emulation (the peer: the
plain path), impaird with a 1 us delay (the cost of passing through the queue),
and impaird with 20 ms delay. Medians over rounds. Run as root::

    .venv/bin/python benchmarks/emulation.py [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from enosnet.config import parse_config
from enosnet.emulation import IMPAIRD, Constraint, Target, apply, clear, local_runner, show
from enosnet.environment import Environment
from enosnet.model import Host
from enosnet.providers.local import LocalProvider

os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bemu")
PYTHON = "/usr/bin/python3"


class Bench:
    def __init__(self, provider: LocalProvider, client: Host, server: Host) -> None:
        self.provider, self.client, self.server = provider, client, server
        self.target = Target(local_runner(provider.enter(client)), name=client.name, python=PYTHON, path=str(IMPAIRD))

    def sh(self, host: Host, command: str, timeout: float = 60.0) -> str:
        return subprocess.run([*self.provider.enter(host), "sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout).stdout

    def rtts(self, count: int = 200) -> list[float]:
        out = self.sh(self.client, f"ping -n -c {count} -i 0.01 -W 1 {self.server.address}")
        return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]

    def iperf3(self, args: str, seconds: float) -> dict[str, object]:
        out = self.sh(self.client, f"iperf3 -c {self.server.address} -t {seconds} -J {args}", timeout=seconds + 30)
        result: dict[str, object] = json.loads(out)["end"]
        return result

    def tcp_mbps(self, seconds: float) -> float:
        end = self.iperf3("", seconds)
        return float(end["sum_received"]["bits_per_second"]) / 1e6  # type: ignore[index]

    def daemon_cpu(self) -> tuple[float, float]:
        """impaird's CPU seconds so far and the packets it has received."""
        shown = show(self.target)
        fields = self.sh(self.client, f"cat /proc/{shown['daemon']['pid']}/stat").rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        received = sum(q["received"] for q in (shown["stats"] or {"queues": {}})["queues"].values())
        return (int(fields[11]) + int(fields[12])) / ticks, float(received)

    def udp_pps(self, seconds: float) -> tuple[float, float]:
        """Datagrams per second received (64-byte payloads, sent as fast as the client can), and the loss %."""
        s = self.iperf3("-u -b 0 -l 64", seconds)["sum"]
        received = s["packets"] - s["lost_packets"]  # type: ignore[index]
        return received / s["seconds"], float(s["lost_percent"])  # type: ignore[index]


@contextmanager
def hosts() -> Iterator[Bench]:
    with tempfile.TemporaryDirectory() as folder:
        env = Environment(Path(folder) / ".enosnet" / "bemu")
        provider = LocalProvider(parse_config("name: bemu\nprovider: {kind: local}\nroles: {client: 1, server: 1}\n"),
                                 env)
        try:
            roles, _ = provider.init()
            bench = Bench(provider, roles["client"][0], roles["server"][0])
            server = subprocess.Popen([*provider.enter(bench.server), "iperf3", "-s"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                yield bench
            finally:
                server.kill()
                server.wait()
                clear(bench.target)
        finally:
            provider.destroy()


def modes(server: Host) -> dict[str, list[Constraint]]:
    return {"plain": [], "impaird 1us": [Constraint(server.address, delay="1us")],
            "impaird 20ms": [Constraint(server.address, delay="20ms")]}


def measure(bench: Bench, rounds: int, seconds: float) -> dict[str, dict[str, list[float]]]:
    figures: dict[str, dict[str, list[float]]] = {}
    for r in range(rounds):
        for mode, constraints in modes(bench.server).items():
            if constraints:
                apply(bench.target, constraints)
            else:
                clear(bench.target)
            row = figures.setdefault(mode, {})
            row.setdefault("rtt_ms", []).append(statistics.median(bench.rtts()))
            row.setdefault("tcp_mbps", []).append(bench.tcp_mbps(seconds))
            before = bench.daemon_cpu() if constraints else None
            pps, lost = bench.udp_pps(seconds)
            row.setdefault("udp_pps", []).append(pps)
            row.setdefault("udp_lost_pct", []).append(lost)
            if before:
                cpu, packets = (a - b for a, b in zip(bench.daemon_cpu(), before, strict=True))
                row.setdefault("cpu_us_per_pkt", []).append(cpu * 1e6 / max(packets, 1))
            if constraints:
                late = show(bench.target)["stats"]["release_late_us"]
                row.setdefault("late_mean_us", []).append(late["mean"])
                row.setdefault("late_max_us", []).append(late["max"])
            print(f"round {r + 1} {mode:13} " + "  ".join(f"{k}={v[-1]:.4g}" for k, v in row.items()), flush=True)
    clear(bench.target)
    return figures


def report(figures: dict[str, dict[str, list[float]]]) -> None:
    med: Callable[[str, str], float] = lambda mode, key: statistics.median(figures[mode][key])  # noqa: E731
    print("\nmedians over rounds")
    keys = ["rtt_ms", "tcp_mbps", "udp_pps", "udp_lost_pct", "cpu_us_per_pkt", "late_mean_us", "late_max_us"]
    print(f"{'':14}" + "".join(f"{k:>15}" for k in keys))
    for mode in figures:
        print(f"{mode:14}" + "".join(f"{med(mode, k):15.4g}" if k in figures[mode] else f"{'-':>15}" for k in keys))
    added = med("impaird 20ms", "rtt_ms") - med("plain", "rtt_ms")
    print(f"\nadded RTT at 20 ms: {added:.3f} ms (error {added - 20:+.3f} ms)")
    for mode in ("impaird 1us", "impaird 20ms"):
        print(f"{mode}: TCP {med(mode, 'tcp_mbps') / med('plain', 'tcp_mbps'):.2f}x plain, "
              f"UDP {med(mode, 'udp_pps') / med('plain', 'udp_pps'):.2f}x plain pps; impaird CPU "
              f"{med(mode, 'cpu_us_per_pkt'):.1f} us/packet = {1e6 / med(mode, 'cpu_us_per_pkt'):.0f} pps per core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with hosts() as bench:
        report(measure(bench, args.rounds, args.seconds))


if __name__ == "__main__":
    main()

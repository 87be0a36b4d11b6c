"""Coordinator benchmark: start latency, start skew, quiet timed phase, 1000 agents, idle CPU.

Run as root (it builds local namespace hosts)::

    .venv/bin/python benchmarks/coordinator.py [--hosts 50] [--agents 1000] [--reps 5]

Peers measured in the same run, interleaved: servers started over parallel ssh
(the way a command runner does it) against ``start`` + ``wait_ready``; clients
started on receipt of a start message against the scheduled start. Prints medians
and ratios; nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from enosnet.config import parse_config
from enosnet.coordinator import Coordinator, Timeouts, Worker, agent_config, iperf3_actions
from enosnet.environment import Environment
from enosnet.errors import CoordinatorError
from enosnet.model import Host, Roles
from enosnet.remote.ssh import SshOptions, ssh_argv
from enosnet.testing import LocalAgents, start_agents_over_ssh, stop_agents_over_ssh

ACTIONS: dict[str, Any] = {
    **iperf3_actions(),
    "sleep": {"argv": ["sleep", "{seconds}"], "params": {"seconds": {"type": "float", "min": 0, "max": 60}}},
    "true": {"argv": ["true"]},
}


# The machine's floor for start skew: n bare processes at the agent's real-time
# priority sleep, then spin, to one shared instant and take a timestamp -- no
# protocol, no spawn. On a host of its own each would wake within microseconds;
# n of them sharing this machine's CPUs wake one after another, which bounds
# what any per-host agent can do here.
WAKE_FLOOR = r"""
import os, struct, sys, time
n, target = int(sys.argv[1]), time.monotonic_ns() + 1_000_000_000
r, w = os.pipe()
sink = os.open(os.devnull, os.O_WRONLY)

def wake(at, out):
    time.sleep(max(0, at - time.monotonic_ns() - 200_000) / 1e9)
    while time.monotonic_ns() < at:
        pass
    os.write(out, struct.pack("q", time.monotonic_ns()))

kids = []
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            wake(time.monotonic_ns() + 1_000_000, sink)  # a dry run: copy-on-write faults now, not at the instant
            wake(target, w)
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))  # exit without holding the CPU
        finally:
            os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
os.close(w)
data = b"".join(iter(lambda: os.read(r, 4096), b""))
stamps = [struct.unpack_from("q", data, i)[0] for i in range(0, len(data), 8)]
print((max(stamps) - min(stamps)) / 1e6)
"""


def wake_floor(n: int) -> float:
    """Start skew (ms) of ``n`` bare processes waking at one instant on this machine (see WAKE_FLOOR)."""
    out = subprocess.run([sys.executable, "-c", WAKE_FLOOR, str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def line(name: str, value: str, note: str = "") -> None:
    print(f"  {name:<58} {value:>16}  {note}")


# ── 50 local hosts ──────────────────────────────────────────────────────────


async def servers_round(coord: Coordinator, workers: list[Worker]) -> tuple[float, float, float]:
    """(start → all listening ms, median and max control latency beyond process start ms)."""
    t0 = time.time_ns()
    run_id = await coord.start("node", "iperf3-server", {"port": 5201})
    await coord.wait_ready("node")
    t_all = (time.time_ns() - t0) / 1e6
    ready = coord.ready_times(run_id)
    records = await coord.stop("node")
    beyond = [(ready[r.worker] - (r.start_coordinator_ns or 0)) / 1e6 for r in records]
    return t_all, med(beyond), max(beyond)


def ssh(host: Host, command: str) -> subprocess.CompletedProcess[str]:
    """Plain ssh, no shared connection: what a user without enosnet would run."""
    return subprocess.run(ssh_argv(host, SshOptions(control_persist=0), command), capture_output=True, text=True,
                          timeout=60)


def ssh_servers_round(hosts: Sequence[Host]) -> float:
    """The peer: parallel ssh, ``iperf3 -s -D`` (returns once listening); ms until every host returned."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        results = list(pool.map(lambda h: ssh(h, "iperf3 -s -D -p 5202 -I /tmp/bench-iperf3.pid"), hosts))
    elapsed = (time.monotonic() - t0) * 1e3
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(lambda h: ssh(h, "kill $(cat /tmp/bench-iperf3.pid)"), hosts))
    failed = [r for r in results if r.returncode != 0]
    if failed:
        raise RuntimeError(f"ssh peer failed on {len(failed)} hosts: {failed[0].stderr}")
    return elapsed


def skews(records: Sequence[Any]) -> tuple[float, float]:
    """(start skew, exec skew) in ms: max − min over workers (one kernel clock for all local hosts)."""
    starts = [r.start_ns for r in records]
    execs = [r.start_ns + (r.exec_ns or 0) for r in records]
    return (max(starts) - min(starts)) / 1e6, (max(execs) - min(execs)) / 1e6


async def skew_round(coord: Coordinator) -> tuple[tuple[float, float], tuple[float, float]]:
    scheduled = await coord.run("node", "sleep", {"seconds": 0.2})
    await coord.start("node", "sleep", {"seconds": 0.2})
    on_receipt = await coord.wait_done("node", timeout=30)
    return skews(scheduled), skews(on_receipt)


async def quiet_round(coord: Coordinator, bridge: str, folder: Path) -> dict[str, float]:
    """tcpdump on the bridge while 25 iperf3 clients run against 25 servers; count the timed phase."""
    capture = folder / "control.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", bridge, "-n", "-U", "-w", str(capture), "udp port 7700"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert dump.stderr is not None
        await asyncio.to_thread(dump.stderr.readline)  # "listening on ...": capturing from now on
        before = {link.id: link.stats.sent for link in coord.links.values()}
        servers = coord.roles["server"]
        result = await coord.run_pair(servers="server", server_action="iperf3-server", server_params={},
                                      clients="client", client_action="iperf3-client",
                                      client_params=lambda w: {"host": servers[w.index].address, "duration": 2},
                                      deadline_s=10)
        run_id = result.clients[0].run
        await asyncio.sleep(0.5)
    finally:
        dump.terminate()
        dump.wait()
    start = min(r.scheduled_ns - (r.offset_ns or 0) for r in result.clients if r.scheduled_ns)
    end = max(coord.report_times(run_id).values())
    to_agents = from_agents = 0
    out = subprocess.run(["tcpdump", "-r", str(capture), "-n", "-tt"], capture_output=True, text=True).stdout
    captured = len(out.splitlines())
    for text in out.splitlines():
        stamp, _, rest = text.partition(" ")
        ts = int(float(stamp) * 1e9)
        if start <= ts <= end:
            if ".7700:" in rest.split(">")[-1]:
                to_agents += 1
            else:
                from_agents += 1
    sent = sum(link.stats.sent for link in coord.links.values()) - sum(before.values())
    return {"to_agents": to_agents, "from_agents": from_agents, "clients": len(result.clients), "captured": captured,
            "window_ms": (end - start) / 1e6, "coordinator_sent_whole_pair": sent,
            "ok": sum(r.ok for r in result.clients)}


def idle_cpu(hosts: Sequence[Host], coord_status: list[Any], seconds: float) -> list[int]:
    """CPU ticks (1/100 s) each agent worker used while idle for ``seconds``."""
    pids = {s.worker: s.pid for s in coord_status}

    def ticks(host: Host) -> int:
        out = ssh(host, f"cat /proc/{pids[host.name]}/stat").stdout
        fields = out.rpartition(")")[2].split()
        return int(fields[11]) + int(fields[12])

    first = [ticks(h) for h in hosts]
    time.sleep(seconds)
    return [ticks(h) - f for h, f in zip(hosts, first, strict=True)]


def bench_hosts(count: int, reps: int) -> None:
    from enosnet.providers.local import LocalProvider

    os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "b" + secrets.token_hex(2))
    folder = Path(tempfile.mkdtemp(prefix="enosnet-bench-"))
    env = Environment(folder / ".enosnet" / "bench")
    provider = LocalProvider(parse_config(f"name: bench\nprovider: {{kind: local}}\nroles: {{node: {count}}}\n"), env)
    try:
        t0 = time.monotonic()
        roles, networks = provider.init()
        t1 = time.monotonic()
        workers = start_agents_over_ssh(roles, env_id=env.name, secret=env.secret(), actions=ACTIONS)
        t2 = time.monotonic()
        print(f"\n{count} local hosts up in {t1 - t0:.1f} s, agents installed over ssh in {t2 - t1:.1f} s")
        half = count // 2
        paired = [Worker(w.id, "server" if w.index < half else "client", w.address, w.port,
                         w.index if w.index < half else w.index - half) for w in workers[:2 * half]]
        try:
            asyncio.run(hosts_rounds(env, roles, workers, paired, networks["local"].device or "", folder, reps))
        finally:
            stop_agents_over_ssh(roles.all())
    finally:
        provider.destroy()
        shutil.rmtree(folder, ignore_errors=True)


async def hosts_rounds(env: Environment, roles: Roles, workers: list[Worker], paired: list[Worker], bridge: str,
                       folder: Path, reps: int) -> None:
    hosts = list(roles.all())
    async with Coordinator(workers, env_id=env.name, secret=env.secret()) as coord:
        clocks = await coord.ready()
        offsets = [abs(o) for o, _ in clocks.values()]
        rtts = [r for _, r in clocks.values()]
        coord_rounds, ssh_rounds = [], []
        for _ in range(reps):
            coord_rounds.append(await servers_round(coord, workers))
            ssh_rounds.append(await asyncio.to_thread(ssh_servers_round, hosts))
        sched, receipt, floor = [], [], []
        for _ in range(reps):
            a, b = await skew_round(coord)
            sched.append(a)
            receipt.append(b)
            floor.append(await asyncio.to_thread(wake_floor, len(workers)))
        status = await coord.status()
        cpu = await asyncio.to_thread(idle_cpu, hosts[:10], status, 10.0)
    async with Coordinator(paired, env_id=env.name, secret=env.secret()) as pair:
        await pair.ready()
        quiet = await quiet_round(pair, bridge, folder)
        agent_status = await pair.status()

    n = len(workers)
    print(f"clock offsets |median| {med(offsets):.3f} ms, RTT median {med(rtts):.3f} ms (ready handshake, {n} agents)")
    start_all = [r[0] for r in coord_rounds]
    line(f"servers: start → all {n} listening, coordinator (median)", f"{med(start_all):.1f} ms")
    line(f"servers: start → all {n} listening, parallel ssh peer", f"{med(ssh_rounds):.1f} ms",
         f"ratio ssh/coordinator {med(ssh_rounds) / med(start_all):.1f}x")
    line("servers: ready seen − process start, median of medians", f"{med([r[1] for r in coord_rounds]):.1f} ms")
    line("servers: ready seen − process start, median of maxima", f"{med([r[2] for r in coord_rounds]):.1f} ms",
         "(includes iperf3's own time to listen)")
    s_start, r_start = [s[0] for s in sched], [r[0] for r in receipt]
    line(f"clients: start skew (max−min of {n}), scheduled", f"{med(s_start):.3f} ms",
         f"max over reps {max(s_start):.3f} ms")
    line(f"clients: start skew (max−min of {n}), start on receipt", f"{med(r_start):.3f} ms",
         f"ratio receipt/scheduled {med(r_start) / med(s_start):.1f}x")
    line(f"machine floor: {n} bare processes waking at one instant", f"{med(floor):.3f} ms",
         f"ratio scheduled/floor {med(s_start) / med(floor):.2f}x (no agent can start {n} here closer)")
    line("clients: exec skew (process running), scheduled / on receipt",
         f"{med([s[1] for s in sched]):.2f} / {med([r[1] for r in receipt]):.2f} ms")
    line(f"timed phase ({quiet['window_ms']:.0f} ms, {quiet['clients']} iperf3 clients): coordinator → agents",
         f"{quiet['to_agents']} datagrams", f"(tcpdump on the bridge; {quiet['captured']} control datagrams "
         "captured over the whole pair)")
    line("timed phase: agents → coordinator", f"{quiet['from_agents']} datagrams",
         f"({quiet['clients']} completion reports + their retransmissions)")
    retx = sum(s.counters.get("retx", 0) for s in agent_status)
    line("agents' own counters: event retransmissions (whole pair)", f"{retx}", f"clients ok {quiet['ok']}")
    line("idle agent CPU over 10 s (10 agents, ticks of 10 ms)", f"{sum(cpu)} ticks", f"per agent {cpu}")


# ── 1000 agents on loopback ──────────────────────────────────────────────────


def bench_loopback(count: int, reps: int, per_process: int = 50) -> None:
    secret = secrets.token_hex(16)
    base = Path(tempfile.mkdtemp(prefix="enosnet-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    ports = range(31000, 31000 + count)
    configs = [agent_config(f"a{i}", role="node", secret=secret, env_id="bench", actions=ACTIONS, port=port,
                            workdir=str(base / f"a{i}"), bind="127.0.0.1") for i, port in enumerate(ports)]
    workers = [Worker(f"a{i}", "node", "127.0.0.1", port, i) for i, port in enumerate(ports)]
    try:
        t0 = time.monotonic()
        with LocalAgents(configs, folder=base, per_process=per_process):
            print(f"\n{count} agents on loopback ({per_process} per process) up in {time.monotonic() - t0:.1f} s")
            attempts = [asyncio.run(loopback_cycle(workers, secret)) for _ in range(reps)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rounds = [r for r in attempts if "error" not in r]
    for failed in (r for r in attempts if "error" in r):
        line(f"{count} agents: a cycle failed", "", str(failed["error"])[:120])
    if not rounds:
        return
    cycle = [r["cycle"] for r in rounds]
    line(f"{count} agents: whole cycle (ready + prepare + scheduled start + reports)", f"{med(cycle):.2f} s",
         f"target 2 s: ratio {med(cycle) / 2:.2f}; all ok {all(r['ok'] == count for r in rounds)}")
    for phase in ("ready", "run", "spawn_spread"):
        line(f"  of which {phase} (median)", f"{med([r[phase] for r in rounds]):.2f} s")


async def loopback_cycle(workers: list[Worker], secret: str) -> dict[str, Any]:
    async with Coordinator(workers, env_id="bench", secret=secret, timeouts=Timeouts(request=30)) as coord:
        t0 = time.monotonic()
        try:
            await coord.ready()
            t1 = time.monotonic()
            records = await coord.run("node", "true", {})
        except CoordinatorError as exc:
            return {"error": exc}
        t2 = time.monotonic()
    starts = [r.start_ns or 0 for r in records]
    return {"cycle": t2 - t0, "ready": t1 - t0, "run": t2 - t1, "spawn_spread": (max(starts) - min(starts)) / 1e9,
            "ok": sum(r.ok for r in records)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    steps: list[Callable[[], None]] = []
    if args.hosts:
        steps.append(lambda: bench_hosts(args.hosts, args.reps))
    if args.agents:
        steps.append(lambda: bench_loopback(args.agents, max(3, args.reps // 2)))
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for step in steps:
        step()
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

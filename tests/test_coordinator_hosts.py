"""The coordinator's fault tests on real local namespace hosts (sshd, PID namespace, own network).

Agents are installed over plain ssh; iperf3 is the example action pair. The control
path (UDP port 7700) gets 30 % loss, duplication and reordering (netem equivalents:
this kernel lacks sch_netem), agents are killed mid-run, a coordinator dies mid-run, datagrams are forged.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enosnet.config import parse_config
from enosnet.coordinator import SyncCoordinator, Timeouts, Worker, iperf3_actions
from enosnet.coordinator.agent.wire import MessageType, encode, env_hash, worker_key
from enosnet.environment import Environment
from enosnet.errors import WorkerLost
from enosnet.model import Host, Roles
from enosnet.providers.local import LocalProvider
from enosnet.remote import HostResult, run_command
from enosnet.remote.ssh import SshOptions, ssh_argv
from enosnet.testing import REMOTE_DIR, start_agents_over_ssh, stop_agents_over_ssh

pytestmark = pytest.mark.hosts
AGENT_PORT = 7700


@dataclass
class Deployment:
    env: Environment
    roles: Roles
    workers: list[Worker]
    state: dict[str, object]

    @property
    def secret(self) -> str:
        return self.env.secret()

    def coordinator(self, **options: object) -> SyncCoordinator:
        return SyncCoordinator(self.workers, env_id=self.env.name, secret=self.secret, **options)  # type: ignore[arg-type]

    def host(self, name: str) -> Host:
        return self.roles.find(name)

    def pair(self, coord: SyncCoordinator, duration: int = 1, **options: object) -> object:
        servers = self.roles["server"]
        return coord.run_pair(servers="server", server_action="iperf3-server", server_params={},
                              clients="client", client_action="iperf3-client",
                              client_params=lambda w: {"host": servers[w.index].address, "duration": duration},
                              deadline_s=duration + 5.0, **options)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Two servers and two clients with agents started over ssh; destroyed at the end."""
    env = Environment(tmp_path_factory.mktemp("coord") / ".enosnet" / "coord")
    provider = LocalProvider(parse_config("name: coord\nprovider: {kind: local}\nroles: {server: 2, client: 2}\n"),
                             env)
    try:
        roles, _ = provider.init()
        workers = start_agents_over_ssh(roles, env_id=env.name, secret=env.secret(), actions=iperf3_actions())
        yield Deployment(env, roles, workers, dict((env.load_state() or {}).get("provider") or {}))
        stop_agents_over_ssh(roles.all())
    finally:
        provider.destroy()


def test_pair_runs_on_hosts_and_status_reports_every_agent(deployment: Deployment) -> None:
    with deployment.coordinator() as coord:
        result = deployment.pair(coord)
        statuses = coord.status()
    assert all(r.ok for r in result.clients), result  # type: ignore[attr-defined]
    assert {s.worker: s.state for s in statuses} == {w.id: "idle" for w in deployment.workers}
    assert all(s.rtt_ms is not None and s.rtt_ms < 50 for s in statuses)
    assert all(s.counters["rx"] > 0 and s.link.received > 0 for s in statuses)


def test_agents_listen_on_the_experiment_address_not_on_every_interface(deployment: Deployment) -> None:
    for host in deployment.roles.all():
        out = ssh(host, f"ss -Hlun 'sport = :{AGENT_PORT}'")
        assert out.ok, out.stderr
        assert [line.split()[3] for line in out.stdout.splitlines()] == [f"{host.address}:{AGENT_PORT}"], out.stdout


def _impair(deployment: Deployment, *, on: bool) -> None:
    """30 % loss and 25 % duplicates in both directions, and reordering, on the agents' UDP port only.

    This kernel has no sch_netem, so the netem equivalents are built inside each host
    from nftables (``numgen random`` drops, ``dup to`` copies) and an HTB slow lane that
    a random 30 % of the agent's datagrams take, so later ones overtake them.
    """
    hosts = {h["alias"]: h for h in deployment.state["hosts"]}  # type: ignore[attr-defined]
    gateway = deployment.state["gateway"]
    for host in deployment.roles.all():
        enter = ["ip", "netns", "exec", hosts[host.name]["netns"]]
        if not on:
            subprocess.run([*enter, "nft", "delete", "table", "ip", "enosnet_chaos"], capture_output=True)
            subprocess.run([*enter, "tc", "qdisc", "del", "dev", "eth0", "root"], capture_output=True)
            continue
        port, chance = AGENT_PORT, "numgen random mod 100"
        rules = f"""
            table ip enosnet_chaos {{
              chain pre {{ type filter hook prerouting priority -300;
                udp dport {port} {chance} < 30 drop;
                udp dport {port} {chance} < 25 dup to {host.address} device "lo"; }}
              chain out {{ type filter hook output priority -300;
                udp sport {port} {chance} < 30 drop;
                udp sport {port} {chance} < 25 dup to {gateway} device "eth0";
                udp sport {port} {chance} < 30 meta priority set "1:20"; }}
            }}"""
        subprocess.run([*enter, "nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)
        for line in ("qdisc add dev eth0 root handle 1: htb default 10 r2q 1000",
                     "class add dev eth0 parent 1: classid 1:10 htb rate 10gbit",
                     "class add dev eth0 parent 1: classid 1:20 htb rate 64kbit ceil 64kbit quantum 1500"):
            subprocess.run([*enter, "tc", *line.split()], check=True, capture_output=True)


def _runs_on(deployment: Deployment, host: Host) -> list[dict[str, object]]:
    out = ssh(host, f"cat {REMOTE_DIR}/work/state.json 2>/dev/null || echo '{{\"runs\": []}}'")
    assert out.ok, out.stderr  # an agent that has run nothing yet has written no state
    return list(json.loads(out.stdout)["runs"])


def test_runs_complete_under_loss_duplication_and_reordering(deployment: Deployment) -> None:
    timeouts = Timeouts(request=30.0, rto_first=0.1, rto_max=0.4, report_slack=20.0, start_in=2.0)
    before = {h.name: len(_runs_on(deployment, h)) for h in deployment.roles.all()}
    with deployment.coordinator(timeouts=timeouts) as coord:
        _impair(deployment, on=True)
        try:
            coord.ready()
            # a request and its reply both survive with p ≈ 0.49: 4 s of retransmissions (about 12
            # tries) leave an ARM unanswered once in thousands of runs; 2 s left it once in twenty
            results = [deployment.pair(coord, start_in=4.0) for _ in range(2)]
        finally:
            _impair(deployment, on=False)
        # asked once the loss is gone (under 30 % loss an agent may miss status's 3 s deadline); the
        # counters on both sides are cumulative, so they still tell what the chaos did
        statuses = coord.status(force=True)
    assert all(s.state != "unreachable" for s in statuses), statuses
    for result in results:
        assert all(r.ok for r in result.clients), result  # type: ignore[attr-defined]
        assert [r.state for r in result.servers] == ["stopped", "stopped"]  # type: ignore[attr-defined]
    assert sum(s.link.retransmitted for s in statuses) > 0
    assert sum(s.counters["drop"].get("replayed", 0) for s in statuses) > 0  # the duplicates, dropped
    for host in deployment.roles.all():
        runs = _runs_on(deployment, host)
        assert len(runs) == before[host.name] + 2  # two runs each, none started twice
        assert len({r["run"] for r in runs}) == len(runs)


def test_agent_killed_mid_run_is_lost_then_restarted_by_its_supervisor(deployment: Deployment) -> None:
    victim = deployment.host("client-0")
    with deployment.coordinator(timeouts=Timeouts(report_slack=2.0, request=3.0)) as coord:
        [status] = [s for s in coord.status() if s.worker == "client-0"]
        killer = _watch(victim, '"state": "running"', f"sleep 0.5; kill -9 {status.pid}")
        began = time.monotonic()
        with pytest.raises(WorkerLost, match="client-0") as info:
            deployment.pair(coord, duration=4)
        assert killer.wait(timeout=60) == 0
        assert info.value.workers == ["client-0"]
        assert time.monotonic() - began < 30  # run deadline (8 s) + slack + chase, on a loaded machine
        time.sleep(0.5)
        [after] = [s for s in coord.status() if s.worker == "client-0"]
        assert after.state in ("idle", "exited", "failed") and after.pid != status.pid
        result = deployment.pair(coord)
    assert all(r.ok for r in result.clients)  # type: ignore[attr-defined]


def test_coordinator_killed_mid_run_and_a_new_one_reattaches(deployment: Deployment, tmp_path: Path) -> None:
    script = tmp_path / "driver.py"
    workers = [(w.id, w.role, w.address, w.port, w.index) for w in deployment.workers]
    client0 = deployment.roles["server"][0].address
    client1 = deployment.roles["server"][1].address
    script.write_text(textwrap.dedent(f"""
        from enosnet.coordinator import SyncCoordinator, Worker
        workers = [Worker(*w) for w in {workers!r}]
        hosts = [{client0!r}, {client1!r}]
        with SyncCoordinator(workers, env_id={deployment.env.name!r}, secret={deployment.secret!r}) as coord:
            coord.ready()
            coord.start("server", "iperf3-server", {{}}, run_id="reattach-servers")
            coord.wait_ready("server")
            print("started", flush=True)
            coord.run("client", "iperf3-client", lambda w: {{"host": hosts[w.index], "duration": 2}},
                      run_id="reattach-clients", start_in=2.5)
    """))
    watcher = _watch(deployment.host("client-1"), 'reattach-clients.*"state": "running"', "true")
    driver = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "started"
        assert watcher.wait(timeout=120) == 0
        driver.kill()
    finally:
        driver.wait()
    with deployment.coordinator() as coord:
        records = coord.collect(timeout=15)
        clients = sorted((r.worker, r.run, r.state, r.rc) for r in records if r.run == "reattach-clients")
        assert clients == [("client-0", "reattach-clients", "exited", 0), ("client-1", "reattach-clients", "exited", 0)]
        statuses = {s.worker: s for s in coord.status(force=True)}
        assert statuses["server-0"].state == "running"  # the servers kept serving
        stopped = coord.stop("server")  # adopted on re-attach
    assert [(r.run, r.state) for r in stopped] == [("reattach-servers", "stopped")] * 2


def test_forged_and_damaged_datagrams_are_dropped_and_counted_on_hosts(deployment: Deployment) -> None:
    worker = deployment.workers[0]
    key = worker_key(deployment.secret, worker.id).encode()
    good = encode(MessageType.STATUS, {"force": True}, key=key, env=env_hash(deployment.env.name),
                  worker=worker.id, session=int.from_bytes(os.urandom(7), "big"), seq=1)
    forged = encode(MessageType.STOP, {"all": True}, key=b"guessed-secret-guessed-secret", env=env_hash("coord"),
                    worker=worker.id, session=5, seq=1)
    with deployment.coordinator() as coord:
        [before] = [s for s in coord.status(force=True) if s.worker == worker.id]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for data in (forged, good[:70], good[:-1] + b"\0", good + b"x" * 1200, b"\0" * 200, good, good):
                sock.sendto(data, (worker.address, worker.port))
        time.sleep(0.3)
        [after] = [s for s in coord.status(force=True) if s.worker == worker.id]
    grew = {k: after.counters["drop"].get(k, 0) - before.counters["drop"].get(k, 0)
            for k in ("bad_mac", "truncated", "oversized", "bad_magic", "replayed")}
    assert grew == {"bad_mac": 2, "truncated": 1, "oversized": 1, "bad_magic": 1, "replayed": 1}
    assert after.pid == before.pid and after.state == "idle"


def _watch(host: Host, pattern: str, then: str) -> subprocess.Popen[str]:
    """An ssh session on ``host`` that runs ``then`` as soon as the agent's state matches ``pattern``.

    Returns once the session is connected (ssh itself can take seconds on a loaded machine).
    """
    quoted = pattern.replace("'", "'\\''")
    command = (f"echo watching; for i in $(seq 2400); do grep -q '{quoted}' {REMOTE_DIR}/work/state.json && "
               f"{{ {then}; exit 0; }}; sleep 0.025; done; exit 1")
    proc = subprocess.Popen(ssh_argv(host, SshOptions(), command), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "watching"
    return proc


def ssh(host: Host, command: str) -> HostResult:
    return run_command(command, roles=[host])[host]

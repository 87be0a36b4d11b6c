"""impaird on real local namespace hosts (this kernel has no netem): delay, loss, duplication, reordering,
rate, per-destination and per-port matching, clear, and robustness — measured with ping, iperf3 and UDP.

Every test leaves the hosts clean (checked after each one: no rule, chain, nft table, qdisc, ifb,
daemon or state), also when it fails.
"""

from __future__ import annotations

import itertools
import json
import re
import statistics
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from enosnet.config import parse_config
from enosnet.emulation import (
    IMPAIRD,
    Constraint,
    Target,
    apply,
    apply_all,
    between,
    choose_backend,
    clear,
    clear_all,
    kernel_has_netem,
    local_runner,
    show,
)
from enosnet.environment import Environment
from enosnet.errors import RemoteError
from enosnet.model import Host
from enosnet.providers.local import LocalProvider

pytestmark = pytest.mark.hosts
PYTHON = "/usr/bin/python3"


@dataclass
class Hosts:
    provider: LocalProvider
    client: Host
    server: Host
    other: Host

    def target(self, host: Host) -> Target:
        return Target(local_runner(self.provider.enter(host)), name=host.name, python=PYTHON, path=str(IMPAIRD))

    def sh(self, host: Host, command: str, *, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.provider.enter(host), "sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    env = Environment(tmp_path_factory.mktemp("emu") / ".enosnet" / "emu")
    # impaird is run from this checkout, which may sit in a folder hosts do not see (/tmp, /root): shared
    config = f"name: emu\nprovider: {{kind: local, share: [{IMPAIRD.parent}]}}\nroles: {{client: 1, server: 2}}\n"
    provider = LocalProvider(parse_config(config), env)
    try:
        roles, _ = provider.init()
        yield Hosts(provider, roles["client"][0], roles["server"][0], roles["server"][1])
    finally:
        provider.destroy()


LEFTOVERS = r"""
iptables-legacy -t mangle -S | grep ENOSNET
ip6tables-legacy -t mangle -S | grep ENOSNET
nft list tables | grep enosnet_emu
tc qdisc show | grep -v -e 'noqueue 0: dev' -e '^$'
ip -o link show | grep -o 'e57ifb[0-9]*'
pgrep -af '[i]mpaird.py run'
ls -d /run/enosnet-emu 2>/dev/null
true
"""


@pytest.fixture(autouse=True)
def clean(hosts: Hosts) -> Iterator[None]:
    """After each test: clear every host, then prove nothing of the emulation is left."""
    try:
        yield
    finally:
        clear_all(hosts.target(h) for h in (hosts.client, hosts.server, hosts.other))
        left = {h.name: hosts.sh(h, LEFTOVERS).stdout.strip() for h in (hosts.client, hosts.server, hosts.other)}
    assert not any(left.values()), left


@dataclass(frozen=True)
class Pings:
    sent: int
    rtts: list[float]  # ms, in arrival order
    seqs: list[int]
    dups: int

    @property
    def received(self) -> int:
        return len(self.rtts) - self.dups

    @property
    def median(self) -> float:
        return statistics.median(self.rtts)


def ping(hosts: Hosts, src: Host, dst: Host, *, count: int = 20, interval: float = 0.01) -> Pings:
    out = hosts.sh(src, f"ping -n -c {count} -i {interval} -W 1 {dst.address} || true", timeout=count * interval + 15)
    return parse_ping(out.stdout, count)


def parse_ping(text: str, count: int) -> Pings:
    replies = re.findall(r"icmp_seq=(\d+) .*time=([\d.]+) ms( \(DUP!\))?", text)
    return Pings(count, [float(t) for _, t, _ in replies], [int(s) for s, _, _ in replies],
                 sum(1 for *_, dup in replies if dup))


def iperf3(hosts: Hosts, client: Host, server: Host, *, seconds: float = 2.0) -> float:
    """Mbit/s received in one short iperf3 run; the server is killed whatever happens."""
    daemon = subprocess.Popen([*hosts.provider.enter(server), "iperf3", "-s", "-1", "-p", "5201"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = hosts.sh(client, f"iperf3 -c {server.address} -p 5201 -t {seconds} -J", timeout=seconds + 20)
        result = json.loads(out.stdout)
        assert "error" not in result, result.get("error")
        return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        daemon.kill()
        daemon.wait()
        hosts.sh(server, "pkill -x iperf3; true")


# ── the tests ───────────────────────────────────────────────────────────────


def test_the_kernel_here_has_no_netem_so_the_backend_is_nfqueue(hosts: Hosts) -> None:
    run = hosts.target(hosts.client).run
    assert kernel_has_netem(run) is False
    assert choose_backend(run) == "nfqueue"
    assert choose_backend(run, prefer="netem") == "netem"


def test_20ms_delay_adds_20ms_rtt_toward_that_destination_only_and_clear_restores_it(hosts: Hosts) -> None:
    """Over plain ssh as a controller would do it: copy impaird, apply, show, clear."""
    target = Target.over_ssh(hosts.client)
    base = ping(hosts, hosts.client, hosts.server, count=30)
    base_other = ping(hosts, hosts.client, hosts.other, count=30)
    shown = apply(target, [Constraint(hosts.server.address, delay="20ms")])
    assert shown["applied"] and shown["daemon"]["alive"]
    delayed = ping(hosts, hosts.client, hosts.server, count=30)
    other = ping(hosts, hosts.client, hosts.other, count=30)
    assert delayed.received == 30 and 19.0 < delayed.median - base.median < 21.5, (base.median, delayed.median)
    assert other.median < base_other.median + 1.0, (base_other.median, other.median)
    stats = show(target)["stats"]["queues"]["7400"]
    assert stats["received"] >= 30 and stats["dropped"] == 0
    clear(target)
    assert show(target) == {"applied": False, "state_dir": "/run/enosnet-emu"}
    after = ping(hosts, hosts.client, hosts.server, count=30)
    assert after.median < base.median + 1.0, (base.median, after.median)


def test_30_percent_loss_loses_a_bounded_share_of_200_pings(hosts: Hosts) -> None:
    apply(hosts.target(hosts.client), [Constraint(hosts.server.address, loss="30%", protocol="icmp")])
    pings = ping(hosts, hosts.client, hosts.server, count=200, interval=0.005)
    lost = 200 - pings.received
    assert 36 <= lost <= 84, lost  # 30 % ± 3.5 standard deviations of a binomial(200, 0.3)


def test_duplicates_show_as_dup_pings(hosts: Hosts) -> None:
    apply(hosts.target(hosts.client), [Constraint(hosts.server.address, duplicate="20%")])
    pings = ping(hosts, hosts.client, hosts.server, count=100, interval=0.005)
    assert 5 <= pings.dups <= 40 and pings.received == 100, pings.dups


def test_reordering_shows_as_udp_sequence_inversions(hosts: Hosts) -> None:
    """30 % of datagrams skip the 10 ms delay, so they overtake the ones sent just before them."""
    apply(hosts.target(hosts.client), [Constraint(hosts.server.address, protocol="udp", delay="10ms",
                                                  reorder="30%")])
    seqs = udp_sequence(hosts, count=200)
    inversions = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    assert sorted(seqs) == list(range(200)) and 20 <= inversions <= 60, inversions


def udp_sequence(hosts: Hosts, *, count: int) -> list[int]:
    """Numbered datagrams client → server port 7702, one per ms; the numbers in the order they arrived."""
    receiver = subprocess.Popen([*hosts.provider.enter(hosts.server), PYTHON, "-c", UDP_ORDER],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        hosts.sh(hosts.client, f"{PYTHON} -c '{UDP_NUMBERED}' {hosts.server.address} {count}")
        return list(json.loads(receiver.communicate(timeout=10)[0]))
    finally:
        receiver.kill()
        receiver.wait()


UDP_ORDER = textwrap.dedent("""
    import json, select, socket, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 7702))
    seen, end = [], time.monotonic() + 1.5
    while time.monotonic() < end:
        if select.select([s], [], [], 0.1)[0]:
            seen.append(int(s.recv(100)))
    print(json.dumps(seen))
""")
UDP_NUMBERED = ("import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "[(s.sendto(str(i).encode(), (sys.argv[1], 7702)), time.sleep(0.001)) "
                "for i in range(int(sys.argv[2]))]")


def test_ingress_loss_on_one_udp_port_spares_the_next_port(hosts: Hosts) -> None:
    """The control-path shape: only UDP port 7700 from the client is hit, on the server's ingress."""
    apply(hosts.target(hosts.server), [Constraint(hosts.client.address, direction="ingress", protocol="udp",
                                                  port=7700, loss="100%")])
    receiver = subprocess.Popen([*hosts.provider.enter(hosts.server), PYTHON, "-c", UDP_COUNTER],
                                stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        hosts.sh(hosts.client, f"{PYTHON} -c '{UDP_SENDER}' {hosts.server.address}")
        counts = json.loads(receiver.communicate(timeout=10)[0])
    finally:
        receiver.kill()
        receiver.wait()
    assert counts == {"7700": 0, "7701": 50}


UDP_COUNTER = textwrap.dedent("""
    import json, select, socket, time
    socks = {}
    for port in (7700, 7701):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port)); socks[s] = str(port)
    counts = dict.fromkeys(socks.values(), 0)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        for s in select.select(list(socks), [], [], 0.1)[0]:
            s.recv(100); counts[socks[s]] += 1
    print(json.dumps(counts))
""")
UDP_SENDER = ("import socket, sys, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
              "[(s.sendto(b\"x\", (sys.argv[1], p)), time.sleep(0.001)) for _ in range(50) for p in (7700, 7701)]")


def test_rate_caps_iperf3_and_delay_does_not_starve_tcp(hosts: Hosts) -> None:
    target = hosts.target(hosts.client)
    apply(target, [Constraint(hosts.server.address, rate="50mbit")])
    capped = iperf3(hosts, hosts.client, hosts.server)
    apply(target, [Constraint(hosts.server.address, delay="20ms")])
    delayed = iperf3(hosts, hosts.client, hosts.server)
    assert 40.0 <= capped <= 51.0, capped
    # held packets are unowned copies: TCP small queues would otherwise cap this near 2 Mbit/s
    assert delayed > 100.0, delayed


def test_clear_removes_everything_also_ingress_rate_and_duplication(hosts: Hosts) -> None:
    target = hosts.target(hosts.client)
    apply(target, [Constraint(hosts.server.address, delay="5ms", jitter="1ms", distribution="normal",
                              duplicate="5%", rate="200mbit"),
                   Constraint(hosts.other.address, direction="ingress", loss="1%", duplicate="1%", rate="100mbit",
                              protocol="tcp", port=5201)])
    left = hosts.sh(hosts.client, LEFTOVERS).stdout
    for piece in ("ENOSNET_EMU_OUT", "ENOSNET_EMU_IN", "enosnet_emu", "htb e57:", "ingress ffff:", "e57ifb0",
                  "impaird.py run", "/run/enosnet-emu"):
        assert piece in left, piece
    clear(target)
    assert hosts.sh(hosts.client, LEFTOVERS).stdout.strip() == ""
    clear(target)  # nothing to do is fine


def test_a_failed_apply_leaves_nothing_and_bad_input_is_a_config_error(hosts: Hosts) -> None:
    target = hosts.target(hosts.client)
    with pytest.raises(RemoteError, match="nosuchdev"):
        apply(target, [Constraint(hosts.server.address, delay="5ms", duplicate="1%"),
                       Constraint(hosts.other.address, rate="10mbit", device="nosuchdev")])
    assert hosts.sh(hosts.client, LEFTOVERS).stdout.strip() == ""
    out = hosts.sh(hosts.client, f"{PYTHON} {IMPAIRD} apply --config "
                                 "'{\"constraints\": [{\"destination\": \"x\"}]}'")
    assert out.returncode == 2 and "constraints[0].destination" in out.stderr


def test_a_killed_daemon_lets_traffic_through_and_clear_still_cleans(hosts: Hosts) -> None:
    target = hosts.target(hosts.client)
    shown = apply(target, [Constraint(hosts.server.address, delay="20ms")])
    hosts.sh(hosts.client, f"kill -9 {shown['daemon']['pid']}")
    time.sleep(0.2)
    pings = ping(hosts, hosts.client, hosts.server, count=10)
    assert pings.received == 10 and pings.median < 5.0  # --queue-bypass: no listener, no delay, no loss
    assert show(target)["daemon"]["alive"] is False



def test_the_netem_roles_variables_apply_per_interface(hosts: Hosts) -> None:
    """What the netem role would run when the kernel lacks netem: its own variables, via the CLI."""
    netem_vars = json.dumps({"interfaces": [{"device": "eth0", "delay": "10ms"}], "destinations": []})
    out = hosts.sh(hosts.client, f"{PYTHON} {IMPAIRD} apply --netem-vars --config '{netem_vars}'")
    assert out.returncode == 0, out.stderr
    for peer in (hosts.server, hosts.other):
        pings = ping(hosts, hosts.client, peer, count=10)
        assert pings.received == 10 and 9.5 < pings.median < 12.0, pings.median


def test_a_symmetric_delay_between_groups_adds_twice_the_delay_to_the_rtt(hosts: Hosts) -> None:
    base = ping(hosts, hosts.client, hosts.server, count=10)
    plan = between([hosts.client], [hosts.server], delay="10ms")
    shown = apply_all({hosts.target(h): constraints for h, constraints in plan.items()})
    assert sorted(shown) == ["client-0", "server-0"]
    rtt = ping(hosts, hosts.client, hosts.server, count=10)
    assert 19.0 < rtt.median - base.median < 21.5, (base.median, rtt.median)

"""The netem role on real local hosts, measured: rate caps with iperf3, delay and loss with ping.

Runs ``playbooks/netem.yml`` / ``netem-clear.yml`` with plain ansible-playbook
on the environment's inventory. The role hands its variables to the emulation
engine: delay and loss come from the kernel's netem qdisc where it has one,
else from the engine's userspace queue (``netem_backend: auto``); forcing the
netem backend on a kernel without netem proves the role reports tc's failure
with the command and leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enosnet.emulation import impaird as engine

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", re.M)


def playbook(deployment: Any, name: str, spec: dict[str, Any], *options: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_FORKS": "10",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", str(deployment.env.inventory_file), str(ROOT / "playbooks" / name),
                           "-e", json.dumps(spec), *options], env=env, capture_output=True, text=True, timeout=180)


def changed(out: subprocess.CompletedProcess[str]) -> dict[str, int]:
    return {host: int(count) for host, count, _ in RECAP.findall(out.stdout)}


def sh(deployment: Any, host: str, command: str, timeout: float = 60) -> str:
    argv = [*deployment.provider.enter(deployment.roles.find(host)), "sh", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout).stdout


def tc_state(deployment: Any, host: str) -> str:
    """Everything tc and ip say about the host's links (what the role may touch)."""
    return sh(deployment, host, "tc qdisc show; tc class show dev eth0; tc filter show dev eth0; "
                                "ip -br link | cut -d' ' -f1")


def iperf3_mbits(deployment: Any, *, reverse: bool = False, seconds: int = 2) -> float:
    """Throughput client-0 → server-0 (server-0 → client-0 when ``reverse``) in Mbit/s, received side."""
    server = subprocess.Popen([*deployment.provider.enter(deployment.roles.find("server-0")), "timeout", "30",
                               "iperf3", "-s", "-1", "-p", "5299", "-I", "/tmp/iperf3-test.pid"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        address = deployment.roles.find("server-0").address
        out = sh(deployment, "client-0", f"iperf3 -c {address} -p 5299 -t {seconds} -J {'-R' if reverse else ''}",
                 timeout=seconds + 30)
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e6
    finally:
        sh(deployment, "server-0", "kill $(cat /tmp/iperf3-test.pid) 2>/dev/null; rm -f /tmp/iperf3-test.pid")
        server.kill()
        server.wait(timeout=10)


def ping(deployment: Any, count: int = 20, interval: float = 0.05) -> tuple[float, float]:
    """(average RTT ms, loss %) from client-0 to server-0."""
    address = deployment.roles.find("server-0").address
    out = sh(deployment, "client-0", f"ping -n -q -c {count} -i {interval} -W 1 {address}")
    sent, received = map(int, re.search(r"(\d+) packets transmitted, (\d+) received", out).groups())  # type: ignore[union-attr]
    rtt = re.search(r"= [\d.]+/([\d.]+)/", out)
    return (float(rtt[1]) if rtt else float("nan")), 100.0 * (sent - received) / sent


def kernel_has_netem(deployment: Any) -> bool:
    probe = "tc qdisc add dev lo root netem delay 1ms && tc qdisc del dev lo root && echo yes"
    return sh(deployment, "client-0", probe).strip() == "yes"


@pytest.fixture
def pair(local_hosts: Callable[..., Any]) -> Any:
    """Two hosts; destroying them (the fixture's end) also removes any emulation left."""
    return local_hosts({"server": 1, "client": 1}, name="netem")


def impaird_state(deployment: Any, host: str) -> str:
    """impaird's daemon and state folder on the host ('' when nothing of it is there)."""
    return sh(deployment, host, "pgrep -af 'impaird.py run' | grep -v pgrep; ls /run/enosnet-emu 2>/dev/null").strip()


@pytest.mark.hosts
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["netem", "nfqueue"])
def test_rate_caps_show_in_iperf3_and_clear_removes_exactly_what_was_added(pair: Any, backend: str) -> None:
    before = tc_state(pair, "client-0")
    server = pair.roles.find("server-0").address
    spec = {"netem_hosts": "client", "netem_backend": backend,
            "netem_interfaces": [{"device": "eth0", "ingress": {"rate": "40mbit"}}],
            "netem_destinations": [{"device": "eth0", "dest": server, "rate": "20mbit"},
                                   {"device": "eth0", "dest": "2001:db8::/64", "rate": "5mbit"}]}
    applied = playbook(pair, "netem.yml", spec)
    assert applied.returncode == 0, applied.stdout[-2000:]
    assert changed(applied)["client-0"] >= 1
    again = playbook(pair, "netem.yml", spec)
    assert changed(again)["client-0"] == 0, again.stdout[-2000:]
    shaped = tc_state(pair, "client-0")
    assert "qdisc htb e57: dev eth0 root" in shaped and "e57ifb0" in shaped  # the same HTB classes with either backend
    assert f'"backend": "{backend}"' in sh(pair, "client-0", "cat /run/enosnet-emu/state.json")

    egress, ingress = iperf3_mbits(pair), iperf3_mbits(pair, reverse=True)
    print(f"\n{backend}: rate cap 20mbit client→server: {egress:.1f} Mbit/s; "
          f"ingress cap 40mbit server→client: {ingress:.1f}")
    assert 14 <= egress <= 21, egress
    assert 28 <= ingress <= 42, ingress

    cleared = playbook(pair, "netem-clear.yml", {"netem_hosts": "client"})
    assert cleared.returncode == 0 and changed(cleared)["client-0"] == 1
    assert tc_state(pair, "client-0") == before
    assert impaird_state(pair, "client-0") == ""
    assert changed(playbook(pair, "netem-clear.yml", {"netem_hosts": "client"}))["client-0"] == 0


def check_refusals(deployment: Any, before: str) -> None:
    """A bad value and a bad type are refused before tc runs (argument_specs, then the module)."""
    if before != tc_state(deployment, "client-0"):
        assert playbook(deployment, "netem-clear.yml", {"netem_hosts": "client"}).returncode == 0
    bad = playbook(deployment, "netem.yml", {"netem_hosts": "client",
                                             "netem_interfaces": [{"device": "eth0", "delay": "20 parsecs"}]})
    assert bad.returncode != 0 and "interfaces[0].delay: '20 parsecs' is not a duration" in bad.stdout
    typed = playbook(deployment, "netem.yml", {"netem_hosts": "client", "netem_interfaces": "eth0"})
    assert typed.returncode != 0 and "netem_interfaces" in typed.stdout, typed.stdout[-1500:]
    assert tc_state(deployment, "client-0") == before


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_delay_and_loss_show_in_ping_with_the_kernels_backend(pair: Any) -> None:
    before = tc_state(pair, "client-0")
    base_rtt, _ = ping(pair)
    server = pair.roles.find("server-0").address
    spec = {"netem_hosts": "client", "netem_destinations": [{"device": "eth0", "dest": server, "delay": "20ms"}]}
    checked = playbook(pair, "netem.yml", spec, "--check")
    assert checked.returncode == 0 and changed(checked)["client-0"] >= 1, checked.stdout[-2000:]
    assert tc_state(pair, "client-0") == before and impaird_state(pair, "client-0") == ""
    applied = playbook(pair, "netem.yml", spec)
    assert applied.returncode == 0, applied.stdout[-2000:]
    backend = "netem" if kernel_has_netem(pair) else "nfqueue"
    assert f'"backend": "{backend}"' in sh(pair, "client-0", "cat /run/enosnet-emu/state.json")
    assert changed(playbook(pair, "netem.yml", spec))["client-0"] == 0
    rtt, _ = ping(pair)
    print(f"\n{backend}: RTT {base_rtt:.2f} ms → {rtt:.2f} ms with 20ms delay")
    assert 18 <= rtt - base_rtt <= 25
    lossy = {**spec, "netem_destinations": [{"device": "eth0", "dest": server, "loss": "30%"}]}
    assert playbook(pair, "netem.yml", lossy).returncode == 0
    _, loss = ping(pair, count=200, interval=0.01)
    print(f"{backend}: loss 30% → {loss:.1f} % of 200 pings lost")
    assert 15 <= loss <= 45
    shown = playbook(pair, "netem.yml", {"netem_hosts": "client", "netem_state": "query"})
    assert "loss 30" in shown.stdout, shown.stdout[-2000:]
    cleared = playbook(pair, "netem-clear.yml", {"netem_hosts": "client"})
    assert cleared.returncode == 0 and changed(cleared)["client-0"] == 1
    assert tc_state(pair, "client-0") == before and impaird_state(pair, "client-0") == ""
    assert ping(pair)[0] < 10
    check_refusals(pair, before)


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_the_netem_backend_reports_a_missing_netem_qdisc_and_rolls_back(pair: Any) -> None:
    if kernel_has_netem(pair):
        pytest.skip("this kernel has the netem qdisc: nothing is missing to report")
    before = tc_state(pair, "client-0")
    server = pair.roles.find("server-0").address
    spec = {"netem_hosts": "client", "netem_backend": "netem",
            "netem_destinations": [{"device": "eth0", "dest": server, "delay": "20ms"}]}
    applied = playbook(pair, "netem.yml", spec)
    assert applied.returncode != 0
    assert "netem limit 10000 delay 20000us` failed" in applied.stdout
    assert "qdisc kind is unknown" in applied.stdout and "modprobe sch_netem" in applied.stdout
    assert tc_state(pair, "client-0") == before  # the failed apply removed what it had added
    assert impaird_state(pair, "client-0") == ""


@pytest.mark.parametrize(("entry", "message"), [
    ({"device": "eth0", "delay": "20 parsecs"}, "interfaces[0].delay: '20 parsecs' is not a duration"),
    ({"device": "eth0", "loss": "1.5"}, "interfaces[0].loss: '1.5' is not a percentage"),
    ({"device": "eth0", "loss": "150%"}, "more than 100%"),
    ({"device": "eth0", "rate": "100mb"}, "'100mb' is not a rate"),
    ({"device": "eth0", "jitter": "2ms"}, "jitter needs a delay"),
    ({"device": "a-very-long-interface", "rate": "1mbit"}, "not an interface name"),
    ({"device": "eth0", "colour": "red"}, "unknown key(s) colour"),
])
def test_the_roles_variables_are_refused_by_the_engine_naming_the_entry(entry: dict[str, str], message: str) -> None:
    with pytest.raises(engine.ConfigProblem, match=re.escape(message)):
        engine.load_config(engine.from_netem_vars({"interfaces": [entry]}))


def test_the_roles_variables_plan_htb_classes_netem_qdiscs_and_u32_filters_for_both_families() -> None:
    config = engine.from_netem_vars({
        "interfaces": [{"device": "eth0", "delay": "5ms", "ingress": {"rate": "1gbit"}}],
        "destinations": [{"device": "eth0", "dest": "198.18.0.9", "delay": "20ms", "jitter": "1ms", "loss": "1%"},
                         {"device": "eth0", "dest": "2001:db8::1", "rate": "10mbit"}]})
    steps = engine.plan(engine.resolve(engine.load_config({**config, "backend": "netem"})))
    commands = [step.describe() for step in steps]
    assert "tc qdisc add dev eth0 parent e57:1 handle e581: netem limit 10000 delay 20000us 1000us loss 1%" \
        in commands
    assert "tc class add dev eth0 parent e57: classid e57:2 htb rate 10000000bit ceil 10000000bit quantum 12500" \
        in commands
    assert "tc filter add dev eth0 parent e57: prio 1 protocol ip u32 match ip dst 198.18.0.9/32 flowid e57:1" \
        in commands
    assert "tc filter add dev eth0 parent e57: prio 2 protocol ipv6 u32 match ip6 dst 2001:db8::1/128 flowid e57:2" \
        in commands
    assert "tc qdisc add dev eth0 parent e57:3 handle e583: netem limit 10000 delay 5000us" in commands  # 0.0.0.0/0
    assert "ip link add e57ifb0 type ifb" in commands
    undo = [" ".join(argv) for step in steps for argv in step.undo[:1]]
    assert undo == ["tc qdisc del dev eth0 root handle e57:", "ip link del e57ifb0",
                    "tc qdisc del dev eth0 handle ffff: ingress", "tc qdisc del dev e57ifb0 root handle e57:"]

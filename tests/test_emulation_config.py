"""impaird's pure parts: value parsing, config checks, the rules it plans, the emulator's decisions, the wire format,
and the controller's typed API. (tests/test_emulation_hosts.py measures the real thing on namespace hosts.)"""

from __future__ import annotations

import ast
import gzip
import itertools
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from enosnet.emulation import (
    IMPAIRD,
    Constraint,
    apply_argv,
    between,
    clear_argv,
    emulation_config,
    install_argv,
    kernel_has_netem,
    local_runner,
)
from enosnet.emulation import impaird as d
from enosnet.errors import ConfigError, RemoteError
from enosnet.model import Host
from tests.conftest import python38


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1.5s", 1.5), ("500us", 0.0005), (0, 0.0),
                                               (" 2 msec ", 0.002)])
def test_durations_need_a_unit(text: Any, seconds: float) -> None:
    assert d.parse_duration(text, "delay") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["20", "20 m", "-1ms", "fast", 20, None, "1e3ms", "\u0662\u0660ms"])
def test_bad_durations_name_the_field(bad: Any) -> None:
    with pytest.raises(d.ConfigProblem, match=r"^delay: .* is not a duration such as 20ms"):
        d.parse_duration(bad, "delay")


def test_percentages_and_rates() -> None:
    assert d.parse_percent("1%", "loss") == 0.01 and d.parse_percent("0.5 %", "loss") == 0.005
    assert d.parse_rate("100mbit", "rate") == 100_000_000 and d.parse_rate("1Gbit", "rate") == 10**9
    assert d.parse_rate("10mbps", "rate") == 80_000_000  # tc's bps are bytes per second
    for bad in ("101%", "0.01", "1 percent"):
        with pytest.raises(d.ConfigProblem, match="loss"):
            d.parse_percent(bad, "loss")
    for bad in ("100", "100mb", "1bit"):
        with pytest.raises(d.ConfigProblem, match="rate"):
            d.parse_rate(bad, "rate")


@pytest.mark.parametrize(("constraint", "message"), [
    ({}, r"constraints\[0\].destination: required"),
    ({"destination": "198.18.0.300"}, "not an IPv4/IPv6 address"),
    ({"destination": "198.18.0.3", "port": 7700}, r"\.port: a port needs protocol tcp, udp or sctp"),
    ({"destination": "198.18.0.3", "protocol": "udp", "port": 70000}, "not a port"),
    ({"destination": "198.18.0.3", "reorder": "10%"}, "reordering needs a delay"),
    ({"destination": "198.18.0.3", "direction": "both"}, "neither egress nor ingress"),
    ({"destination": "198.18.0.3", "delay": "1ms", "dealy": "2ms"}, r"unknown field\(s\) dealy"),
    ({"destination": "198.18.0.3", "limit": 0}, r"\.limit"),
    ({"destination": "198.18.0.3", "protocol": "udp", "port": "7700:7710", "rate": "1mbit"}, "not a range"),
    ({"destination": "198.18.0.3", "distribution": "pareto", "jitter": "1ms"}, "neither uniform nor normal"),
])
def test_bad_constraints_say_which_field_and_why(constraint: dict[str, Any], message: str) -> None:
    with pytest.raises(d.ConfigProblem, match=message):
        d.load_config({"constraints": [constraint]})


def test_only_constraints_that_hold_or_drop_packets_get_a_queue() -> None:
    config = d.load_config({"queue_base": 100, "constraints": [
        {"destination": "198.18.0.2", "delay": "20ms"},
        {"destination": "198.18.0.3", "rate": "10mbit", "duplicate": "1%"},
        {"destination": "2001:db8::/64", "loss": "1%"}]})
    assert [c["queue"] for c in config["constraints"]] == [100, None, 101]
    assert [c["family"] for c in config["constraints"]] == [4, 4, 6]
    with pytest.raises(d.ConfigProblem, match="queue_base"):
        d.load_config({"queue_base": 65535, "constraints": []})
    with pytest.raises(d.ConfigProblem, match="version"):
        d.load_config({"version": 2, "constraints": []})


def _plan(*constraints: dict[str, Any]) -> list[str]:
    return [step.describe() for step in d.plan(d.load_config({"constraints": list(constraints)}))]


def test_held_egress_packets_are_copies_and_the_originals_go_to_the_sink() -> None:
    steps = _plan({"destination": "198.18.0.3", "delay": "20ms", "protocol": "udp", "port": 7700})
    [nft] = [step for step in steps if "nft -f" in step]
    rules = steps[:steps.index(nft)]  # queue rules first: copies are only made once they can be told apart
    assert "hook postrouting priority -300" in nft and "dup to ip daddr device oif" in nft
    assert "udp dport 7700" in nft and "udp dport != 7700 udp sport 7700" in nft  # either port, counted once
    assert "meta mark set meta mark | 0x40000000" in nft and "| 0x20000000 accept" in nft
    chain = [r for r in rules if "-A ENOSNET_EMU_OUT" in r]
    assert "--mark 0x20000000/0x60000000 -j NFQUEUE --queue-num 65535" in chain[0] and "bypass" not in chain[0]
    assert chain[1].endswith("-d 198.18.0.3/32 ! -o lo -p udp -m multiport --ports 7700 -m mark --mark "
                             "0x40000000/0x60000000 -j NFQUEUE --queue-num 7400 --queue-bypass")
    assert rules[-1].endswith("-I POSTROUTING 1 -j ENOSNET_EMU_OUT")


def test_ingress_is_queued_directly_and_duplicated_after_the_queue() -> None:
    steps = _plan({"destination": "198.18.0.0/24", "direction": "ingress", "delay": "5ms", "duplicate": "10%"})
    nft = steps[-1]
    assert "hook prerouting priority -100" in nft and "numgen random mod 1000000 < 100000 dup to ip daddr\n" in nft
    assert "mark" not in nft
    assert any(s.endswith("-A ENOSNET_EMU_IN -s 198.18.0.0/24 ! -i lo -j NFQUEUE --queue-num 7400 --queue-bypass")
               for s in steps)
    assert "ip6tables" not in " ".join(steps)


def test_rates_use_htb_with_u32_per_destination_and_an_ifb_for_ingress() -> None:
    steps = _plan({"destination": "198.18.0.3", "rate": "50mbit", "device": "eth0"},
                  {"destination": "2001:db8::1", "rate": "1gbit", "device": "eth0", "direction": "ingress",
                   "protocol": "tcp", "port": 5201})
    assert steps[0] == "tc qdisc add dev eth0 root handle e57: htb default 0"
    assert "classid e57:1 htb rate 50000000bit ceil 50000000bit" in steps[1]
    assert steps[2].endswith("protocol ip u32 match ip dst 198.18.0.3/32 flowid e57:1")
    assert "ip link add e57ifb0 type ifb" in steps and "tc qdisc add dev eth0 handle ffff: ingress" in steps
    assert any("mirred egress redirect dev e57ifb0" in s for s in steps)
    assert [s for s in steps if "match ip6 src 2001:db8::1/128 match ip6 protocol 6 0xff" in s][-1].endswith(
        "match ip6 sport 5201 0xffff flowid e57:2")
    assert not any("nft" in s or "iptables" in s for s in steps)  # nothing to hold, nothing to copy


def test_nothing_is_planned_for_an_empty_config() -> None:
    assert _plan() == []


def test_losses_follow_the_probability_and_correlation_makes_bursts() -> None:
    def runs(correlation: str) -> tuple[float, float]:
        c = d.normalize({"destination": "198.18.0.3", "loss": "20%", "loss_correlation": correlation}, "c")
        impair = d.Impairment(c, random.Random(1))
        lost = [impair.due(0.0) is None for _ in range(50_000)]
        bursts = sum(1 for a, b in itertools.pairwise(lost) if b and not a) or 1
        return sum(lost) / len(lost), sum(lost) / bursts

    share, burst = runs("0%")
    assert share == pytest.approx(0.20, abs=0.01) and burst == pytest.approx(1.25, abs=0.05)
    assert runs("75%")[1] > 1.15 * burst  # netem's correlation model, weak as it is there


def test_delays_jitter_and_reordering() -> None:
    c = d.normalize({"destination": "198.18.0.3", "delay": "20ms", "jitter": "5ms", "reorder": "25%"}, "c")
    impair = d.Impairment(c, random.Random(2))
    dues = [impair.due(100.0) for _ in range(20_000)]
    assert all(x is not None for x in dues)
    early = [x for x in dues if x == 100.0]
    delayed = [x - 100.0 for x in dues if x is not None and x != 100.0]
    assert len(early) / len(dues) == pytest.approx(0.25, abs=0.015)
    assert min(delayed) >= 0.015 and max(delayed) <= 0.025  # uniform, netem's default
    normal = d.Impairment(d.normalize({"destination": "::1", "delay": "1ms", "jitter": "5ms",
                                       "distribution": "normal"}, "c"), random.Random(3))
    assert min(normal.due(0.0) or 0.0 for _ in range(5000)) == 0.0  # clipped, never negative


def test_one_batch_verdict_only_when_no_older_packet_is_still_held() -> None:
    held = d.Held()
    for packet_id in (1, 2, 3, 4):
        held.add(packet_id)
    assert held.release([1, 2]) is True
    assert held.release([4]) is False  # 3 is still held: a batch up to 4 would release it too
    assert held.release([3]) is True and not held.waiting


def test_verdict_messages_are_nfnetlink_queue_verdicts() -> None:
    data = bytearray(d.VERDICT.size)
    d.VERDICT.pack_into(data, 0, d.VERDICT.size, (3 << 8) | d.NFQNL_MSG_VERDICT_BATCH, d.NLM_F_REQUEST, 0, 0,
                        socket.AF_UNSPEC, 0, socket.htons(7401), 12, d.NFQA_VERDICT_HDR, socket.htonl(1),
                        socket.htonl(99))
    assert len(data) == 32 and struct.unpack_from("=IHH", data) == (32, 0x303, 1)
    assert data[16:20] == bytes([0, 0]) + (7401).to_bytes(2, "big")
    assert data[20:24] == struct.pack("=HH", 12, 2) and data[24:32] == struct.pack("!II", 1, 99)


def test_impaird_is_python_38_syntax_and_stdlib_only() -> None:
    tree = ast.parse(IMPAIRD.read_text(), feature_version=(3, 8))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def _impaird(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(IMPAIRD), *args], capture_output=True, text=True, timeout=30)


def test_dry_run_prints_the_commands_and_bad_configs_exit_2() -> None:
    config = json.dumps({"constraints": [{"destination": "198.18.0.3", "rate": "10mbit", "device": "eth0"}]})
    out = _impaird("apply", "--config", config, "--dry-run")
    assert out.returncode == 0 and out.stdout.startswith("tc qdisc add dev eth0 root handle e57: htb")
    bad = _impaird("apply", "--config", '{"constraints": [{"destination": "198.18.0.3", "loss": "2"}]}')
    assert bad.returncode == 2 and "constraints[0].loss: '2' is not a percentage" in bad.stderr
    assert _impaird("apply", "--config", "{not json").returncode == 2


# ── the controller's API ────────────────────────────────────────────────────


def test_constraints_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="emulation constraint: rate: 'fast'"):
        Constraint("198.18.0.3", rate="fast")
    c = Constraint("198.18.0.3", direction="ingress", protocol="udp", port=7700, loss="30%", delay="5ms")
    assert c.to_json() == {"destination": "198.18.0.3", "direction": "ingress", "protocol": "udp", "port": 7700,
                           "loss": "30%", "delay": "5ms"}
    assert c.delay_s == 0.005


def test_between_groups_builds_egress_constraints_both_ways() -> None:
    a, b, c = Host("198.18.0.2", alias="client-0"), Host("198.18.0.3", alias="server-0"), Host("198.18.0.4")
    plan = between([a], [b, c], delay="20ms")
    assert [x.destination for x in plan[a]] == ["198.18.0.3", "198.18.0.4"]
    assert [x.destination for x in plan[b]] == ["198.18.0.2"] and plan[b][0].delay == "20ms"
    assert set(between([a], [b], symmetric=False)) == {a}


def test_argv_builders_carry_the_config_inline() -> None:
    argv = apply_argv([Constraint("198.18.0.3", delay="20ms")], python="/usr/bin/python3", seed=7)
    assert argv[:4] == ["/usr/bin/python3", "/var/lib/enosnet-emu/impaird.py", "apply", "--config"]
    assert json.loads(argv[4]) == {"version": 1, "constraints": [{"destination": "198.18.0.3", "delay": "20ms"}],
                                   "seed": 7}
    assert clear_argv()[-3:] == ["clear", "--state-dir", "/run/enosnet-emu"]
    assert install_argv("/opt/x y/impaird.py")[-1].endswith("mv '/opt/x y/impaird.py'.tmp '/opt/x y/impaird.py'")
    with pytest.raises(ConfigError, match="queue_base"):
        emulation_config([], queue_base=-1)


@pytest.mark.skipif(os.geteuid() != 0, reason="the probe adds a qdisc (in a throwaway network namespace)")
def test_the_netem_probe_agrees_with_the_kernel_config() -> None:
    config = Path("/proc/config.gz")
    if not config.exists():
        pytest.skip("no /proc/config.gz to compare with")
    built = re.search(r"^CONFIG_NET_SCH_NETEM=[ym]$", gzip.decompress(config.read_bytes()).decode(), re.M)
    assert kernel_has_netem(local_runner()) is bool(built)
    with pytest.raises(RemoteError, match="no tc on this host"):
        kernel_has_netem(local_runner(["env", "PATH=/nowhere:/usr/bin"]))


def test_the_netem_roles_variables_translate_to_constraints() -> None:
    config = d.from_netem_vars({
        "interfaces": [{"device": "eth0", "delay": "20ms", "loss": "", "ingress": {"rate": "10mbit"}}],
        "destinations": [{"device": "eth0", "dest": "198.18.0.3", "loss": "1%", "jitter": None}]})
    assert config["constraints"][0] == {"destination": "198.18.0.3", "device": "eth0", "loss": "1%"}
    assert [(c["destination"], c.get("direction"), c.get("delay"), c.get("rate")) for c in config["constraints"][1:]] \
        == [("0.0.0.0/0", "egress", "20ms", None), ("::/0", "egress", "20ms", None),
            ("0.0.0.0/0", "ingress", None, "10mbit"), ("::/0", "ingress", None, "10mbit")]
    steps = " ".join(step.describe() for step in d.plan(d.load_config(config)))
    assert "-d 0.0.0.0/0 -o eth0 -m mark" in steps and 'oifname == "eth0" ip6 daddr ::/0' in steps
    with pytest.raises(d.ConfigProblem, match=r"interfaces\[0\]\.device: required"):
        d.from_netem_vars({"interfaces": [{"delay": "1ms"}]})
    with pytest.raises(d.ConfigProblem, match=r"interfaces\[0\]\.delay: '20 parsecs' is not a duration"):
        d.from_netem_vars({"interfaces": [{"device": "eth0", "delay": "20 parsecs"}]})
    with pytest.raises(d.ConfigProblem, match=r"destinations\[1\]: unknown key\(s\) speed"):
        d.from_netem_vars({"destinations": [{"dest": "198.18.0.3", "delay": "1ms"}, {"dest": "::1", "speed": 1}]})
    with pytest.raises(d.ConfigProblem, match=r"destinations\[0\]: no delay, loss or rate given"):
        d.from_netem_vars({"destinations": [{"dest": "198.18.0.3"}]})


def netem_plan(*constraints: dict[str, Any]) -> list[str]:
    config = d.resolve(d.load_config({"constraints": list(constraints), "backend": "netem"}))
    return [step.describe() for step in d.plan(config)]


def test_the_netem_backend_puts_one_htb_class_with_a_netem_qdisc_per_constraint() -> None:
    steps = netem_plan({"destination": "198.18.0.3", "device": "eth0", "delay": "20 ms", "jitter": "2ms",
                        "distribution": "normal", "loss": "1%", "loss_correlation": "25%"},
                       {"destination": "198.18.0.4", "device": "eth0", "rate": "10mbit", "duplicate": "0.5%",
                        "protocol": "udp", "port": 7700},
                       {"destination": "0.0.0.0/0", "device": "eth0", "direction": "ingress", "reorder": "10%",
                        "delay": "5ms"})
    assert steps[:8] == [
        "tc qdisc add dev eth0 root handle e57: htb default 0",
        "tc class add dev eth0 parent e57: classid e57:1 htb rate 100000000000bit ceil 100000000000bit "
        "quantum 200000",
        "tc qdisc add dev eth0 parent e57:1 handle e581: netem limit 10000 delay 20000us 2000us distribution normal "
        "loss 1% 25%",
        "tc filter add dev eth0 parent e57: prio 1 protocol ip u32 match ip dst 198.18.0.3/32 flowid e57:1",
        "tc class add dev eth0 parent e57: classid e57:2 htb rate 10000000bit ceil 10000000bit quantum 12500",
        "tc qdisc add dev eth0 parent e57:2 handle e582: netem limit 10000 duplicate 0.5%",
        "tc filter add dev eth0 parent e57: prio 2 protocol ip u32 match ip dst 198.18.0.4/32 match ip protocol 17 "
        "0xff match ip dport 7700 0xffff flowid e57:2",
        "tc filter add dev eth0 parent e57: prio 2 protocol ip u32 match ip dst 198.18.0.4/32 match ip protocol 17 "
        "0xff match ip sport 7700 0xffff flowid e57:2"]
    assert steps[8:] == [
        "ip link add e57ifb0 type ifb", "ip link set e57ifb0 up", "tc qdisc add dev eth0 handle ffff: ingress",
        "tc filter add dev eth0 parent ffff: protocol all prio 1 u32 match u32 0 0 action mirred egress redirect "
        "dev e57ifb0",
        "tc qdisc add dev e57ifb0 root handle e57: htb default 0",
        "tc class add dev e57ifb0 parent e57: classid e57:3 htb rate 100000000000bit ceil 100000000000bit "
        "quantum 200000",
        "tc qdisc add dev e57ifb0 parent e57:3 handle e583: netem limit 10000 delay 5000us reorder 10%",
        "tc filter add dev e57ifb0 parent e57: prio 3 protocol ip u32 match ip src 0.0.0.0/0 flowid e57:3"]
    assert not any("iptables" in s or "nft" in s for s in steps)  # the kernel does it all: no daemon, no queues


def test_both_backends_shape_rates_with_the_same_classes() -> None:
    rated = {"destination": "198.18.0.3", "device": "eth0", "rate": "20mbit"}
    nfqueue = [step.describe() for step in d.plan(d.resolve(d.load_config({"constraints": [rated],
                                                                             "backend": "nfqueue"})))]
    assert nfqueue == netem_plan(rated)


def test_a_constraint_without_a_device_toward_everything_is_refused_by_the_netem_backend() -> None:
    with pytest.raises(d.CommandFailed, match=r"constraint to 0.0.0.0/0: give it a 'device'"):
        netem_plan({"destination": "0.0.0.0/0", "delay": "1ms"})


OLDEST = python38()


@pytest.mark.skipif(OLDEST is None, reason="no python3.8 on this machine")
def test_impaird_runs_on_python_38() -> None:
    """Plans and emulator logic under the oldest Python hosts may have (the netlink part runs on hosts' tests)."""
    config = json.dumps({"constraints": [
        {"destination": "198.18.0.3", "delay": "20ms", "jitter": "1ms", "duplicate": "1%", "protocol": "udp",
         "port": 7700},
        {"destination": "198.18.0.0/24", "direction": "ingress", "rate": "10mbit", "device": "eth0"}]})
    out = subprocess.run([str(OLDEST), str(IMPAIRD), "apply", "--dry-run", "--config", config], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "NFQUEUE --queue-num 7400" in out.stdout, out.stderr
    logic = ("import sys; sys.path.insert(0, sys.argv[1]); import impaird as d\n"
             "c = d.load_config({'constraints': [{'destination': '198.18.0.3', 'delay': '1us', 'jitter': '1us'}]})\n"
             "h = d.Held(); h.add(1); h.add(2); assert h.release([2]) is False and h.release([1]) is True\n"
             "i = d.Impairment(c['constraints'][0], __import__('random').Random(1)); assert i.due(0.0) >= 0\n")
    done = subprocess.run([str(OLDEST), "-c", logic, str(IMPAIRD.parent)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_daemon_reads_how_much_real_time_its_control_group_allows(tmp_path: Path) -> None:
    """A local host's group allows 1 % (for the agent's start gate): the daemon would stall there, so stays normal."""
    from enosnet.emulation.impaird import realtime_share

    assert realtime_share(str(tmp_path)) is None  # no real-time group scheduling: no such limit
    (tmp_path / "cpu.rt_period_us").write_text("1000000\n")
    (tmp_path / "cpu.rt_runtime_us").write_text("10000\n")
    assert realtime_share(str(tmp_path)) == 0.01
    (tmp_path / "cpu.rt_runtime_us").write_text("-1\n")  # unlimited
    assert realtime_share(str(tmp_path)) is None

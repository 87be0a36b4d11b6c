"""One engine behind the three ways to ask for emulation: the same delay gives the same rules and qdiscs.

A 20 ms delay between a client and a server is asked for with ``enosnet netem apply``, with the ``netem``
role run by plain ansible-playbook, and by a bench experiment's ``netem:`` section (looked at while its run
measures). Each time, both hosts hold exactly the same emulation: the engine's recorded config and undo
journal, and what tc, iptables and nft show.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import load_experiment
from enosnet.coordinator import iperf3_actions
from enosnet.testing import start_agents_over_ssh

pytestmark = pytest.mark.hosts
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STATE = "/run/enosnet-emu/state.json"
SNAPSHOT = (f"cat {STATE}; echo @@; tc qdisc show; tc class show dev eth0; tc filter show dev eth0; echo @@; "
            "iptables-legacy -t mangle -S; ip6tables-legacy -t mangle -S; nft list ruleset")


def snapshot(deployment: Any, host: str) -> dict[str, Any]:
    """The engine's record (config, undo journal) and the host's rules and qdiscs, without counters and pids."""
    out = subprocess.run([*deployment.provider.enter(deployment.roles.find(host)), "sh", "-c", SNAPSHOT],
                         capture_output=True, text=True, timeout=30).stdout
    record, tc, rules = out.split("@@")
    state = json.loads(record)
    tc = re.sub(r" refcnt \d+| direct_packets_stat \d+|eth0@if\d+", "", tc)
    return {"config": state["config"], "undo": state["undo"], "tc": tc, "rules": rules}


def settled(deployment: Any, host: str, steps: int, timeout: float = 60) -> dict[str, Any]:
    """The host's snapshot once the engine recorded ``steps`` undo steps (its apply has finished)."""
    enter = [*deployment.provider.enter(deployment.roles.find(host)), "cat", STATE]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if len(json.loads(subprocess.run(enter, capture_output=True, text=True).stdout)["undo"]) == steps:
                return snapshot(deployment, host)
        except (ValueError, KeyError):
            pass  # not there yet, or being written
        assert time.monotonic() < deadline, f"the emulation on {host} did not settle"
        time.sleep(0.05)


def cleared(deployment: Any) -> bool:
    return all(subprocess.run([*deployment.provider.enter(h), "test", "-e", STATE]).returncode != 0
               for h in deployment.roles.all())


@pytest.mark.timeout(600)
def test_netem_cli_role_and_bench_put_the_same_emulation_in_place(local_hosts: Callable[..., Any],
                                                                  tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1, "client": 1}, name="same")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_PIPELINING": "True"}
    client, server = (deployment.roles.find(h).address for h in ("client-0", "server-0"))
    seen: dict[str, dict[str, Any]] = {}

    spec = tmp_path / "wan.yaml"
    spec.write_text("between:\n  - {from: client, to: server, delay: 20ms}\n")
    applied = subprocess.run([str(BIN / "enosnet"), "netem", "apply", str(spec), "--env", str(deployment.env.root)],
                             capture_output=True, text=True, timeout=300, env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    seen["enosnet netem"] = {h: snapshot(deployment, h) for h in ("client-0", "server-0")}
    assert subprocess.run([str(BIN / "enosnet"), "netem", "clear", "--env", str(deployment.env.root)],
                          capture_output=True, timeout=300, env=env).returncode == 0
    assert cleared(deployment)

    extra = {"netem_destinations": "{{ [{'device': 'eth0', 'dest': peer, 'delay': '20ms'}] }}"}
    for host, peer in (("client-0", server), ("server-0", client)):
        role = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(deployment.env.inventory_file),
                               str(ROOT / "playbooks" / "netem.yml"), "-l", host,
                               "-e", json.dumps({**extra, "peer": peer})],
                              capture_output=True, text=True, timeout=300, env=env)
        assert role.returncode == 0, role.stdout[-2000:]
    seen["netem role"] = {h: snapshot(deployment, h) for h in ("client-0", "server-0")}
    assert subprocess.run([str(BIN / "ansible-playbook"), "-i", str(deployment.env.inventory_file),
                           str(ROOT / "playbooks" / "netem-clear.yml")], capture_output=True, timeout=300,
                          env=env).returncode == 0
    assert cleared(deployment)

    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, actions=iperf3_actions(),
                          port=access.port)
    experiment = tmp_path / "exp.yaml"
    experiment.write_text("name: same\nduration: 4s\nchecks: {netem: false}\n"
                          "netem: {between: [client, server], delay: 20ms}\n")
    result: list[Any] = []
    bench = threading.Thread(target=lambda: result.append(run_experiment(deployment.env,
                                                                         load_experiment(experiment))))
    bench.start()
    try:
        seen["enosnet bench"] = {h: settled(deployment, h, len(seen["enosnet netem"][h]["undo"]))
                                 for h in ("client-0", "server-0")}
    finally:
        bench.join(timeout=300)
    assert result and (result[0].done, result[0].failed) == (1, 0)
    assert cleared(deployment)

    reference = seen["enosnet netem"]
    assert reference["client-0"]["config"]["constraints"][0]["destination"] == f"{server}/32"
    assert reference["client-0"]["config"]["constraints"][0]["device"] == "eth0"
    assert reference["client-0"]["config"]["constraints"][0]["delay_s"] == 0.02
    for way, hosts in seen.items():
        for host in ("client-0", "server-0"):
            assert hosts[host] == reference[host], f"{way} on {host} differs from enosnet netem"

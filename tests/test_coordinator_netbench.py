"""The netbench action pair on loopback agents, with the real s2n-netbench drivers (built from crates.io).

A scenario with two servers: each server runs with its own SERVER_ID and PORT,
the client reaches both through SERVER_0/SERVER_1, and stopping the servers
leaves no driver behind.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from enosnet.bench.drivers.netbench_output import parse_trace, scenario_bytes
from enosnet.coordinator import SyncCoordinator, Worker, agent_config, netbench_actions
from enosnet.coordinator.agent.host import group_members
from enosnet.testing import LocalAgents


@pytest.fixture
def netbench(tmp_path: Path, netbench_bin: Path) -> Iterator[tuple[list[Worker], str, dict]]:
    scenarios = tmp_path / "scenarios"
    subprocess.run([str(netbench_bin / "s2n-netbench-scenarios"), "--request_response.servers", "2",
                    "--request_response.response_size", "3MB", str(scenarios)], check=True, capture_output=True)
    actions = netbench_actions(bin_dir=str(netbench_bin), scenario_dir=str(scenarios))
    secret, workers, configs = "netbench-secret-0123456789", [], []
    for role, count in (("server", 2), ("client", 1)):
        for index in range(count):
            port = _free(socket.SOCK_DGRAM)
            name = f"{role}-{index}"
            workers.append(Worker(name, role, "127.0.0.1", port, index))
            configs.append(agent_config(name, role=role, secret=secret, env_id="nb", actions=actions, port=port,
                                        workdir=str(tmp_path / name), bind="127.0.0.1"))
    with LocalAgents(configs, folder=tmp_path):
        yield workers, secret, json.loads((scenarios / "request_response.json").read_text())


def test_every_endpoint_runs_with_its_ids_and_stopping_leaves_no_driver(
        netbench: tuple[list[Worker], str, dict]) -> None:
    workers, secret, scenario = netbench
    ports = {0: _free(socket.SOCK_STREAM), 1: _free(socket.SOCK_STREAM)}
    with SyncCoordinator(workers, env_id="nb", secret=secret) as coord:
        result = coord.run_pair(
            servers="server", server_action="netbench-server",
            server_params=lambda w: {"driver": "s2n-netbench-driver-server-tcp", "scenario": "request_response.json",
                                     "port": ports[w.index], "transport": "tcp"},
            clients="client", client_action="netbench-client",
            client_params={"driver": "s2n-netbench-driver-client-tcp", "scenario": "request_response.json",
                           "servers": [f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"]},
            start_in=2.5)  # a lead a loaded CI can meet
    [client] = result.clients
    stderr = Path(client.stderr or "").read_text()
    assert client.ok and parse_trace(stderr.splitlines()).error is None, stderr
    assert scenario_bytes(scenario, 0) == (2 * 3_000_000, 2 * 1_000)  # one request to each server
    assert [r.state for r in result.servers] == ["stopped", "stopped"]
    for record in result.servers:  # each server ran its own part: SERVER_ID from its index
        assert record.pid is not None and not group_members(record.pid)
    usage = json.loads((Path(client.run_dir or "") / "run.json").read_text())["usage"]
    assert usage["max_rss_kib"] > 0 and usage["user_s"] + usage["system_s"] > 0


def _free(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

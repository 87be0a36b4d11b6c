"""The netbench action pair on loopback agents, with stand-ins that honour NETBENCH.md's contract.

The collector runs the driver as a child (same process group) and prints JSON lines;
the server driver never exits by itself; the client driver reports what it was given.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from enosnet.coordinator import SyncCoordinator, Worker, agent_config, netbench_actions
from enosnet.coordinator.agent.runtime import _group_members
from enosnet.coordinator.install import LocalAgents

COLLECTOR = f"""#!{sys.executable}
import json, os, subprocess, sys, time
driver, scenario = sys.argv[1], sys.argv[sys.argv.index("--scenario") + 1]
child = subprocess.Popen([driver, scenario])
print(json.dumps({{"pid": child.pid, "driver": os.path.basename(driver), "scenario": scenario,
                  "start_time": {{"secs_since_epoch": int(time.time()), "nanos_since_epoch": 0}}, "traces": []}}),
      flush=True)
sys.exit(child.wait())
"""
SERVER = f"""#!{sys.executable}
import json, os, socket, time
with open(os.path.join(os.environ["RECORD_DIR"], "server-" + os.environ["SERVER_ID"]), "w") as out:
    json.dump({{"pid": os.getpid(), "pgid": os.getpgid(0), "port": os.environ["PORT"]}}, out)
sock = socket.socket(); sock.bind(("127.0.0.1", int(os.environ["PORT"]))); sock.listen()
while True:
    time.sleep(1)
"""
CLIENT = f"""#!{sys.executable}
import json, os, sys
servers = {{k: v for k, v in os.environ.items() if k.startswith("SERVER_")}}
print(json.dumps({{"client_id": os.environ["CLIENT_ID"], "servers": servers, "scenario": sys.argv[1]}}), flush=True)
"""


@pytest.fixture
def netbench(tmp_path: Path) -> Iterator[tuple[list[Worker], str, Path]]:
    bins, scenarios, records = tmp_path / "bin", tmp_path / "scenarios", tmp_path / "records"
    for folder in (bins, scenarios, records):
        folder.mkdir()
    for name, text in (("s2n-netbench-collector", COLLECTOR), ("s2n-netbench-driver-server-tcp", SERVER),
                       ("s2n-netbench-driver-client-tcp", CLIENT)):
        (bins / name).write_text(text)
        (bins / name).chmod(0o755)
    (scenarios / "incast.json").write_text(json.dumps({"id": "x", "clients": [{}, {}], "servers": [{}, {}]}))
    actions = netbench_actions(bin_dir=str(bins), scenario_dir=str(scenarios))
    actions["netbench-server"]["env"]["RECORD_DIR"] = str(records)
    secret, workers, configs = "netbench-secret-0123456789", [], []
    for role in ("server", "client"):
        for index in range(2):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            name = f"{role}-{index}"
            workers.append(Worker(name, role, "127.0.0.1", port, index))
            configs.append(agent_config(name, role=role, secret=secret, env_id="nb", actions=actions, port=port,
                                        workdir=str(tmp_path / name), bind="127.0.0.1"))
    with LocalAgents(configs, folder=tmp_path):
        yield workers, secret, records


def test_every_endpoint_runs_with_its_ids_and_stopping_kills_the_driver_too(
        netbench: tuple[list[Worker], str, Path]) -> None:
    workers, secret, records = netbench
    ports = {0: _free_tcp(), 1: _free_tcp()}
    servers = [f"127.0.0.1:{ports[i]}" for i in range(2)]
    with SyncCoordinator(workers, env_id="nb", secret=secret) as coord:
        result = coord.run_pair(
            servers="server", server_action="netbench-server",
            server_params=lambda w: {"driver": "s2n-netbench-driver-server-tcp", "scenario": "incast.json",
                                     "port": ports[w.index]},
            clients="client", client_action="netbench-client",
            client_params={"driver": "s2n-netbench-driver-client-tcp", "scenario": "incast.json",
                           "servers": servers}, start_in=2.5)  # a lead a loaded CI can meet
    assert all(r.ok for r in result.clients), result.clients
    for record in result.clients:
        first, report = [json.loads(x) for x in Path(record.stdout or "").read_text().splitlines()]
        assert first["driver"] == "s2n-netbench-driver-client-tcp"
        assert report["client_id"] == str(record.worker.split("-")[1])
        assert report["servers"] == {"SERVER_0": servers[0], "SERVER_1": servers[1]}
    assert [r.state for r in result.servers] == ["stopped", "stopped"]
    for index in range(2):  # both servers ran (not only servers[0]), each with its own SERVER_ID and PORT
        seen = json.loads((records / f"server-{index}").read_text())
        assert seen["port"] == str(ports[index])
        assert seen["pgid"] != seen["pid"]  # the driver is the collector's child, in its group
        assert not _group_members(seen["pgid"])  # killing the group took the driver too


def _free_tcp() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

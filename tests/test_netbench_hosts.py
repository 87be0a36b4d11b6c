"""`enosnet bench` with the real s2n-netbench drivers (tcp, s2n-tls, s2n-quic) on local namespace hosts.

The drivers are the crates of crates.io, built once per machine (the
``netbench_bin`` fixture); scenarios come from the real generator.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import load_experiment
from enosnet.coordinator import iperf3_actions, netbench_actions
from enosnet.errors import ConfigError
from enosnet.results.report import build_report
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

pytestmark = pytest.mark.hosts
SCENARIOS = "/var/lib/enosnet/scenarios"


def deploy(local_hosts: Callable[..., Any], netbench_bin: Path, counts: dict[str, int], name: str) -> Any:
    """Local hosts whose agents run the real drivers (the build cache's folder is shared with the hosts)."""
    deployment = local_hosts(counts, name=name, share=[netbench_bin])
    access = agent_access(deployment.env)
    actions = {**iperf3_actions(), **netbench_actions(bin_dir=str(netbench_bin), scenario_dir=SCENARIOS)}
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, actions=actions,
                          port=access.port)
    return deployment


def experiment(tmp_path: Path, netbench_bin: Path, body: str, name: str = "nb") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ndriver: netbench\nduration: 1s\norder: as-written\n"
                    + body.replace("SCENARIOS", str(netbench_bin / "s2n-netbench-scenarios")))
    return path


def metrics(env: Any, name: str, by: str = "driver") -> dict[tuple[str, str], float]:
    """(the run's value of parameter ``by``, host) → value of one metric, over every run."""
    with ResultsStore.open(env.db_file, create=False) as store:
        return {(str(m.params.get(by)), m.host or ""): m.value for m in store.metrics(name=name)}


def drivers_left() -> str:
    out = subprocess.run(["pgrep", "-af", "s2n-netbench-driver"], capture_output=True, text=True)
    return out.stdout.strip()


COMPARE = """
netbench:
  generate: {program: SCENARIOS, options: {response_size: 20MB}}
  drivers: [tcp, s2n-tls, s2n-quic]
"""


def test_the_real_drivers_run_and_their_numbers_agree_with_the_scenario_and_the_interface(
        local_hosts: Callable[..., Any], netbench_bin: Path, tmp_path: Path) -> None:
    deployment = deploy(local_hosts, netbench_bin, {"server": 1, "client": 1}, "nbreal")
    result = run_experiment(deployment.env, load_experiment(experiment(tmp_path, netbench_bin, COMPARE)))
    assert (result.done, result.failed) == (3, 0)
    received = metrics(deployment.env, "bytes_received")
    traced = metrics(deployment.env, "bytes_received_traced")
    ratio = metrics(deployment.env, "iface_rx_ratio")
    drops = metrics(deployment.env, "udp_rcvbuf_drops")
    throughput = metrics(deployment.env, "throughput")
    for driver in ("tcp", "s2n-tls", "s2n-quic"):
        key = (driver, "client-0")
        assert received[key] == 20_000_000  # what the scenario sends the client, which completed it
        assert traced[key] <= received[key] * 1.02  # the trace's lines: up to the last whole second
        # the host's interface saw the same bytes, and a little more: headers, and for QUIC its framing and
        # retransmissions. Those are usually 1.03-1.10 here, but when the two cores are busy the client's UDP
        # socket overflows and the server resends what it dropped, as often as the load makes it: 1.28, 1.30
        # and 1.59 were seen. So for QUIC only the error this check exists for is ruled out: double counting
        # (both ends' interfaces, or a counter read twice) gives 2 or more.
        assert 0.9 <= ratio[key] < (1.9 if driver == "s2n-quic" else 1.1), (driver, ratio[key])
        assert throughput[key] > 1e6
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        runs = store.runs()
        measured = {m.value for m in store.host_metadata(per_run=True) if m.key == "netbench.measured_by"}
        driver_of = {r.id: str(r.params["driver"]) for r in runs}
        checked = {driver_of[m.run_id or 0]: m.value for m in store.host_metadata(per_run=True)
                   if m.key == "netbench.cross_check"}
        assert all(r.status == "ok" and r.start_skew is not None for r in runs)
        cpu = [m.value for m in store.metrics(name="cpu")]
    assert measured == {"driver-trace; bytes from the scenario"}
    for driver, verdict in checked.items():  # a run is flagged exactly when its figures are over 10 % apart
        key = (driver, "client-0")
        assert verdict.startswith("interface received") and ("agrees" in verdict) == (abs(ratio[key] - 1) <= 0.10)
        # the client host's UDP receive-buffer drops during the run are counted, and named when there were any
        assert drops[key] >= 0 and ("dropped" in verdict) == (drops[key] > 0), (verdict, drops[key])
    assert len(cpu) == 3 and all(c > 0 for c in cpu)
    tree = {p.relative_to(result.runs_dir).parts[1:] for p in result.runs_dir.rglob("netbench/*/*/*.json")}
    assert tree == {("netbench", "request_response", d, f"{side}-0.json")
                    for d in ("tcp", "s2n-tls", "s2n-quic") for side in ("client", "server")}
    assert drivers_left() == ""

    report = build_report(deployment.env)  # netbench's own report-tree over every run, linked from enosnet's
    assert report.netbench is not None and report.netbench.files == 6
    assert report.netbench.index is not None and report.netbench.index.is_file()
    assert 'href="netbench/index.html"' in report.html.read_text()


DELAY = """
parameters: {delay: [0ms, 20ms]}
netem: {between: [client, server], delay: "{delay}"}
netbench:
  generate: {program: SCENARIOS, options: {response_size: 1000, connections: 5}}
  drivers: [tcp]
"""


def test_an_emulated_delay_shows_in_netbench_results(local_hosts: Callable[..., Any], netbench_bin: Path,
                                                     tmp_path: Path) -> None:
    deployment = deploy(local_hosts, netbench_bin, {"server": 1, "client": 1}, "nbdelay")
    result = run_experiment(deployment.env, load_experiment(experiment(tmp_path, netbench_bin, DELAY)))
    assert (result.done, result.failed) == (2, 0)
    duration = metrics(deployment.env, "duration", by="delay")
    # five connections one after the other, each at least one more round trip of 2 × 20 ms (a handshake and
    # a request: about two, measured 0.39 s more in all; the drivers may overlap the last exchanges)
    assert duration[("20ms", "client-0")] - duration[("0ms", "client-0")] >= 5 * 0.040
    throughput = metrics(deployment.env, "throughput", by="delay")
    assert throughput[("20ms", "client-0")] < throughput[("0ms", "client-0")]


ABSENT = """
netbench:
  generate: {program: SCENARIOS, options: {response_size: 1MB}}
  drivers: [tcp]
"""


def test_a_client_whose_server_cannot_be_reached_fails_the_run_with_the_driver_error(
        local_hosts: Callable[..., Any], netbench_bin: Path, tmp_path: Path) -> None:
    deployment = deploy(local_hosts, netbench_bin, {"server": 1, "client": 1}, "nbabsent")
    server = deployment.roles["server"][0]
    # the server runs and listens, but its host refuses every connection to it
    reject = "iptables -A INPUT -p tcp --dport 4433 -j REJECT --reject-with tcp-reset"
    subprocess.run([*deployment.provider.enter(server), "sh", "-c", reject], check=True, timeout=30)
    result = run_experiment(deployment.env, load_experiment(experiment(tmp_path, netbench_bin, ABSENT)))
    assert (result.done, result.failed) == (0, 1)
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        [run] = store.runs()
        assert not store.metrics(name="throughput")  # never "ok with 0 bit/s", and no number at all
    assert run.status == "failed"
    assert "client-0: the client failed: Error: " in (run.reason or "") and "ConnectionRefused" in (run.reason or "")
    assert drivers_left() == ""


def test_generator_errors_name_the_experiment_file_and_line(local_hosts: Callable[..., Any], netbench_bin: Path,
                                                            tmp_path: Path) -> None:
    deployment = deploy(local_hosts, netbench_bin, {"server": 1, "client": 1}, "nbgenerr")
    body = ABSENT.replace("response_size: 1MB", "clients: 4")  # request_response has no `clients` option
    path = experiment(tmp_path, netbench_bin, body)
    with pytest.raises(ConfigError, match=rf"{path}:7 netbench.generate.options: s2n-netbench-scenarios on "
                                          r"server-0 refused the options --request_response.clients 4: "
                                          r"error: Found argument '--request_response.clients' which wasn't expected"):
        run_experiment(deployment.env, load_experiment(path))


def test_a_scenario_that_does_not_fit_the_hosts_fails_before_running(local_hosts: Callable[..., Any],
                                                                     netbench_bin: Path, tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1, "client": 1}, name="nbmis")
    scenario = tmp_path / "two.json"
    subprocess.run([str(netbench_bin / "s2n-netbench-scenarios"), "--request_response.servers", "2", str(tmp_path)],
                   check=True, capture_output=True)
    (tmp_path / "request_response.json").rename(scenario)
    path = experiment(tmp_path, netbench_bin, f"netbench: {{scenario: {scenario}, drivers: [tcp]}}\n")
    with pytest.raises(ConfigError, match="has 2 servers and 1 clients, but the environment has 1 hosts in role "
                                          "'server' and 1 in 'client'"):
        run_experiment(deployment.env, load_experiment(path))
    assert not deployment.env.db_file.exists()
    assert json.loads(scenario.read_text())["servers"]

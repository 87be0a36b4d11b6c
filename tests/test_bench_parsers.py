"""Parsers of what hosts produce: iperf3 -J (real outputs from iperf3 on loopback), collector JSON lines,
agent samples, the metadata probe and the check helpers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from enosnet.bench.checks import listening_ports
from enosnet.bench.drivers.iperf3 import parse_client_json
from enosnet.bench.drivers.netbench_output import parse_trace, scenario_bytes, trace_samples
from enosnet.bench.instrument import parse_agent_samples
from enosnet.bench.metadata import PROBE, RUN_PROBE, parse_metadata, parse_run_probe
from enosnet.emulation.rtt import parse_ping

FIXTURES = Path(__file__).parent / "fixtures"


def metrics(path: str) -> dict[str, float]:
    parsed = parse_client_json((FIXTURES / "iperf3" / path).read_text(), host="c0")
    assert not parsed.problems
    return {m.name: m.value for m in parsed.metrics}


def test_iperf3_summary_metrics_come_from_the_receiver_and_sender_sums() -> None:
    data = json.loads((FIXTURES / "iperf3" / "client-reno.json").read_text())
    values = metrics("client-reno.json")
    assert values["throughput"] == data["end"]["sum_received"]["bits_per_second"]
    assert values["throughput_sent"] == data["end"]["sum_sent"]["bits_per_second"]
    assert values["rtt_mean"] == data["end"]["streams"][0]["sender"]["mean_rtt"] / 1000
    assert values["cpu_local"] == data["end"]["cpu_utilization_percent"]["host_total"]
    assert values["retransmits"] == 0


def test_iperf3_parallel_streams_are_summed_and_intervals_become_samples() -> None:
    data = json.loads((FIXTURES / "iperf3" / "client-parallel2.json").read_text())
    parsed = parse_client_json(json.dumps(data), host="c0")
    values = {m.name: m.value for m in parsed.metrics}
    assert values["retransmits"] == data["end"]["sum_sent"]["retransmits"]
    throughput = [s for s in parsed.samples if s.series == "throughput"]
    assert [s.value for s in throughput] == [i["sum"]["bits_per_second"] for i in data["intervals"]]
    assert all(s.unit == "bit/s" and s.host == "c0" for s in throughput)


def test_an_iperf3_error_is_a_problem_even_with_exit_status_zero() -> None:
    # iperf3 3.12 exits 0 with -J when the connection is refused: the JSON's "error" is what tells
    parsed = parse_client_json((FIXTURES / "iperf3" / "client-refused.json").read_text(), host="c0")
    assert parsed.problems == ["c0: iperf3: unable to connect to server: Connection refused"]
    assert parsed.metrics == []


def test_a_real_driver_trace_gives_per_second_rates_but_not_the_last_partial_second() -> None:
    # the real s2n-quic client receiving 3 GB in about 2.5 s: two lines, the last ~0.5 s never printed
    trace = parse_trace((FIXTURES / "netbench" / "client-s2n-quic.stderr").read_text().splitlines())
    assert trace.error is None
    assert [(p.t, p.rx, p.tx) for p in trace.points] == [(1.000127, 922.42e6, 999.0), (2.001222, 1.38e9, 0.0)]
    received, _sent = trace.totals()
    assert 2.2e9 < received < 3e9  # short of the 3 GB the client received: the tail is not in the trace
    samples = trace_samples(trace, host="c0", offset=0.5)
    assert [(s.series, s.t, s.value) for s in samples][:2] == [("throughput", 1.5, 922.42e6 * 8),
                                                               ("throughput_sent", 1.5, 999.0 * 8)]


def test_a_real_driver_error_line_is_found() -> None:
    trace = parse_trace((FIXTURES / "netbench" / "client-tcp-refused.stderr").read_text().splitlines())
    assert trace.error == 'Error: Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }'
    assert trace.points == []
    panic = parse_trace(["thread 'main' panicked at src/lib.rs:1:1:", "boom"])
    assert panic.error == "thread 'main' panicked at src/lib.rs:1:1:"


def test_scenario_bytes_follow_loops_scopes_and_profiles() -> None:
    receive = {"receive": {"stream_id": 0, "bytes": 100}}
    ops = [{"iterate": {"value": {"count": {"amount": 3}}, "operations": [receive]}},
           {"scope": {"threads": [[receive], [{"profile": {"trace_id": 0, "operations": [receive]}}]]}},
           {"send": {"stream_id": 0, "bytes": 7}}]
    scenario = {"clients": [{"scenario": [{"connect": {"client_connection_id": 0}},
                                          {"connect": {"client_connection_id": 1}}],
                             "connections": [{"ops": ops}, {"ops": [receive]}]}]}
    assert scenario_bytes(scenario, 0) == (3 * 100 + 2 * 100 + 100, 7)
    timed = [{"iterate": {"value": {"time": {"amount_ms": 1000}}, "operations": [receive]}}]
    assert scenario_bytes({"clients": [{"scenario": [{"connect": {"client_connection_id": 0}}],
                                        "connections": [{"ops": timed}]}]}, 0) == (None, 0)
    assert scenario_bytes(scenario, 1) == (None, None)


def test_agent_samples_give_cpu_and_the_busiest_interface() -> None:
    eth0 = [1000] + [0] * 7 + [500] + [0] * 7  # rx bytes, …, tx bytes, …
    lines = [json.dumps({"t": 0, "cpu": [0, 0, 0, 100, 0], "net": {"lo": [10**9] + [0] * 15, "eth0": [0] * 16}}),
             json.dumps({"t": 2 * 10**9, "cpu": [50, 0, 50, 200, 0],
                         "net": {"lo": [2 * 10**9] + [0] * 15, "eth0": eth0}})]
    samples = parse_agent_samples(lines, host="h", start_ns=10**9)
    assert [(s.series, s.t, s.value) for s in samples] == [("cpu", 1.0, 50.0), ("net_rx", 1.0, 4000.0),
                                                           ("net_tx", 1.0, 2000.0)]


def test_the_metadata_probes_run_here_and_parse() -> None:
    full = subprocess.run(["python3", "-c", PROBE, "experiment", "127.0.0.1"], capture_output=True, text=True,
                          timeout=30, check=True).stdout
    items = {m.key: m.value for m in parse_metadata("h", full, source="probe")}
    assert items["net.iface"] == "lo" and items["kernel"] and int(items["cpu.count"]) >= 1
    assert items["version.iperf3"].startswith("iperf 3")
    assert "sysctl.net.ipv4.tcp_congestion_control" in items
    per_run = subprocess.run(["sh", "-c", RUN_PROBE], capture_output=True, text=True, timeout=30, check=True).stdout
    keys = {m.key for m in parse_run_probe("h", per_run)}
    assert "sysctl.net.ipv4.tcp_congestion_control" in keys and any(k.startswith("qdisc.") for k in keys)


def test_check_helpers() -> None:
    assert parse_ping("5 packets transmitted, 5 received\nrtt min/avg/max/mdev = 0.051/0.070/0.093/0.015 ms").rtt_s \
        == 0.00007
    assert parse_ping("5 packets transmitted, 0 received, 100% packet loss").rtt_s is None
    table = "sl local rem st\n 0: 0100007F:1451 00000000:0000 0A\n 1: 0100007F:1452 0100007F:9999 01\n"
    assert listening_ports(table) == {5201}

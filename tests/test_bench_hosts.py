"""`enosnet bench` on real local namespace hosts with real agents and real iperf3 (netbench: test_netbench_hosts)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench import checks as chk
from enosnet.bench.conditions import Conditions, Emulation
from enosnet.bench.plan import make_plan
from enosnet.bench.runner import BenchOptions, agent_access, run_experiment
from enosnet.bench.spec import ChecksSection, load_experiment, parse_experiment
from enosnet.coordinator import iperf3_actions
from enosnet.errors import CheckFailed
from enosnet.remote.session import Session
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

pytestmark = pytest.mark.hosts


def deploy(local_hosts: Callable[..., Any], counts: dict[str, int], name: str) -> Any:
    """Local hosts with agents that can run iperf3."""
    deployment = local_hosts(counts, name=name)
    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, actions=iperf3_actions(),
                          port=access.port)
    return deployment


def experiment(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


SWEEP = """
name: sweep
duration: 1s
repetitions: 2
seed: 11
parameters: {cc: [cubic, reno]}
iperf3: {congestion: "{cc}"}
"""


def test_a_sweep_stores_runs_metrics_metadata_and_timings_in_the_seeded_order(
        local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = deploy(local_hosts, {"server": 1, "client": 2}, "sweep")
    spec = load_experiment(experiment(tmp_path, SWEEP))
    events: list[Any] = []
    result = run_experiment(deployment.env, spec, on_event=events.append)
    assert (result.done, result.failed, result.skipped) == (4, 0, 0)

    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        runs = store.runs()
        assert [r.key for r in runs] == [r.key for r in make_plan(spec).runs]  # the order the seed gives
        assert {r.seed for r in runs} == {11} and all(r.status == "ok" for r in runs)
        for run in runs:
            assert run.scheduled_start is not None and run.started is not None and run.ended is not None
            assert run.scheduled_start <= run.started + 0.005 and run.ended > run.started + 0.9
            assert run.start_skew is not None and 0 <= run.start_skew < 0.05
        throughput = store.metrics(name="throughput")
        assert {(m.host, m.unit) for m in throughput} == {("client-0", "bit/s"), ("client-1", "bit/s")}
        assert len(throughput) == 8 and all(m.value > 1e8 for m in throughput)
        processes = store.processes()
        assert {(p.host, p.action) for p in processes} == {
            ("server-0", "iperf3-server"), ("client-0", "iperf3-client"), ("client-1", "iperf3-client")}
        assert all(p.exit_code == 0 for p in processes if p.action == "iperf3-client")
        metadata = {(m.host, m.key): m.value for m in store.host_metadata()}
        assert metadata[("server-0", "net.mtu")] == "1500" and metadata[("client-0", "kernel")]
        assert metadata[("client-1", "experiment.file_hash")] == spec.file_hash
        per_run = [m for m in store.host_metadata(per_run=True) if m.run_id is not None]
        assert {m.key for m in per_run} >= {"sysctl.net.ipv4.tcp_congestion_control", "qdisc.eth0"}
        assert {m.host for m in store.samples(series="cpu")} == {"server-0", "client-0", "client-1"}
        [exp] = store.experiments()
        assert exp.seed == 11 and not exp.forced and all(c["ok"] for c in exp.checks)
        assert {c["name"] for c in exp.checks} >= {"reachable", "agent", "clock_offset", "leftovers", "mtu", "rtt"}
    folder = Path(events[-1].runs_dir)
    run_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    assert len(run_dirs) == 4
    assert json.loads((run_dirs[0] / "client-1" / "iperf3-client" / "stdout").read_text())["end"]
    assert (run_dirs[0] / "server-0" / "iperf3-server-5201" / "stdout").exists()
    assert (run_dirs[0] / "server-0" / "iperf3-server-5202" / "stdout").exists()  # one port per client


def test_a_failing_client_fails_its_run_and_the_next_run_proceeds(local_hosts: Callable[..., Any],
                                                                 tmp_path: Path) -> None:
    deployment = deploy(local_hosts, {"server": 1, "client": 1}, "fail")
    text = ("name: fail\nduration: 1s\norder: as-written\nparameters: {cc: [nosuchcc, reno]}\n"
            "iperf3: {congestion: '{cc}'}\n")
    result = run_experiment(deployment.env, parse_experiment(text))
    assert (result.done, result.failed) == (1, 1)
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        failed, ok = store.runs()
    assert failed.params == {"cc": "nosuchcc"} and failed.status == "failed"
    assert failed.reason and "client-0" in failed.reason
    assert ok.params == {"cc": "reno"} and ok.status == "ok"


def test_resume_after_the_bench_process_is_killed_loses_and_duplicates_nothing(
        local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = deploy(local_hosts, {"server": 1, "client": 1}, "resume")
    path = experiment(tmp_path, "name: resume\nduration: 1s\nrepetitions: 3\nseed: 5\nparameters: {cc: [cubic, reno]}"
                                "\niperf3: {congestion: '{cc}'}\n")
    db = deployment.env.db_file
    command = [str(Path(sys.executable).parent / "enosnet"), "bench", str(path), "--env", str(deployment.env.root),
               "--no-report"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists() and rows(db, "SELECT count(*) FROM sqlite_master WHERE name = 'runs'")[0][0] \
                    and rows(db, "SELECT count(*) FROM runs")[0][0] >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.5)  # into the middle of the next run
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
    before = rows(db, "SELECT id, key, committed FROM runs ORDER BY id")
    assert 2 <= len(before) < 6
    with pytest.raises(subprocess.CalledProcessError):  # without --resume: refused, pointing at --resume
        subprocess.run(command, check=True, capture_output=True)
    dry = subprocess.run([*command, "--dry-run", "--resume"], capture_output=True, text=True)
    assert f"resume: {6 - len(before)} runs left to run" in dry.stdout, dry.stdout + dry.stderr
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(before)} skipped" in done.stdout
    after = rows(db, "SELECT id, key, committed FROM runs ORDER BY id")
    assert after[:len(before)] == before  # committed runs untouched
    assert len(after) == 6 and len({key for _, key, _ in after}) == 6
    assert rows(db, "SELECT count(*) FROM runs WHERE status = 'ok'")[0][0] == 6
    assert rows(db, "SELECT count(*) FROM experiments")[0][0] == 1
    per_run = rows(db, "SELECT run_id, count(*) FROM metrics WHERE name = 'throughput' GROUP BY run_id")
    assert [n for _, n in per_run] == [1] * 6


@pytest.fixture
def leftover_iperf3(local_hosts: Callable[..., Any]) -> Iterator[Any]:
    deployment = deploy(local_hosts, {"server": 1, "client": 1}, "checks")
    server = deployment.roles["server"][0]
    with Session() as session:
        started = session.run(server, "iperf3 -s -p 5201 -D -I /tmp/leftover.pid && sleep 0.3")
        assert started.ok, started.stderr
        try:
            yield deployment
        finally:
            session.run(server, "kill $(cat /tmp/leftover.pid)")


def test_checks_catch_a_leftover_iperf3_server_and_store_the_results(leftover_iperf3: Any, tmp_path: Path) -> None:
    spec = parse_experiment("name: chk\nduration: 1s\n")
    with pytest.raises(CheckFailed) as caught:
        run_experiment(leftover_iperf3.env, spec)
    message = str(caught.value)
    assert "leftovers on server-0" in message and "port(s) 5201 already listening" in message and "iperf3" in message
    with ResultsStore.open(leftover_iperf3.env.db_file, create=False) as store:
        [exp] = store.experiments()
        assert store.runs() == []
    assert [c["host"] for c in exp.checks if not c["ok"]] == ["server-0"]
    path = experiment(tmp_path, "name: chk\nduration: 1s\n")
    cli = subprocess.run([str(Path(sys.executable).parent / "enosnet"), "bench", str(path), "--env",
                          str(leftover_iperf3.env.root)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "200"})
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "failed environment checks" in cli.stdout and "port(s) 5201 already listening" in cli.stdout
    assert "error: 1 environment check(s) failed" in cli.stderr and "--force" in cli.stderr

    forced = run_experiment(leftover_iperf3.env, spec, options=BenchOptions(force=True))
    with ResultsStore.open(leftover_iperf3.env.db_file, create=False) as store:
        [exp] = store.experiments()
    assert exp.forced and any(c["forced"] for c in exp.checks)
    assert forced.done + forced.failed == 1


def test_the_netem_check_fails_when_the_delay_is_not_in_place(local_hosts: Callable[..., Any]) -> None:
    deployment = local_hosts({"server": 1, "client": 2}, name="netem")
    checks = chk.Checks()
    pairs = chk.pairs_between(deployment.roles, "client", "server")
    bounds = ChecksSection()
    with Session() as session:
        baseline = chk.check_base_rtt(session, pairs, bounds, checks)
        wanted = Conditions.from_section({"between": ["client", "server"], "delay": "20ms"})
        chk.check_netem(session, deployment.roles, [wanted], bounds, baseline, checks,
                        apply=lambda _c: None, clear=lambda _c: None)  # a netem that silently did nothing
    assert [c.ok for c in checks.results if c.name == "rtt"] == [True, True]
    netem = [c for c in checks.results if c.name == "netem"]
    assert [c.ok for c in netem] == [False, False]
    assert "delay 20ms: client-0 → server-0 RTT" in netem[0].detail and "expected 40." in netem[0].detail


def test_a_delay_is_in_place_during_its_run_and_gone_after(local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = deploy(local_hosts, {"server": 1, "client": 1}, "delay")
    text = ("name: delay\nduration: 1s\norder: as-written\nparameters: {delay: [20ms, 0ms]}\n"
            "netem: {between: [client, server], delay: '{delay}'}\n")
    result = run_experiment(deployment.env, load_experiment(experiment(tmp_path, text)))
    assert (result.done, result.failed) == (2, 0)
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        rtt = {m.params["delay"]: m.value for m in store.metrics(name="rtt_min")}
        [exp] = store.experiments()
        applied = {(m.run_id, m.host): m.value for m in store.host_metadata(per_run=True) if m.key == "emulation"}
        counters = [json.loads(m.value) for m in store.host_metadata(per_run=True) if m.key == "emulation.stats"]
    assert 38 <= rtt["20ms"] <= 60 and rtt["0ms"] < 5  # ms: 20 ms each way, then nothing left behind
    if any(v.endswith("(nfqueue)") for v in applied.values()):  # the counters the fidelity check reads
        assert len(counters) == 2 and all(c["stats"]["release_late_us"]["count"] > 0 for c in counters), counters
    assert [c["ok"] for c in exp.checks if c["name"] == "netem"] == [True]
    assert sorted(h for _, h in applied) == ["client-0", "server-0"]
    assert all(v.startswith("delay 20ms (") for v in applied.values())

    with Session() as session:  # as if a bench were killed during a 20 ms run
        Emulation(session, deployment.roles).apply(Conditions.from_section({"between": ["client", "server"],
                                                                          "delay": "20ms"}))
    again = run_experiment(deployment.env, load_experiment(experiment(tmp_path, text.replace("delay\n", "again\n"),
                                                                      "again.yaml")))
    assert (again.done, again.failed) == (2, 0)  # the leftover delay was cleared before the baseline RTT check


FIDELITY = """
name: fidelity
duration: 2s
repetitions: 1
order: as-written
parameters: {rate: ["10M", "0"]}
iperf3: {bitrate: "{rate}", parallel: 4}
"""


def _flags(db: Path) -> dict[str, tuple[str, ...]]:
    with ResultsStore.open(db, create=False) as store:
        return {str(r.params["rate"]): r.fidelity for r in store.runs()}


def test_a_run_that_saturates_the_machine_or_a_quota_is_flagged_and_a_light_one_is_not(
        local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    # 2 clients × 4 unlimited flows and their receivers on a 2-core machine: the CPUs are the bottleneck
    flooded = deploy(local_hosts, {"server": 1, "client": 2}, "flood")
    assert run_experiment(flooded.env, parse_experiment(FIDELITY)).done == 2
    flags = _flags(flooded.env.db_file)
    assert flags["10M"] == (), flags
    assert any(f.startswith("the machine's CPUs were saturated") for f in flags["0"]), flags
    with ResultsStore.open(flooded.env.db_file, create=False) as store:
        own = store.metrics(name="cpu_cgroup")  # each host's CPU from its own group, in CPUs
    assert {m.host for m in own} == {"client-0", "client-1", "server-0"} and all(m.unit == "CPUs" for m in own)
    assert all(0 <= m.value <= 2.05 for m in own)
    flooded.provider.destroy()

    # one client held to a fifth of a CPU: its quota is the bottleneck; --strict-fidelity fails that run
    held = deploy(local_hosts, {"server": 1, "client": {"count": 1, "cpus": 0.2}}, "held")
    strict = BenchOptions(strict_fidelity=True)
    result = run_experiment(held.env, parse_experiment(FIDELITY.replace("parallel: 4", "parallel: 1")),
                            options=strict)
    assert (result.done, result.failed) == (1, 1)
    flags = _flags(held.env.db_file)
    assert flags["10M"] == () and any(f.startswith("client-0 used its CPU quota") for f in flags["0"]), flags
    reasons = rows(held.env.db_file, "SELECT json_extract(params, '$.rate'), status, reason FROM runs")
    assert [(rate, status) for rate, status, _ in sorted(reasons)] == [("0", "failed"), ("10M", "ok")]
    assert "did not keep up (--strict-fidelity)" in str(sorted(reasons)[0][2])


def test_compare_names_the_drop_an_emulated_delay_causes_and_passes_a_repeat(local_hosts: Callable[..., Any],
                                                                              tmp_path: Path) -> None:
    deployment = deploy(local_hosts, {"server": 1, "client": 1}, "compare")
    plain = "duration: 1s\nrepetitions: 3\n"
    for name, extra in (("plain", ""), ("delayed", "netem: {between: [client, server], delay: 20ms}\n"),
                        ("again", "")):
        result = run_experiment(deployment.env, parse_experiment(f"name: {name}\n{plain}{extra}"))
        assert result.done == 3, name
    db = deployment.env.db_file
    enosnet = [sys.executable, "-c", "from enosnet.cli import main; main()", "compare", "--threshold", "20%"]
    # the machine drifts between experiments run one after the other, so the bar is 20 %, not 5 %
    dropped = subprocess.run([*enosnet, f"{db}:plain", f"{db}:delayed"], capture_output=True, text=True, timeout=120)
    assert dropped.returncode == 1 and "regression: throughput at all runs: worse by" in dropped.stderr, dropped
    repeat = subprocess.run([*enosnet, f"{db}:plain", f"{db}:again"], capture_output=True, text=True, timeout=120)
    assert repeat.returncode == 0, repeat

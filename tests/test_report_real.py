"""The report of a small real sweep: local namespace hosts, real agents, real iperf3, then build_report."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench.drivers import default_actions
from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import parse_experiment
from enosnet.results.report import build_report
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

SWEEP = """
name: tiny
driver: iperf3
duration: 1s
repetitions: 2
order: shuffled
seed: 3
parameters:
  cc: [cubic, reno]
iperf3: {server_role: server, client_role: client, congestion: "{cc}", parallel: 1}
"""


@pytest.mark.hosts
def test_report_from_a_small_real_sweep(local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1, "client": 2}, name="rpt")
    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, actions=default_actions(),
                          port=access.port)
    result = run_experiment(deployment.env, parse_experiment(SWEEP), roles=deployment.roles)
    assert (result.done, result.failed) == (4, 0)

    report = build_report(deployment.env, tmp_path / "report")
    analysis = report.analysis
    assert analysis.parameters == ("cc",)
    throughput = [s for s in analysis.summaries if s.metric == "throughput"]
    assert [(dict(s.combo)["cc"], s.n, s.unit) for s in throughput] == [("cubic", 2, "bit/s"), ("reno", 2, "bit/s")]
    assert all(s.mean > 1e8 for s in throughput)  # two clients on loopback-speed veths: well above 100 Mbit/s
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        per_host = store.metrics(name="throughput")
    assert {m.host for m in per_host} == {h.name for h in deployment.roles["client"]}
    [cc] = [c for c in analysis.comparisons if c.metric == "throughput"]
    assert cc.sentence.startswith("throughput: ")
    assert {p.name for p in report.plots} >= {"metric-throughput", "throughput-time", "throughput-cdf", "start-skew"}
    html = report.html.read_text()
    assert html.count('src="data:image/png;base64,') == len(report.plots)
    assert "few repetitions" in html and "kernel" in html
    assert re.search(r"<td>ok</td><td>[^<]+</td>", html)  # the environment checks, as recorded by the bench

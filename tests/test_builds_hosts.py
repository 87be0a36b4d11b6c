"""Two real builds side by side on local hosts, interleaved, each run recording exactly what it ran.

netbench: s2n-netbench-driver-tcp 0.1.0 from crates.io (cached per machine),
and its source in a git checkout with a one-line change not yet committed,
built on the controller. iperf3: the stock binary and a wrapper that pins it
to one core.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench.builds import git_state, install_build
from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import LabelledBuild, load_experiment
from enosnet.coordinator import iperf3_actions, netbench_actions
from enosnet.errors import ConfigError
from enosnet.remote.session import Session
from enosnet.results.compare import compare
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

SCENARIOS = "/var/lib/enosnet/scenarios"

EXPERIMENT = """name: builds
driver: netbench
duration: 1s
repetitions: 2
seed: 5
netbench:
  generate: {{program: {generator}, options: {{response_size: 2MB}}}}
  drivers: [tcp]
builds:
  base: {{crates: {{s2n-netbench-driver-tcp: 0.1.0}}}}
  mine: {{path: {checkout}}}
"""


def test_a_build_missing_a_binary_or_its_folder_is_refused_before_any_host_is_touched(tmp_path: Path) -> None:
    prebuilt = tmp_path / "bin"
    prebuilt.mkdir()
    (prebuilt / "s2n-netbench-driver-server-tcp").write_bytes(b"\x7fELF")
    session = Session()
    binaries = ["s2n-netbench-driver-server-tcp", "s2n-netbench-driver-client-tcp"]
    with pytest.raises(ConfigError, match=r"builds.old: .*/bin has no s2n-netbench-driver-client-tcp"):
        install_build(session, [], LabelledBuild(label="old", dir="bin"), binaries=binaries, bin_dir="/x",
                      base=tmp_path)
    with pytest.raises(ConfigError, match=r"builds.mine.path: .*/nowhere is no folder"):
        install_build(session, [], LabelledBuild(label="mine", path="nowhere"), binaries=binaries, bin_dir="/x",
                      base=tmp_path)
    assert git_state(tmp_path) == "not a git checkout"


def git(checkout: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "-c", "user.name=dev", "-c", "user.email=dev@example.org",
                           *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


@pytest.mark.hosts
@pytest.mark.timeout(900)
def test_two_builds_run_interleaved_and_each_run_records_what_it_ran(
        local_hosts: Callable[..., Any], netbench_bin: Path, driver_checkout: Path,
        patch_client: Callable[[Path], None], tmp_path: Path) -> None:
    git(driver_checkout, "init", "-q")
    git(driver_checkout, "add", "-A")
    git(driver_checkout, "commit", "-qm", "the crate as published")
    commit = git(driver_checkout, "rev-parse", "HEAD")
    patch_client(driver_checkout)  # not committed: the build is of a dirty tree, and says so

    deployment = local_hosts({"server": 1, "client": 1}, name="nbbuilds", share=[netbench_bin])
    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, port=access.port,
                          actions=netbench_actions(bin_dir="/usr/local/bin", scenario_dir=SCENARIOS))
    path = tmp_path / "builds.yaml"
    path.write_text(EXPERIMENT.format(generator=netbench_bin / "s2n-netbench-scenarios", checkout=driver_checkout))
    result = run_experiment(deployment.env, load_experiment(path))
    assert (result.done, result.failed) == (4, 0)

    def on_host(host: str, command: str) -> str:
        found = deployment.roles.find(host)
        argv = [*deployment.provider.enter(found), "sh", "-c", command]
        return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout

    installed = {label: {side: on_host(f"{side}-0", f"sha256sum /usr/local/bin/s2n-netbench-driver-{side}-tcp+{label}")
                         .split()[0] for side in ("server", "client")} for label in ("base", "mine")}
    assert installed["base"]["client"] != installed["mine"]["client"]  # side by side, neither overwrote the other

    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        runs = store.runs()
        meta = [m for m in store.host_metadata(per_run=True) if m.key.startswith("build")]
    # each repetition holds both builds, back to back
    by_rep = {rep: [r.params["build"] for r in runs if r.repetition == rep] for rep in (0, 1)}
    assert all(sorted(builds) == ["base", "mine"] for builds in by_rep.values()), by_rep
    assert all(abs(a.position - b.position) == 1 for a in runs for b in runs
               if a.repetition == b.repetition and a.id < b.id)
    build_of = {r.id: str(r.params["build"]) for r in runs}
    for run in runs:
        label = build_of[run.id]
        for host in ("server-0", "client-0"):
            mine = {m.key: m.value for m in meta if m.run_id == run.id and m.host == host}
            side = host.split("-")[0]
            assert mine["build"] == label and mine["build.binary"] == f"s2n-netbench-driver-{side}-tcp+{label}"
            assert mine["build.sha256"] == installed[label][side]  # the binary the host holds, byte for byte
            if label == "base":
                assert (mine["build.source"], mine["build.version"]) == ("crates s2n-netbench-driver-tcp 0.1.0",
                                                                         "0.1.0")
            else:
                assert mine["build.source"] == f"path {driver_checkout} (git {commit}, dirty)"
                assert mine["build.version"] == "0.1.0"
    # the changed client ran in exactly the runs of build mine
    said = {p.parent.parent.parent.name: "patched" in p.read_text() for p in result.runs_dir.rglob("client-0/*/stderr")}
    assert len(said) == 4 and sum(said.values()) == 2

    paired = compare(deployment.env.db_file, builds="base,mine")
    assert [(dict(r.combo), r.comparison.n_baseline, r.comparison.n_other) for r in paired.rows] == [
        ({"driver": "tcp"}, 2, 2)]


IPERF3 = """name: iperf3-builds
driver: iperf3
duration: 1s
repetitions: 2
seed: 2
iperf3: {{server_role: server, client_role: client}}
builds:
  stock: {{binary: /usr/bin/iperf3}}
  pinned: {{binary: {wrapper}}}
"""


@pytest.mark.hosts
@pytest.mark.timeout(600)
def test_two_iperf3_binaries_run_side_by_side(local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    wrapper = tmp_path / "iperf3-pinned"  # the stock iperf3 held to one core: another program, another sha256
    wrapper.write_text('#!/bin/sh\nexec taskset -c 0 /usr/bin/iperf3 "$@"\n')
    wrapper.chmod(0o755)
    deployment = local_hosts({"server": 1, "client": 1}, name="ipbuilds")
    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, port=access.port,
                          actions=iperf3_actions())
    path = tmp_path / "x.yaml"
    path.write_text(IPERF3.format(wrapper=wrapper))
    result = run_experiment(deployment.env, load_experiment(path))
    assert (result.done, result.failed) == (4, 0)
    digests = {"stock": sha256(Path("/usr/bin/iperf3")), "pinned": sha256(wrapper)}
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        runs = store.runs()
        meta = [m for m in store.host_metadata(per_run=True) if m.key.startswith("build")]
        throughput = {m.run_id: m.value for m in store.metrics(name="throughput")}
    for run in runs:
        label = str(run.params["build"])
        for host in ("server-0", "client-0"):
            mine = {m.key: m.value for m in meta if m.run_id == run.id and m.host == host}
            assert (mine["build"], mine["build.binary"], mine["build.sha256"]) == (label, f"iperf3+{label}",
                                                                                  digests[label])
            assert mine["build.source"] == f"binary {Path('/usr/bin/iperf3') if label == 'stock' else wrapper}"
            assert mine["build.version"].startswith("iperf 3.")
        assert throughput[run.id] > 1e8
    assert all(sorted(str(r.params["build"]) for r in runs if r.repetition == rep) == ["pinned", "stock"]
               for rep in (0, 1))
    paired = compare(deployment.env.db_file, builds="stock,pinned")
    assert [(r.comparison.n_baseline, r.comparison.n_other) for r in paired.rows] == [(2, 2)]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

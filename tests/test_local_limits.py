"""Local hosts under control groups: their own CPU accounting, CPU and memory limits, cores of their own."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from enosnet.bench.metadata import collect
from enosnet.providers import cgroups
from enosnet.providers.local import Names
from enosnet.remote.session import Session
from tests.conftest import PREFIX, LocalDeployment
from tests.test_local_provider import ssh

pytestmark = pytest.mark.hosts

# CPU-seconds per wall-clock second of a 2 s busy loop, measured inside the host
BUSY_LOOP = shlex.quote(
    "import time\n"
    "t, c = time.monotonic(), time.process_time()\n"
    "while time.monotonic() - t < 2: pass\n"
    "print((time.process_time() - c) / (time.monotonic() - t))")


def test_a_host_limited_to_half_a_cpu_gets_half_a_cpu_and_an_unlimited_one_more(
        local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"slow": {"count": 1, "cpus": 0.5}, "free": 1}, name="cpu")
    slow, free = dep.roles["slow"][0], dep.roles["free"][0]
    loops = {h: subprocess.Popen(["ssh", "-i", str(h.keyfile), *shlex.split(h.extra["ansible_ssh_common_args"]),
                                  "-o", "BatchMode=yes", f"root@{h.address}", f"python3 -c {BUSY_LOOP}"],
                                 stdout=subprocess.PIPE, text=True) for h in (slow, free)}
    rates = {h.name: float(p.communicate(timeout=30)[0]) for h, p in loops.items()}  # both at once, a core each
    assert rates["slow-0"] <= 0.55, rates
    assert rates["free-0"] > 0.7, rates
    # the host reads its own group's counters and limits where tools look, and cannot change them
    usage = ssh(slow, "cat /sys/fs/cgroup/cpuacct/cpuacct.usage /sys/fs/cgroup/cpu/cpu.cfs_quota_us").stdout.split()
    # about 1 CPU-second (the loop at half a CPU for 2 s): its own time, not the machine's
    assert 0.8e9 < int(usage[0]) < 1.6e9 and usage[1] == "50000", usage
    assert ssh(slow, "echo -1 > /sys/fs/cgroup/cpu/cpu.cfs_quota_us", check=False).returncode != 0


def test_a_host_may_take_a_real_time_priority_for_the_agents_start_gate(
        local_hosts: Callable[..., LocalDeployment]) -> None:
    """The agent holds SCHED_FIFO from ARM to its start; refused, co-located starts spread 40 times wider."""
    dep = local_hosts({"node": 2}, name="rt")
    for host in dep.roles["node"]:
        out = ssh(host, "chrt -f 10 sh -c 'chrt -p $$' 2>&1; echo rc=$?", check=False).stdout
        assert "rc=0" in out and "SCHED_FIFO" in out, out


def test_beyond_its_memory_limit_an_allocation_fails_and_the_host_survives(
        local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"small": {"count": 1, "memory": "128M"}}, name="mem")
    host = dep.roles["small"][0]
    out = ssh(host, "python3 -c 'b = bytearray(300 * 2**20); print(len(b))'; echo rc=$?", check=False)
    assert "rc=137" in out.stdout, out  # killed by the OOM killer inside the host's group
    assert ssh(host, "python3 -c 'b = bytearray(32 * 2**20); print(len(b))'").stdout.strip() == str(32 * 2**20)


def test_limits_are_host_metadata_and_cpuset_auto_gives_each_host_a_core(
        local_hosts: Callable[..., LocalDeployment]) -> None:
    cores = sorted(os.sched_getaffinity(0))
    dep = local_hosts({"pinned": {"count": 2, "cpuset": "auto", "cpus": 0.5, "memory": "256M"}}, name="pin")
    assert len(cores) >= 2, "this test needs two cores"
    seen = {h.name: ssh(h, "nproc; cat /sys/fs/cgroup/cpuset/cpuset.cpus").stdout.split()
            for h in dep.roles["pinned"]}
    assert seen == {"pinned-0": ["1", str(cores[0])], "pinned-1": ["1", str(cores[1])]}, seen
    items, errors = collect(Session(), dep.roles.all(), "experiment")
    assert not errors
    meta = {(m.host, m.key): m.value for m in items}
    assert meta[("pinned-0", "limits.cpus")] == "0.5" and meta[("pinned-0", "limits.memory_mib")] == "256"
    assert meta[("pinned-1", "limits.cpuset")] == str(cores[1]) and meta[("pinned-1", "cpu.allowed")] == "1"


def test_cgroups_are_gone_after_destroy(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"node": {"count": 2, "cpus": 1, "memory": "256M", "cpuset": "auto"}}, name="gone")
    groups = [Path(g) for g in (dep.env.load_state() or {})["provider"]["cgroups"]]
    assert groups and all(g.is_dir() for g in groups)
    ssh(dep.roles["node"][0], "nohup sleep 600 </dev/null >/dev/null 2>&1 &")
    dep.provider.destroy()
    assert [g for g in groups if g.exists()] == []
    assert cgroups.leftovers(cgroups.detect(), re.compile(re.escape(Names(PREFIX, dep.env.tag).bridge))) == []


def test_a_cpuset_naming_cores_the_machine_lacks_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    cores = cgroups.format_cpu_list(sorted(os.sched_getaffinity(0)))
    (tmp_path / "c.yaml").write_text("name: far\nprovider: {kind: local}\nroles: {c: {count: 1, cpuset: 0-511}}\n")
    out = subprocess.run([sys.executable, "-c", "from enosnet.cli import main; main()", "deploy", "-c", "c.yaml"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert f"roles.c.cpuset: 0-511 names cores this machine does not have (it has {cores})" in out.stderr
    assert not (tmp_path / ".enosnet").exists()

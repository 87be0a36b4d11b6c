"""Which cgroup layout a machine has and what each writes, checked against the kernel's own file formats.

The v1 layout runs for real in tests/test_local_limits.py (this machine mounts v1); here the v2 writer
is pointed at a folder laid out as cgroup2 lays out its files, so its values and order are checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enosnet.errors import ProviderError
from enosnet.providers import cgroups

V1_MOUNTINFO = """\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset
34 30 0:30 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
"""
V1_OWN = "4:memory:/job/7\n3:cpuset:/\n2:cpu,cpuacct:/\n0::/\n"


def test_v1_groups_nest_in_this_process_s_group_of_each_hierarchy_even_when_co_mounted() -> None:
    layout = cgroups.detect(V1_MOUNTINFO, V1_OWN)
    assert isinstance(layout, cgroups.V1)
    dirs = layout.env_dirs("enos-abc123")
    assert dirs == {"cpu": Path("/sys/fs/cgroup/cpu,cpuacct/enos-abc123"),
                    "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct/enos-abc123"),
                    "memory": Path("/sys/fs/cgroup/memory/job/7/enos-abc123"),
                    "cpuset": Path("/sys/fs/cgroup/cpuset/enos-abc123")}


def test_a_machine_without_the_cpu_controller_is_told_what_is_missing() -> None:
    only_memory = "\n".join(line for line in V1_MOUNTINFO.splitlines() if "cpu" not in line)
    with pytest.raises(ProviderError, match="lack the cpu, cpuacct controller"):
        cgroups.detect(only_memory, V1_OWN)


def test_v2_enables_the_controllers_and_writes_its_own_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    layout = cgroups.V2(tmp_path)
    limits = cgroups.Limits(cpus=0.5, memory=512 * 2**20, cpuset="1")
    made = cgroups.create(layout, "enos-abc123", [("client-0", limits), ("server-0", cgroups.Limits())])
    host = tmp_path / "enos-abc123" / "client-0"
    assert made["client-0"].dirs == {"unified": str(host)}
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory"
    assert (tmp_path / "enos-abc123" / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory"
    assert (host / "cpu.max").read_text() == "50000 100000"
    assert (host / "memory.max").read_text() == str(512 * 2**20)
    assert (host / "cpuset.cpus").read_text() == "1"
    assert not (tmp_path / "enos-abc123" / "server-0" / "cpu.max").exists()  # no limit: nothing written


def test_groups_are_removed_children_first(tmp_path: Path) -> None:
    env = tmp_path / "enos-abc123"
    (env / "a").mkdir(parents=True)
    (env / "b").mkdir()
    assert cgroups.remove([env, env / "a", env / "b"]) == []
    assert not env.exists()


def test_v1_hosts_share_the_real_time_cpu_time_their_parent_group_has_left(tmp_path: Path) -> None:
    """Under real-time group scheduling a new group gets none, and nobody in it may take a real-time priority."""
    cpu = tmp_path / "cpu"
    (cpu / "other-env").mkdir(parents=True)
    (cpu / "cpu.rt_runtime_us").write_text("950000\n")
    (cpu / "cpu.rt_period_us").write_text("1000000\n")
    (cpu / "other-env" / "cpu.rt_runtime_us").write_text("900000\n")
    (cpu / "enos-abc123").mkdir()
    (cpu / "enos-abc123" / "cpu.rt_runtime_us").write_text("0\n")  # as the kernel makes a group
    layout = cgroups.V1({"cpu": cpu}, {"cpu": "/"})
    cgroups.create(layout, "enos-abc123", [(f"h{i}", cgroups.Limits()) for i in range(10)])
    assert (cpu / "enos-abc123" / "cpu.rt_runtime_us").read_text() == "50000"  # all that is left, not 10 x 10 ms
    assert {(cpu / "enos-abc123" / f"h{i}" / "cpu.rt_runtime_us").read_text() for i in range(10)} == {"5000"}

    (cpu / "other-env" / "cpu.rt_runtime_us").write_text("0\n")  # plenty left: 10 ms per host
    assert cgroups.realtime_share(cpu / "enos-abc123", 3) == cgroups.RT_PER_HOST_US
    (cpu / "other-env" / "cpu.rt_runtime_us").write_text("950000\n")  # nothing left: none, nothing written
    assert cgroups.realtime_share(cpu / "enos-abc123", 3) == 0


def test_a_kernel_without_real_time_groups_gets_no_such_file_written(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    layout = cgroups.V1({"cpu": cpu}, {"cpu": "/"})
    cgroups.create(layout, "enos-abc123", [("h0", cgroups.Limits())])
    assert not (cpu / "enos-abc123" / "h0" / "cpu.rt_runtime_us").exists()

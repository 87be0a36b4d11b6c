"""``enosnet deploy`` installs tools and agents; a second deploy changes nothing; a failed host is named."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from enosnet.environment import Environment
from enosnet.errors import ConfigError, HostsFailed
from enosnet.installer import InstallOptions, input_digests, install, install_vars
from enosnet.model import Host, Roles
from enosnet.remote import Status, run_command
from enosnet.results.backup import agent_keys

ENOSNET = str(Path(sys.executable).with_name("enosnet"))
RECAP_ROW = re.compile(r"│ (\S+)\s*│ ok\s*│\s*(\d+)\s*│\s*(\d+)\s*│")


def enosnet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([ENOSNET, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=500)


def test_install_vars_carry_the_agent_and_netbench_settings(tmp_path: Path) -> None:
    env = Environment(tmp_path / "e")
    (tmp_path / "bin").mkdir()
    extra = install_vars(env, InstallOptions(agent_port=7800, netbench_dir=tmp_path / "bin"))
    assert extra["enosnet_agent_port"] == 7800 and extra["enosnet_agent_secret"] == env.secret()
    assert Path(extra["enosnet_agent_pyz"]).is_file() and extra["enosnet_agent_env_id"] == "e"
    assert {"iperf3-server", "netbench-client"} <= set(extra["enosnet_agent_actions"])
    assert extra["deploy_netbench"] and extra["netbench_local_dir"] == str(tmp_path / "bin")
    with pytest.raises(ConfigError, match="not a folder"):
        install_vars(env, InstallOptions(netbench_dir=tmp_path / "missing"))


def test_input_digests_change_with_what_an_install_depends_on(tmp_path: Path) -> None:
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(b"one")
    roles = Roles({"server": [Host("198.18.0.2", alias="s")], "client": [Host("198.18.0.3", alias="c")]})
    extra = {"deploy_agent": True, "enosnet_agent_pyz": str(pyz)}
    first = input_digests(roles, extra)
    assert first == input_digests(roles, dict(extra)) and first["s"] != first["c"]
    pyz.write_bytes(b"two")  # same path, other program
    changed = input_digests(roles, extra)
    assert changed["s"] != first["s"] and changed["c"] != first["c"]
    moved = Roles({"server": [Host("198.18.0.2", alias="s", port=2222)], "client": roles["client"]})
    assert input_digests(moved, extra)["s"] != changed["s"] and input_digests(moved, extra)["c"] == changed["c"]
    regrouped = Roles({"client": [*roles["client"], *roles["server"]]})
    assert input_digests(regrouped, extra)["s"] != changed["s"]  # the agent's role comes from the group
    assert input_digests(roles, {**extra, "enosnet_agent_port": 7800})["c"] != changed["c"]


class CommandLines:
    """Every process command line seen on this machine while it runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> CommandLines:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for entry in os.scandir("/proc"):
                if entry.name.isdigit():
                    with contextlib.suppress(OSError):
                        self.seen.add(Path(entry.path, "cmdline").read_bytes())


@pytest.mark.hosts
@pytest.mark.timeout(900)
def test_second_deploy_changes_nothing_and_the_secret_stays_in_its_file(tmp_path: Path, aws: object) -> None:
    (tmp_path / "c.yaml").write_text("name: inst\nprovider: {kind: local}\nroles: {server: 1, client: 2}\n"
                                     "install: {netbench: {drivers: [tcp]}}\n")
    (tmp_path / "x.yaml").write_text("name: x\ndriver: iperf3\nduration: 1s\nrepetitions: 1\n"
                                     "iperf3: {server_role: server, client_role: client}\n")
    try:
        with CommandLines() as commands:
            first = enosnet("deploy", "-c", "c.yaml", cwd=tmp_path)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
        assert "install recap" in first.stdout and "3 succeeded, 0 failed, 3 total" in first.stdout
        assert "s2n-netbench: reused this machine's build of" in first.stdout  # built once per machine
        second = enosnet("deploy", "-c", "c.yaml", cwd=tmp_path)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-2000:]
        rows = {host: int(changed) for host, _ok, changed in RECAP_ROW.findall(second.stdout)}
        assert rows == {"server-0": 0, "client-0": 0, "client-1": 0}, second.stdout[-3000:]
        assert "3 succeeded, 0 failed, 3 total; 0 changes" in second.stdout
        environment = Environment(tmp_path / ".enosnet" / "inst")
        state = environment.load_state() or {}
        assert state["agent"] == {"env_id": "inst", "port": 7700}
        skipped = enosnet("deploy", "-c", "c.yaml", "--no-install", cwd=tmp_path)
        assert skipped.returncode == 0 and "install recap" not in skipped.stdout

        # the agents' secret (and each agent's key) reached Ansible through a private file, and after a
        # bench run, its report and a backup to S3 it is in no file but `secret`, no object, no command line
        boto3.client("s3").create_bucket(Bucket="lab")
        for args in (("bench", "x.yaml"), ("backup", "--s3", "s3://lab/enosnet")):
            done = enosnet(*args, cwd=tmp_path)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        keys = agent_keys(environment)
        assert len(keys) == 4  # the secret, three agents' keys
        holding = [p.relative_to(environment.root).as_posix() for p in environment.root.rglob("*")
                   if p.is_file() and any(k in p.read_bytes() for k in keys)]
        assert holding == ["secret"]
        assert (environment.root / "report" / "report.html").is_file()
        s3 = boto3.client("s3")
        objects = [o["Key"] for o in s3.list_objects_v2(Bucket="lab")["Contents"]]
        assert any(key.endswith("results.db") for key in objects) and any("/hosts/" in key for key in objects)
        for key in objects:
            body = s3.get_object(Bucket="lab", Key=key)["Body"].read()
            assert not any(k in body for k in keys), key
        assert commands.seen and not [c for c in commands.seen if any(k in c for k in keys)]
    finally:
        enosnet("destroy", cwd=tmp_path)


@pytest.mark.hosts
@pytest.mark.timeout(400)
def test_a_failed_host_is_named_with_its_task_and_message(local_hosts: Callable[..., Any]) -> None:
    deployment = local_hosts({"server": 1, "client": 1}, name="fail")
    roles = deployment.roles
    strict = roles.find("client-0").with_extra(enosnet_common_sysctl_unsettable="fail")
    broken = type(roles)({"server": roles["server"], "client": [strict]})
    events: list[Any] = []
    with pytest.raises(HostsFailed) as caught:
        install(deployment.env, broken, options=InstallOptions(agent=False), on_event=events.append)
    text = str(caught.value)
    assert "1 of 2 hosts failed" in text
    assert "client-0: task 'Tune kernel parameters for network benchmarks'" in text
    assert "sysctl keys not set: net.core" in text
    assert any(e.host is not None and e.host.name == "server-0" for e in events)
    report = install(deployment.env, broken, options=InstallOptions(agent=False), strict=False)
    rows = {r.host: r for r in report.recap()}
    assert rows["client-0"].failed == 1 and "Tune kernel parameters" in rows["client-0"].message
    assert rows["server-0"].failed == 0 and rows["server-0"].changed == 0


CHECK = "Check whether the host is as the last deploy left it"


@pytest.mark.hosts
@pytest.mark.timeout(600)
def test_an_unchanged_host_costs_one_check_and_a_drifted_one_is_installed_again(
        local_hosts: Callable[..., Any], netbench_bin: Path) -> None:
    deployment = local_hosts({"server": 1, "client": 1}, name="stamp")
    env, roles = deployment.env, deployment.roles
    netbench = {"netbench_drivers": ["tcp"], "netbench_tools": ["s2n-netbench-scenarios"]}
    options = InstallOptions(netbench_dir=netbench_bin, netbench_vars=netbench)
    first = install(env, roles, options=options)
    assert first.changed > 0 and all(r.task(CHECK).status is Status.SKIPPED for r in first.results.values())
    stamps = (env.load_state() or {})["install_stamps"]
    assert set(stamps) == {"server-0", "client-0"}

    second = install(env, roles, options=options)
    assert second.changed == 0
    for result in second.results.values():  # one command, then the host's play ends
        assert [t.task for t in result.tasks if t.status is not Status.SKIPPED] == [CHECK]
        assert result.task(CHECK).data["stdout"] == "current"

    # drift on the client: its agent stopped, a binary deleted; the server is untouched
    client, server = roles.find("client-0"), roles.find("server-0")
    drift = run_command("kill $(cat /run/enosnet-agent.pid) && rm /usr/local/bin/s2n-netbench-scenarios",
                        roles=[client])
    assert drift[client].ok, drift[client].stderr
    third = install(env, roles, options=options)
    assert third.results[server].changed == 0 and third.results[client].changed > 0
    assert third.results[client].task(CHECK).data["stdout"] == "host changed"
    back = run_command("test -x /usr/local/bin/s2n-netbench-scenarios && kill -0 $(cat /run/enosnet-agent.pid)",
                       roles=[client])
    assert back[client].ok, back[client].stderr
    assert install(env, roles, options=options).changed == 0  # recorded again after the repair

    # other inputs (a config value): no host is checked, every host is installed again
    options = InstallOptions(netbench_dir=netbench_bin, netbench_vars=netbench,
                             extra_vars={"enosnet_agent_sample_interval_s": 2.0})
    changed = install(env, roles, options=options)
    assert all(r.task(CHECK).status is Status.SKIPPED and r.changed > 0 for r in changed.results.values())
    assert (env.load_state() or {})["install_stamps"] != stamps

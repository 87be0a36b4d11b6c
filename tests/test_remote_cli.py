"""`enosnet run | push | pull | script | lrun` from a user's shell, against real local hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from enosnet.remote import close_connections
from tests.conftest import LocalDeployment

pytestmark = pytest.mark.hosts

ENOSNET = str(Path(sys.executable).with_name("enosnet"))


def enosnet(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([ENOSNET, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def summary(out: subprocess.CompletedProcess[str]) -> list[str]:
    """The summary line and the failed hosts after it."""
    lines = out.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line.endswith(" total"))
    return lines[start:]


@pytest.fixture
def deployed(local_hosts: Callable[..., LocalDeployment]) -> LocalDeployment:
    return local_hosts({"server": 1, "client": 2}, name="cli")


def test_run_groups_identical_output_and_ends_with_the_summary(deployed: LocalDeployment, tmp_path: Path) -> None:
    env = str(deployed.env.root)
    try:
        out = enosnet("run", "--env", env, "--", "echo same", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "server-0, client-[0-1] (3)" in out.stdout and out.stdout.count("same") == 1
        assert summary(out) == ["3 succeeded, 0 failed, 3 total"]

        out = enosnet("run", "--env", env, "--no-group", "--", "echo same", cwd=tmp_path)
        assert out.stdout.count("same") == 3 and "client-0 (1)" in out.stdout

        out = enosnet("run", "--env", env, "-r", "client", "--", "echo {host}; test {host} = client-0", cwd=tmp_path)
        assert out.returncode == 1
        assert "client-1 (1): failed, rc=1, attempts=1" in out.stdout
        assert summary(out) == ["1 succeeded, 1 failed, 2 total", "client-1"]

        out = enosnet("run", "--env", env, "--json", "-t", "30", "--", "echo {host} >&2", cwd=tmp_path)
        doc = json.loads(out.stdout)
        assert out.returncode == 0 and doc["summary"] == {"succeeded": 3, "failed": 0, "total": 3}
        assert [(h["host"], h["stderr"], h["status"]) for h in doc["hosts"]] == [
            ("server-0", "server-0\n", "ok"), ("client-0", "client-0\n", "ok"), ("client-1", "client-1\n", "ok")]

        recorded = sorted(deployed.env.runs_dir.glob("*-run/results.jsonl"))
        assert len(recorded) == 4  # every run leaves its results in the environment
        what, *hosts = [json.loads(line) for line in recorded[-1].read_text().splitlines()]
        assert what == {"run": "echo {host} >&2"} and [h["host"] for h in hosts] == ["server-0", "client-0", "client-1"]
    finally:
        close_connections(deployed.roles.all())


def test_transfers_scripts_and_local_commands(deployed: LocalDeployment, tmp_path: Path) -> None:
    env = str(deployed.env.root)
    (tmp_path / "conf.txt").write_text("setting=1\n")
    (tmp_path / "probe.sh").write_text("#!/bin/sh\ncat /tmp/cli-{host}/conf.txt\n")
    try:
        out = enosnet("push", "--env", env, "-d", "/tmp/cli-{host}", "--", "conf.txt", cwd=tmp_path)
        assert out.returncode == 0 and summary(out) == ["3 succeeded, 0 failed, 3 total"]
        out = enosnet("script", "--env", env, "--", "probe.sh", cwd=tmp_path)
        assert out.returncode == 0 and "setting=1" in out.stdout
        out = enosnet("pull", "--env", env, "-d", "back/{host}", "--", "/tmp/cli-{host}/conf.txt", cwd=tmp_path)
        assert out.returncode == 0
        for host in deployed.roles.all():
            assert (tmp_path / "back" / host.name / "conf.txt").read_text() == "setting=1\n"
        out = enosnet("lrun", "--env", env, "-r", "server", "--", "echo {host} {address}", cwd=tmp_path)
        address = deployed.roles["server"][0].address
        assert out.returncode == 0 and f"server-0 {address}" in out.stdout
    finally:
        close_connections(deployed.roles.all())


def test_hosts_file_without_an_environment(deployed: LocalDeployment, tmp_path: Path) -> None:
    """Hosts from -f need no environment; -o passes OpenSSH options (here: the environment's known hosts)."""
    server = deployed.roles["server"][0]
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"# the lab\n{server.address}  # server\n")
    try:
        out = enosnet("run", "-f", str(hosts), "-i", str(deployed.env.key_file), "-o", "StrictHostKeyChecking=yes",
                      "-o", f"UserKnownHostsFile={deployed.env.known_hosts}", "--", "hostname", cwd=tmp_path)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "server-0" in out.stdout and summary(out) == ["1 succeeded, 0 failed, 1 total"]
    finally:
        close_connections(deployed.roles.all())


def test_mistakes_exit_2_with_a_message_and_no_traceback(deployed: LocalDeployment, tmp_path: Path) -> None:
    env = str(deployed.env.root)
    cases = [
        (("run", "--env", env, "-r", "nosuch", "--", "true"), "no role named nosuch (roles: server, client)"),
        (("push", "--env", env, "-d", "/tmp", "--", "missing.txt"), "no such local file: missing.txt"),
        (("pull", "--env", env, "-d", "flat", "--", "/etc/hostname"), "put {host} in it"),
        (("run", "-f", "nofile.txt", "--", "true"), "nofile.txt: cannot read the hosts file"),
    ]
    for args, message in cases:
        out = enosnet(*args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr


def test_many_hosts_fold_into_one_group(local_hosts: Callable[..., LocalDeployment], tmp_path: Path) -> None:
    deployment = local_hosts({"node": 12}, name="many")
    try:
        out = enosnet("run", "--env", str(deployment.env.root), "--", "uname -s", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert "node-[0-11] (12)" in out.stdout and out.stdout.count("Linux") == 1
        assert summary(out) == ["12 succeeded, 0 failed, 12 total"]
    finally:
        close_connections(deployment.roles.all())

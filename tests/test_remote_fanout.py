"""The SSH fan-out against real local hosts: results, {host}, transfers, timeouts, retries, failures."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enosnet.config import parse_config
from enosnet.environment import Environment, make_keypair
from enosnet.errors import HostsFailed
from enosnet.model import Host
from enosnet.providers.local import LocalProvider
from enosnet.remote import Status, close_connections, lrun, pull, push, run_command, script
from tests.conftest import LocalDeployment

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    """One server and two clients shared by the tests of this module that leave the hosts as they were."""
    env = Environment(tmp_path_factory.mktemp("fanout") / "env")
    text = "name: fanout\nprovider: {kind: local}\nroles: {server: 1, client: 2}\n"
    provider = LocalProvider(parse_config(text), env)
    try:
        roles, networks = provider.init()
        yield LocalDeployment(env, provider, roles, networks, text)
    finally:
        close_connections(Host.from_dict(h) for hosts in (env.load_state() or {}).get("roles", {}).values()
                          for h in hosts)
        provider.destroy()


def test_run_command_gives_one_result_per_host(cluster: LocalDeployment) -> None:
    results = run_command("hostname; echo warn >&2", roles=cluster.roles)
    assert [h.name for h in results] == ["server-0", "client-0", "client-1"]
    for host, result in results.items():
        assert result.status is Status.OK and result.ok and result.rc == 0 and result.attempts == 1
        assert result.stdout == f"{host.name}\n" and result.stderr == "warn\n"
        assert 0 < result.duration < 60
    assert len(results.ok) == 3 and not results.failed


def test_role_selection_and_host_substitution(cluster: LocalDeployment) -> None:
    results = run_command("echo I am {host} at {address}", roles=cluster.roles, role="client")
    assert {h.name: r.stdout for h, r in results.items()} == {
        h.name: f"I am {h.name} at {h.address}\n" for h in cluster.roles["client"]}


def test_a_failing_command_is_reported_not_retried(cluster: LocalDeployment) -> None:
    results = run_command("test {host} = server-0 || exit 3", roles=cluster.roles, attempts=3)
    assert list(results.ok) == list(cluster.roles["server"])
    for result in results.failed.values():
        assert result.status is Status.FAILED and result.rc == 3 and result.attempts == 1
    with pytest.raises(HostsFailed) as failed:
        run_command("test {host} = server-0 || exit 3", roles=cluster.roles, strict=True)
    assert "2 of 3 hosts failed" in str(failed.value) and "client-0" in str(failed.value)
    assert failed.value.results["client-1"].rc == 3


def test_a_hanging_host_times_out_and_the_others_finish(cluster: LocalDeployment) -> None:
    started = time.monotonic()
    # generous for the others: each command starts a login shell, slow on a loaded 2-core machine
    results = run_command("if [ {host} = client-0 ]; then sleep 300; fi; echo done", roles=cluster.roles, timeout=10)
    assert time.monotonic() - started < 40
    hung = results["client-0"]
    assert hung.status is Status.TIMEOUT and hung.rc is None and hung.message == "timed out after 10 s"
    assert [r.stdout for r in results.ok.values()] == ["done\n", "done\n"]


def test_push_then_pull_round_trip_with_host_in_every_path(cluster: LocalDeployment, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for host in cluster.roles.all():
        (source / f"{host.name}.txt").write_text(f"payload for {host.name}\n")
    (source / "tree").mkdir()
    (source / "tree" / "leaf").write_text("leaf\n")
    pushed = push([source / "{host}.txt", source / "tree"], "/tmp/fanout-{host}/deep", roles=cluster.roles)
    assert not pushed.failed, pushed
    assert all(r.stdout == "" and r.stderr == "" for r in pushed.values()), list(pushed.values())
    pulled = pull(["/tmp/fanout-{host}/deep/{host}.txt", "/tmp/fanout-{host}/deep/tree"], tmp_path / "out" / "{host}",
                  roles=cluster.roles)
    assert not pulled.failed, pulled
    for host in cluster.roles.all():
        assert (tmp_path / "out" / host.name / f"{host.name}.txt").read_text() == f"payload for {host.name}\n"
        assert (tmp_path / "out" / host.name / "tree" / "leaf").read_text() == "leaf\n"


def test_pulling_a_missing_file_fails_that_host(cluster: LocalDeployment, tmp_path: Path) -> None:
    results = pull(["/nonexistent/file"], tmp_path / "{host}", roles=cluster.roles, role="server")
    failed = results["server-0"]
    assert failed.status is Status.FAILED and failed.attempts == 1 and "nonexistent" in failed.stderr


def test_script_runs_with_its_interpreter_and_leaves_nothing(cluster: LocalDeployment, tmp_path: Path) -> None:
    first = tmp_path / "first.py"
    first.write_text("#!/usr/bin/python3\nimport sys\nprint('python on {host}', sys.argv[0])\n")
    second = tmp_path / "second"
    second.write_text("echo shell on {host}\n")
    results = script([first, second], roles=cluster.roles, role="client")
    for host, result in results.items():
        assert result.ok, result
        python_line, shell_line = result.stdout.splitlines()
        assert python_line.startswith(f"python on {host.name} ") and shell_line == f"shell on {host.name}"
        left = run_command(f"test -e {python_line.split()[-1]}", roles=[host])
        assert left[host].rc == 1  # the temporary copy is gone
    stopped = script([tmp_path / "first.py"], roles=cluster.roles, role="server")
    assert stopped.ok


def test_lrun_runs_here_once_per_host(cluster: LocalDeployment) -> None:
    results = lrun("echo {host} $ENOSNET_ADDRESS; test {host} != client-1", roles=cluster.roles)
    assert {h.name: r.stdout for h, r in results.items()} == {h.name: f"{h.name} {h.address}\n"
                                                               for h in cluster.roles.all()}
    assert [h.name for h in results.failed] == ["client-1"]


def test_a_host_that_is_down_is_unreachable(cluster: LocalDeployment) -> None:
    network = cluster.networks["local"].network
    free = list(network.hosts())[-1]  # nothing answers there
    down = Host(str(free), alias="ghost", keyfile=cluster.roles.all()[0].keyfile)
    results = run_command("true", roles=[*cluster.roles["server"], down], attempts=1, timeout=20)
    assert results["server-0"].ok
    ghost = results["ghost"]
    assert ghost.status is Status.UNREACHABLE and ghost.attempts == 1
    assert str(free) in ghost.message and ("No route to host" in ghost.message or "timed out" in ghost.message)


def test_a_wrong_key_is_reported_at_once(cluster: LocalDeployment, tmp_path: Path) -> None:
    make_keypair(tmp_path / "other", comment="other")
    server = cluster.roles["server"][0]
    wrong = Host(server.address, alias="server-0", keyfile=str(tmp_path / "other"), extra=server.extra)
    result = run_command("true", roles=[wrong], attempts=3)["server-0"]
    assert result.status is Status.UNREACHABLE and result.attempts == 1
    assert "Permission denied" in result.message and "wrong key" in result.message


def test_connection_failures_are_retried_until_sshd_is_back(
        local_hosts: Callable[..., LocalDeployment]) -> None:
    deployment = local_hosts({"server": 1}, name="retry")
    host = deployment.roles["server"][0]
    enter = deployment.provider.enter(host)
    subprocess.run([*enter, "sh", "-c", "kill $(cat /run/sshd.pid)"], check=True, timeout=10)
    restart = threading.Timer(1.0, lambda: subprocess.run(
        [*enter, "/usr/sbin/sshd", "-f", "/etc/enosnet-sshd/sshd_config"], check=True, timeout=10))
    restart.start()
    try:
        result = run_command("echo back", roles=[host], attempts=6, timeout=30)[host]
    finally:
        restart.join()
        close_connections([host])
    assert result.ok and result.stdout == "back\n"
    assert result.attempts >= 2

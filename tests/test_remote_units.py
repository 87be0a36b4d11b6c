"""The pure parts of enosnet.remote: results views, substitution, SSH options, retry rules, task collection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from enosnet.cli.remote import fold_names
from enosnet.errors import ConfigError, HostsFailed, RemoteError, UsageError
from enosnet.model import Host, Roles
from enosnet.remote import HostResult, Results, SshOptions, Status, pull, push, run_command, substitute
from enosnet.remote.ansible import Actions
from enosnet.remote.fanout import Retry, _Outcome, _pull_batch, _push_batch, _result, _retryable
from enosnet.remote.ssh import control_path, private_dir, ssh_options

A = Host("198.18.0.2", alias="server-0", keyfile="/k/a")
B = Host("198.18.0.3", alias="client-0", keyfile="/k/a")
FAKE = Roles({"server": [A], "client": [B]})


def test_results_views_index_and_repr() -> None:
    results = Results({A: HostResult(A, Status.OK, rc=0, stdout="x"),
                       B: HostResult(B, Status.TIMEOUT, message="timed out after 1 s", attempts=1)})
    assert list(results.ok) == [A] and list(results.failed) == [B]
    assert results["client-0"] is results[B] is results["198.18.0.3"]
    assert repr(results) == "Results(1 ok, 1 failed)"
    assert repr(results[A]) == "HostResult(server-0, ok, rc=0, attempts=1, 0.00s)"
    with pytest.raises(HostsFailed) as failed:
        results.raise_for_failures()
    assert failed.value.results is results
    assert "1 of 2 hosts failed" in str(failed.value) and "client-0: timed out after 1 s" in str(failed.value)
    assert results.ok.raise_for_failures() is not None


def test_substitution_replaces_host_and_address_only() -> None:
    assert substitute("echo {host} {address} {other} '{print $1}'", A) == \
        "echo server-0 198.18.0.2 {other} '{print $1}'"


def test_fold_names_groups_numbered_hosts() -> None:
    assert fold_names(["client-0", "client-1", "client-2", "server-0"]) == "client-[0-2], server-0"
    assert fold_names(["n01", "n02", "n04", "10.0.0.1"]) == "n[01-02,04], 10.0.0.1"


def test_control_sockets_are_short_and_distinct_per_key() -> None:
    options = SshOptions(control_dir=Path("/run/enosnet-ssh"))
    other_key = Host(A.address, alias=A.alias, keyfile="/k/b")
    assert control_path(A, options) != control_path(other_key, options)
    assert len(str(control_path(A, options))) + 17 < 108
    with pytest.raises(ValueError, match="too long"):
        control_path(A, SshOptions(control_dir=Path("/x" * 50)))


def test_host_ssh_arguments_come_before_defaults() -> None:
    host = A.with_extra(ansible_ssh_common_args="-o StrictHostKeyChecking=yes -o UserKnownHostsFile=/kh")
    argv = ssh_options(host, SshOptions(control_dir=Path("/run/enosnet-ssh")))
    own = argv.index("StrictHostKeyChecking=yes")
    default = argv.index("StrictHostKeyChecking=accept-new")
    assert own < default  # OpenSSH keeps the first value of each option
    assert argv[argv.index("-i") + 1] == "/k/a"
    no_mux = ssh_options(A, SshOptions(control_persist=0))
    assert not any(a.startswith("Control") for a in no_mux)


@pytest.mark.parametrize(("rc", "stderr", "retry"), [
    (255, "ssh: connect to host 198.18.0.2 port 22: Connection refused\n", True),
    (255, "kex_exchange_identification: read: Connection reset by peer\n", True),
    (255, "Connection closed by 198.18.0.2 port 22\n", True),
    (255, "root@198.18.0.2: Permission denied (publickey).\n", False),
    (255, "my command said Connection refused but is not ssh\n", False),
    (1, "ssh: connect to host 198.18.0.2 port 22: Connection refused\n", False),
])
def test_only_connection_phase_failures_are_retried(rc: int, stderr: str, retry: bool) -> None:
    assert _retryable(_Outcome(rc, "", stderr)) is retry


def test_failure_classification() -> None:
    denied = _result(A, _Outcome(255, "", "root@x: Permission denied (publickey).\n"), 1, 0.0, 60, remote=True)
    assert denied.status is Status.UNREACHABLE and "wrong key" in denied.message
    ran = _result(A, _Outcome(255, "", "mine\n"), 1, 0.0, 60, remote=True)
    assert ran.status is Status.FAILED and ran.rc == 255
    slow = _result(A, _Outcome(None, "", "", timed_out=True), 1, 0.0, 2, remote=True)
    assert slow.status is Status.TIMEOUT and slow.message == "timed out after 2 s"


def test_backoff_grows_and_is_capped() -> None:
    retry = Retry(attempts=5, backoff=0.5, max_backoff=2.0)
    assert 0.4 <= retry.delay(1) <= 0.6 and 0.8 <= retry.delay(2) <= 1.2 and retry.delay(5) <= 2.4


def test_sftp_batches_create_every_level_and_quote() -> None:
    batch = _push_batch([Path("/d/a b.txt")], "/tmp/x/y")
    assert batch.splitlines() == ['-mkdir "/tmp"', '-mkdir "/tmp/x"', '-mkdir "/tmp/x/y"',
                                  'put -R -p "/d/a b.txt" "/tmp/x/y"/']
    assert _pull_batch(['/var/log/"q"'], Path("/o")) == 'get -R -p "/var/log/\\"q\\"" "/o"/\n'


def test_caller_mistakes_are_caught_before_any_host_is_contacted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no role named nosuch"):
        run_command("true", roles=FAKE, role="nosuch")
    with pytest.raises(ConfigError, match="no such local file"):
        push([tmp_path / "missing-{host}.txt"], "/tmp", roles=FAKE)
    with pytest.raises(UsageError, match=r"put \{host\} in it"):
        pull(["/etc/hostname"], tmp_path, roles=FAKE)
    with pytest.raises(UsageError, match="no command"):
        run_command("  ", roles=FAKE)
    with pytest.raises(UsageError, match="attempts"):
        run_command("true", roles=FAKE, attempts=0)


def test_actions_collect_any_module_as_tasks() -> None:
    a = Actions()
    a.apt(name="iperf3", state="present")
    a.community.general.modprobe(name="tcp_bbr", task_name="bbr")
    a.shell("uname -r", chdir="/tmp", task={"changed_when": False})
    a.call("ansible.posix.sysctl", {"name": "net.core.rmem_max", "value": "1"})
    assert a.tasks == [
        {"name": "apt #1", "apt": {"name": "iperf3", "state": "present"}},
        {"name": "bbr", "community.general.modprobe": {"name": "tcp_bbr"}},
        {"name": "shell #3", "changed_when": False, "args": {"chdir": "/tmp"}, "shell": "uname -r"},
        {"name": "ansible.posix.sysctl #4", "ansible.posix.sysctl": {"name": "net.core.rmem_max", "value": "1"}},
    ]
    with pytest.raises(AttributeError):
        a._private  # noqa: B018
    with pytest.raises(ConfigError, match="not an Ansible module name"):
        a.call("rm -rf /")


def test_control_folders_are_private_or_refused(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "mine")
    assert made.stat().st_mode & 0o777 == 0o700 and private_dir(made) == made  # made, then reused
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "planted").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "open").mkdir(mode=0o755)
    (tmp_path / "open").chmod(0o755)
    (tmp_path / "theirs").mkdir(mode=0o700)
    os.chown(tmp_path / "theirs", 65534, 65534)
    for name in ("planted", "open", "theirs"):
        with pytest.raises(RemoteError, match=f"{name}: not a private folder of this user"):
            private_dir(tmp_path / name)

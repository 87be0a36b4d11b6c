"""Ansible through ansible-runner against real local hosts: playbooks, actions blocks, events, failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.errors import ConfigError, HostsFailed
from enosnet.model import Host
from enosnet.providers.local import LocalProvider
from enosnet.remote import (
    EventKind,
    HostEvent,
    SshOptions,
    Status,
    actions,
    close_connections,
    run_command,
    run_playbook,
)
from enosnet.remote.ssh import control_path
from tests.conftest import LocalDeployment

pytestmark = pytest.mark.hosts

PLAYBOOK = """\
- hosts: server
  tasks:
    - name: write the marker
      ansible.builtin.copy:
        content: "{{ inventory_hostname }} {{ flavour }}\\n"
        dest: /tmp/enosnet-pb-marker
- hosts: all
  tasks:
    - name: read the kernel
      ansible.builtin.command: uname -r
      changed_when: false
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    env = Environment(tmp_path_factory.mktemp("ansible") / "env")
    text = "name: ansible\nprovider: {kind: local}\nroles: {server: 1, client: 1}\n"
    provider = LocalProvider(parse_config(text), env)
    try:
        roles, networks = provider.init()
        yield LocalDeployment(env, provider, roles, networks, text)
    finally:
        close_connections(Host.from_dict(h) for hosts in (env.load_state() or {}).get("roles", {}).values()
                          for h in hosts)
        provider.destroy()


def test_run_playbook_reports_hosts_tasks_and_events(cluster: LocalDeployment, tmp_path: Path) -> None:
    playbook = tmp_path / "site.yml"
    playbook.write_text(PLAYBOOK)
    events: list[HostEvent] = []
    results = run_playbook(playbook, roles=cluster.roles, env=cluster.env, extra_vars={"flavour": "vanilla"},
                           on_event=events.append)
    server, client = cluster.roles["server"][0], cluster.roles["client"][0]
    assert results.ok.keys() == {server, client}
    assert [t.task for t in results[server].tasks] == ["write the marker", "read the kernel"]
    assert results[server].task("write the marker").changed and results[server].changed == 1
    assert results[client].changed == 0 and results[client].task("read the kernel").data["rc"] == 0
    kinds = [(e.kind, e.host.name if e.host else None) for e in events]
    assert (EventKind.CHANGED, "server-0") in kinds and (EventKind.OK, "client-0") in kinds
    assert kinds[0] == (EventKind.PLAY, None)
    marker = run_command("cat /tmp/enosnet-pb-marker", roles=[server])[server]
    assert marker.stdout == "server-0 vanilla\n"
    assert results.artifacts is not None and results.artifacts.parent == cluster.env.runs_dir
    assert (results.artifacts / "events.jsonl").read_text().count('"kind"') == len(events)
    assert (results.artifacts / "artifacts" / "ansible" / "job_events").is_dir()
    again = run_playbook(playbook, roles=cluster.roles, env=cluster.env, extra_vars={"flavour": "vanilla"})
    assert sum(r.changed for r in again.values()) == 0  # idempotent: the second run changes nothing


def test_run_playbook_limited_to_a_role(cluster: LocalDeployment, tmp_path: Path) -> None:
    playbook = tmp_path / "site.yml"
    playbook.write_text(PLAYBOOK)
    results = run_playbook(playbook, roles=cluster.roles, role="client", extra_vars={"flavour": "x"})
    assert [h.name for h in results] == ["client-0"]
    assert [t.task for t in results["client-0"].tasks] == ["read the kernel"]
    assert results.artifacts is None  # no environment: artifacts went to a temporary folder, now removed


def test_actions_run_as_one_play_with_results_per_task(cluster: LocalDeployment) -> None:
    close_connections(cluster.roles.all())
    with actions(roles=cluster.roles, env=cluster.env) as a:
        a.copy(content="{{ inventory_hostname }}\n", dest="/tmp/enosnet-actions", task_name="write")
        a.ansible.builtin.command("cat /tmp/enosnet-actions", task_name="read", task={"changed_when": False})
    assert a.results is not None and len(a.results.ok) == 2
    for host, result in a.results.items():
        assert result.task("write").changed and result.task("write").action == "ansible.builtin.copy"
        assert result.task("read").data["stdout"] == host.name
        # Ansible went through the same master connection the fan-out uses
        assert control_path(host, SshOptions()).is_socket()


def test_an_actions_block_that_raised_runs_nothing(cluster: LocalDeployment) -> None:
    before = set(cluster.env.runs_dir.iterdir())
    with pytest.raises(RuntimeError, match="changed my mind"), actions(roles=cluster.roles, env=cluster.env) as a:
        a.file(path="/tmp/enosnet-never", state="touch")
        raise RuntimeError("changed my mind")
    assert a.results is None
    assert set(cluster.env.runs_dir.iterdir()) == before
    checks = run_command("test -e /tmp/enosnet-never", roles=cluster.roles)
    assert all(r.rc == 1 for r in checks.values())


def test_a_wrong_module_argument_names_the_host_and_the_message(cluster: LocalDeployment) -> None:
    with pytest.raises(HostsFailed) as failed, actions(roles=cluster.roles, role="server") as a:
        a.copy(content="x", dest="/tmp/enosnet-bad", no_such_option=True)
    text = str(failed.value)
    assert "server-0" in text and "Unsupported parameters" in text and "no_such_option" in text
    result = failed.value.results["server-0"]
    assert result.status is Status.FAILED and "no_such_option" in result.tasks[-1].message
    with actions(roles=cluster.roles, role="server", strict=False) as a:
        a.copy(content="x", dest="/tmp/enosnet-bad", no_such_option=True)
    assert a.results is not None and list(a.results.failed) == list(cluster.roles["server"])


def test_caller_mistakes_are_clear_errors(cluster: LocalDeployment, tmp_path: Path) -> None:
    (tmp_path / "x.yml").write_text("- hosts: all\n  tasks: []\n")
    with pytest.raises(ConfigError, match="no role named nosuch"):
        run_playbook(tmp_path / "x.yml", roles=cluster.roles, role="nosuch")
    with pytest.raises(ConfigError, match="no such playbook"):
        run_playbook(tmp_path / "missing.yml", roles=cluster.roles)
    with pytest.raises(ConfigError, match="couldn't resolve module/action 'no_such_module'"), \
            actions(roles=cluster.roles, role="server") as a:
        a.no_such_module(x=1)
    broken = tmp_path / "broken.yml"
    broken.write_text("- hosts: all\n  roles: [no_such_role_here]\n")
    with pytest.raises(ConfigError, match="no_such_role_here"):
        run_playbook(broken, roles=cluster.roles)

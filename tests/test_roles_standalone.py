"""The roles stand on their own: a user's Ansible project, a hand-written inventory, plain ansible-playbook.

Nothing of enosnet's Python runs the roles here: the test writes an INI
inventory and a site.yml of its own, points ``roles_path`` at ``roles/`` and
runs the ``ansible-playbook`` command. The local provider only supplies the
hosts, and ``provider.enter`` looks inside them without SSH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from enosnet.coordinator import build_agent_zipapp, iperf3_actions

ROOT = Path(__file__).resolve().parents[1]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
SECRET = "s3cr3t-" + "ab" * 16

SITE = """\
- name: My own benchmark hosts
  hosts: all
  gather_facts: false
  roles:
    - enosnet_common
    - iperf3
    - role: netbench
      vars:
        netbench_source: crates
        netbench_drivers: [tcp]
    - enosnet_agent
"""


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    keys = ("ok", "changed", "unreachable", "failed")
    return {m[0]: dict(zip(keys, map(int, m[1:]), strict=True)) for m in RECAP.findall(output)}


def write_project(folder: Path, deployment: Any, extra: dict[str, str]) -> None:
    """ansible.cfg, an INI inventory written by hand, group vars and site.yml."""
    hosts = deployment.roles.all()
    key = hosts[0].keyfile
    known = deployment.env.known_hosts
    lines = []
    for role, members in deployment.roles.items():
        lines.append(f"[{role}]")
        lines += [f"{h.name} ansible_host={h.address}" for h in members]
    lines += ["[all:vars]", "ansible_user=root", f"ansible_ssh_private_key_file={key}",
              f"ansible_ssh_common_args='-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes'",
              "ansible_python_interpreter=/usr/bin/python3"]
    lines += [f"{name}={value}" for name, value in extra.items()]
    (folder / "hosts.ini").write_text("\n".join(lines) + "\n")
    (folder / "ansible.cfg").write_text(
        f"[defaults]\nroles_path = {ROOT / 'roles'}\nforks = 20\nretry_files_enabled = false\n"
        "[ssh_connection]\npipelining = true\n")
    (folder / "site.yml").write_text(SITE)


def run(folder: Path, playbook: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run([ANSIBLE_PLAYBOOK, "-i", "hosts.ini", playbook, *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)


def in_host(deployment: Any, name: str, command: str) -> str:
    host = deployment.roles.find(name)
    argv = [*deployment.provider.enter(host), "sh", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.mark.hosts
@pytest.mark.timeout(420)
def test_roles_install_idempotently_from_a_plain_ansible_project(
        local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1, "client": 1}, name="standalone")
    project = tmp_path / "project"
    project.mkdir()
    pyz = build_agent_zipapp(tmp_path)
    (project / "group_vars").mkdir()
    (project / "group_vars" / "all.yml").write_text(
        f"enosnet_agent_pyz: {pyz}\nenosnet_agent_secret: {SECRET}\nenosnet_agent_env_id: standalone\n"
        "enosnet_agent_port: 7711\n"
        f"enosnet_agent_actions: {json.dumps(iperf3_actions())}\n")
    write_project(project, deployment, {})

    first = run(project, "site.yml")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert all(r["changed"] > 0 for r in recap(first.stdout).values()), first.stdout[-2000:]

    second = run(project, "site.yml", "-v")
    assert second.returncode == 0, second.stdout[-3000:]
    counts = recap(second.stdout)
    assert set(counts) == {"server-0", "client-0"}
    assert all(r["changed"] == 0 for r in counts.values()), second.stdout[-3000:]
    assert SECRET not in first.stdout + second.stdout + second.stderr

    for name in ("server-0", "client-0"):
        assert in_host(deployment, name, "stat -c %a /etc/enosnet/agent.json") == "600"
        # the real driver, built from crates.io on the controller (once per machine) and pushed
        assert "--server-id" in in_host(deployment, name, "s2n-netbench-driver-server-tcp --help")
        # the experiment address, not every interface
        assert f"{deployment.roles.find(name).address}:7711 " in in_host(deployment, name, "ss -Hulnp") + " "
        assert in_host(deployment, name, "command -v iperf3") == "/usr/bin/iperf3"


@pytest.mark.hosts
@pytest.mark.timeout(420)
def test_agent_restarts_only_on_change_and_backup_cleanup_work(
        local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1}, name="agentlife")
    project = tmp_path / "project"
    project.mkdir()
    pyz = build_agent_zipapp(tmp_path)
    write_project(project, deployment, {"enosnet_agent_pyz": str(pyz), "enosnet_agent_secret": SECRET})
    (project / "agent.yml").write_text(
        "- name: Agent only\n  hosts: all\n  gather_facts: false\n  roles:\n    - enosnet_agent\n")
    pid = "cat /run/enosnet-agent.pid"

    assert run(project, "agent.yml").returncode == 0
    started = in_host(deployment, "server-0", pid)
    again = run(project, "agent.yml")
    assert recap(again.stdout)["server-0"]["changed"] == 0
    assert in_host(deployment, "server-0", pid) == started

    moved = run(project, "agent.yml", "-e", "enosnet_agent_port=7722")
    assert moved.returncode == 0, moved.stdout[-3000:]
    assert "RUNNING HANDLER [enosnet_agent : Restart the enosnet agent daemon]" in moved.stdout
    restarted = in_host(deployment, "server-0", pid)
    assert restarted and restarted != started
    assert ":7722 " in in_host(deployment, "server-0", "ss -Hulnp") + " "

    backup = tmp_path / "backup"
    fetched = run(project, str(ROOT / "playbooks" / "backup.yml"), "-e", f"backup_dir={backup}")
    assert fetched.returncode == 0, fetched.stdout[-3000:]
    assert (backup / "server-0" / "var" / "lib" / "enosnet-agent" / "agent.log").is_file()

    cleaned = run(project, str(ROOT / "playbooks" / "cleanup.yml"))
    assert cleaned.returncode == 0, cleaned.stdout[-3000:]
    assert in_host(deployment, "server-0", f"ls -d /etc/enosnet /var/lib/enosnet-agent {shlex.quote('/opt/enosnet')}"
                   " 2>/dev/null; cat /run/enosnet-agent.pid 2>/dev/null") == ""
    assert ":7722 " not in in_host(deployment, "server-0", "ss -Hulnp") + " "

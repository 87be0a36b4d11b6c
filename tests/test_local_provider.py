"""Local namespace hosts: reachable over SSH, isolated from each other and from the machine, fully removed."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.errors import ProviderError
from enosnet.model import Host
from enosnet.providers import cgroups
from enosnet.providers.local import LocalProvider, Names, destroy_all, prefix_from_env
from tests.conftest import PREFIX, LocalDeployment

pytestmark = pytest.mark.hosts


def ssh(host: Host, command: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(host.keyfile), "-p", str(host.port), *shlex.split(host.extra["ansible_ssh_common_args"]),
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"{host.user}@{host.address}", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def machine_leftovers(tag: str) -> list[str]:
    """Namespaces, links, mounts and processes of our prefix and this tag still on the machine."""
    names = Names(PREFIX, tag)
    netns = os.listdir("/run/netns") if Path("/run/netns").exists() else []
    left = [n for n in netns if n.startswith(f"{PREFIX}-{tag}")]
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True, check=True).stdout)
    left += [link["ifname"] for link in links if link["ifname"].startswith(names.bridge)]
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    left += [line for line in tables.splitlines() if line.endswith(names.nft_table)]
    left += [line for line in Path("/proc/mounts").read_text().splitlines() if f"{PREFIX}-{tag}" in line]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    left += [line for line in ps.splitlines() if f"{PREFIX}-{tag}" in line and "ps -eo" not in line]
    left += [str(group) for group in cgroups.leftovers(cgroups.detect(), re.compile(re.escape(names.bridge)))]
    return left


def test_hosts_answer_over_ssh_with_their_own_hostname(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"server": 1, "client": 2})
    assert [h.name for h in dep.roles.all()] == ["server-0", "client-0", "client-1"]
    names = [ssh(h, "hostname").stdout.strip() for h in dep.roles.all()]
    assert names == ["server-0", "client-0", "client-1"]
    assert subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip() not in names
    server = dep.roles["server"][0]
    assert ssh(server, "getent hosts client-1").stdout.split()[0] == dep.roles["client"][1].address
    assert ssh(server, f"ping -c1 -W2 {dep.roles['client'][0].address}").returncode == 0


def test_files_and_processes_are_private(local_hosts: Callable[..., LocalDeployment], tmp_path: Path) -> None:
    dep = local_hosts({"node": 2})
    one, two = dep.roles["node"]
    marker = f"/root/enosnet-test-{tmp_path.name}"
    ssh(one, f"echo hello > {marker}; nohup sleep 600 </dev/null >/dev/null 2>&1 &")
    assert ssh(one, f"cat {marker}").stdout == "hello\n"
    assert ssh(two, f"test -e {marker}", check=False).returncode == 1
    assert not Path(marker).exists()
    assert "sleep 600" in ssh(one, "ps -eo args").stdout
    assert "sleep 600" not in ssh(two, "ps -eo args").stdout
    assert ssh(one, "cat /proc/1/cmdline | tr '\\0' ' '").stdout.startswith(sys.executable)


def test_orphans_are_reaped(local_hosts: Callable[..., LocalDeployment]) -> None:
    (host,) = local_hosts({"node": 1}).roles["node"]
    ssh(host, "for i in 1 2 3; do (sleep 0.1 &) ; done; sleep 0.5")
    zombies = ssh(host, "ps -eo stat,args | awk '$1 ~ /^Z/'").stdout
    assert zombies == ""


def test_init_is_idempotent_and_reuses_hosts(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"node": 2})
    pids = [h["pid"] for h in dep.provider.provider_state["hosts"]]
    again = LocalProvider(parse_config(dep.config_text), dep.env)
    roles, _ = again.init()
    assert roles == dep.roles
    assert [h["pid"] for h in again.provider_state["hosts"]] == pids


def test_destroy_leaves_nothing_behind(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"server": 1, "client": 2})
    ssh(dep.roles["server"][0], "nohup sleep 600 </dev/null >/dev/null 2>&1 &")
    assert machine_leftovers(dep.env.tag)
    dep.provider.destroy()
    assert machine_leftovers(dep.env.tag) == []
    assert not dep.env.inventory_file.exists()
    dep.provider.destroy()  # idempotent
    assert (dep.env.load_state() or {})["released"] is True


def test_destroy_all_removes_a_stateless_leftover(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"node": 2})
    dep.env.state_file.unlink()
    assert machine_leftovers(dep.env.tag)
    removed = destroy_all(PREFIX)
    assert f"{PREFIX}-{dep.env.tag}-0" in removed
    assert machine_leftovers(dep.env.tag) == []


def test_a_host_that_fails_to_boot_is_reported_and_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "hostinit.py"  # a real init program that dies before starting sshd
    broken.write_text("import sys\nsys.exit('hostinit: cannot build the root')\n")
    monkeypatch.setattr("enosnet.providers.local.HOSTINIT", broken)
    text = "name: broken\nprovider: {kind: local, boot_timeout: 2}\nroles: {node: 2}\n"
    env = Environment(tmp_path / "broken")
    provider = LocalProvider(parse_config(text), env)
    try:
        with pytest.raises(ProviderError, match=r"did not answer on SSH within 2 s: node-0, node-1") as err:
            provider.init()
        assert "logs/node-0.log" in str(err.value)
        assert "cannot build the root" in (env.logs_dir / "node-0.log").read_text()
        assert machine_leftovers(env.tag)  # the state named everything; destroy releases it
    finally:
        provider.destroy()
    assert machine_leftovers(env.tag) == []


def test_context_manager_releases_on_error(tmp_path: Path) -> None:
    env = Environment(tmp_path / "cm")
    provider = LocalProvider(parse_config("name: cm\nprovider: {kind: local}\nroles: {node: 1}\n"), env)
    with pytest.raises(RuntimeError), provider as (roles, _):
        assert ssh(roles["node"][0], "true").returncode == 0
        raise RuntimeError("experiment failed")
    assert machine_leftovers(env.tag) == []


def test_inventory_is_usable_by_plain_ansible(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"server": 1, "client": 1})
    ansible = Path(sys.executable).with_name("ansible")
    out = subprocess.run([str(ansible), "all", "-i", str(dep.env.inventory_file), "-m", "ping", "-o"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == 2


def test_prefix_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENOSNET_LOCAL_PREFIX", "Bad-Prefix")
    with pytest.raises(ProviderError, match="ENOSNET_LOCAL_PREFIX"):
        prefix_from_env()


def test_no_secret_on_a_command_line_and_a_fresh_root_home(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"node": 1})
    (host,) = dep.roles["node"]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    assert "PRIVATE KEY" not in ps
    assert "PRIVATE KEY" not in ssh(host, "cat /proc/1/cmdline").stdout
    assert ssh(host, "cat /root/.bashrc").stdout == Path("/etc/skel/.bashrc").read_text()


@pytest.fixture
def other_environment() -> Iterator[Environment]:
    """Another environment with its secret, outside every folder hosts hide by default (found by the registry)."""
    root = Path(tempfile.mkdtemp(prefix="enosnet-test-", dir="/srv" if Path("/srv").is_dir() else "/opt"))
    try:
        env = Environment(root / "other").create()
        env.secret()
        yield env
    finally:
        shutil.rmtree(root)


@pytest.fixture
def aws_credentials_marker() -> Iterator[Path]:
    """A file in the machine's ~/.aws (made for the test, removed after; the folder too if the test made it)."""
    folder = Path("/root/.aws")
    made = not folder.exists()
    folder.mkdir(mode=0o700, exist_ok=True)
    marker = folder / f"enosnet-test-{secrets.token_hex(4)}"
    marker.write_text("aws_secret_access_key = not-a-real-key\n")
    try:
        yield marker
    finally:
        marker.unlink()
        if made:
            folder.rmdir()


def test_a_host_is_a_box_not_the_machine(local_hosts: Callable[..., LocalDeployment], other_environment: Environment,
                                         aws_credentials_marker: Path) -> None:
    dep = local_hosts({"node": 1})
    (host,) = dep.roles["node"]
    dep.env.secret()
    clock = ssh(host, "date -s @0", check=False)
    assert clock.returncode != 0 and "not permitted" in clock.stderr
    assert ssh(host, "find /dev -type b | wc -l; lsblk -n 2>/dev/null | wc -l").stdout.split() == ["0", "0"]
    for secret in (other_environment.secret_file, dep.env.secret_file, dep.env.key_file, aws_credentials_marker):
        assert secret.exists()
        assert ssh(host, f"cat {secret}", check=False).returncode != 0, f"{secret} is readable in a host"
    capabilities = int(ssh(host, "grep CapBnd /proc/self/status").stdout.split()[1], 16)
    for number in (16, 17, 21, 22, 25, 27):  # sys_module, sys_rawio, sys_admin, sys_boot, sys_time, mknod
        assert not capabilities & (1 << number)
    assert capabilities & (1 << 12) and capabilities & (1 << 13)  # net_admin, net_raw: tc and ping still work
    assert ssh(host, "tc qdisc replace dev eth0 root pfifo limit 500 && tc qdisc del dev eth0 root").returncode == 0
    assert ssh(host, "sysctl -qw net.ipv4.tcp_rmem='4096 131072 6291456'").returncode == 0
    assert ssh(host, "echo 1 > /proc/sys/kernel/printk", check=False).returncode != 0


def test_a_host_reaches_only_the_coordinator_on_the_gateway(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"node": 1})
    (host,) = dep.roles["node"]
    gateway = dep.networks["local"].gateway
    with socket.socket() as service, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as datagrams:
        service.bind((gateway, 0))
        service.listen()
        datagrams.bind((gateway, 0))
        datagrams.settimeout(2)
        tcp = ssh(host, f"timeout 3 bash -c 'echo > /dev/tcp/{gateway}/{service.getsockname()[1]}'", check=False)
        assert tcp.returncode != 0
        port = datagrams.getsockname()[1]
        send = f"python3 -c 'import socket,sys; s=socket.socket(2,2); s.bind((\"\", int(sys.argv[1]))); " \
               f"s.sendto(b\"x\", (\"{gateway}\", {port}))' "
        ssh(host, send + "7701")  # not the agent port: dropped
        with pytest.raises(TimeoutError):
            datagrams.recvfrom(16)
        ssh(host, send + "7700")  # an agent's event: delivered
        assert datagrams.recvfrom(16)[0] == b"x"


def test_destroy_all_leaves_a_longer_prefix_alone(local_hosts: Callable[..., LocalDeployment]) -> None:
    dep = local_hosts({"node": 1})
    assert destroy_all(PREFIX[:-1]) == []  # "t1a2" must not take "t1a2b"'s hosts
    assert ssh(dep.roles["node"][0], "true").returncode == 0


def test_share_mounts_a_folder_read_only_and_refuses_an_environment(tmp_path: Path) -> None:
    shared = tmp_path / "build"
    shared.mkdir()
    (shared / "tool").write_text("built\n")
    text = f"name: share\nprovider: {{kind: local, share: [{shared}]}}\nroles: {{node: 1}}\n"
    with LocalProvider(parse_config(text), Environment(tmp_path / "env")) as (roles, _):
        (host,) = roles["node"]
        assert ssh(host, f"cat {shared}/tool").stdout == "built\n"
        assert ssh(host, f"touch {shared}/new", check=False).returncode != 0
        assert ssh(host, f"ls {tmp_path}").stdout.split() == ["build"]  # the rest of /tmp stays hidden
    text = f"name: share\nprovider: {{kind: local, share: [{tmp_path}]}}\nroles: {{node: 1}}\n"
    env = Environment(tmp_path / "env2")
    with pytest.raises(ProviderError, match="holds the enosnet environment"):
        LocalProvider(parse_config(text), env).init()
    assert not (env.load_state() or {}).get("provider", {}).get("hosts")

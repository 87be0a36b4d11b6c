"""The static provider: existing machines from the config or a plain hosts file.

The "machines" here are listeners on 127.0.0.1 (the only address tests may
reach): one answers with an SSH banner, one port is closed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.errors import ConfigError
from enosnet.model import Host
from enosnet.providers import make_provider
from enosnet.providers.static import StaticProvider, parse_hosts_line, read_hosts_file

ENOSNET = str(Path(sys.executable).with_name("enosnet"))


@pytest.mark.parametrize(("line", "host"), [
    ("10.0.0.5", Host("10.0.0.5")),
    ("  ann@10.0.0.6:2222   # spare", Host("10.0.0.6", user="ann", port=2222)),
    ("bench-01.lab.example", Host("bench-01.lab.example")),
    ("2001:db8::7", Host("2001:db8::7")),
    ("bob@[2001:db8::7]:2200", Host("2001:db8::7", user="bob", port=2200)),
    ("# a comment", None),
    ("   ", None),
])
def test_hosts_file_lines(line: str, host: Host | None) -> None:
    assert parse_hosts_line(line, where="h:1") == host


@pytest.mark.parametrize("line", ["10.0.0.5:0", "10.0.0.5:70000", "a b", "ann@", "10.0.0.5:ssh"])
def test_bad_hosts_file_lines_name_file_and_line(line: str) -> None:
    with pytest.raises(ConfigError, match=r"^hosts.txt:7: not a host: "):
        parse_hosts_line(line, where="hosts.txt:7")


@pytest.mark.parametrize(("line", "what"), [
    ("-oProxyCommand=touch${IFS}/tmp/x", "not an IP address or host name"),
    ("-lroot@10.0.0.5", "not a user name"),
    ("ann;id@10.0.0.5", "not a user name"),
])
def test_hosts_file_lines_that_would_become_ssh_options_are_refused(line: str, what: str) -> None:
    with pytest.raises(ConfigError, match=rf"^hosts.txt:7: host .*: .*{what}"):
        parse_hosts_line(line, where="hosts.txt:7")


def test_config_hosts_are_checked_where_they_are_written() -> None:
    text = ("name: lab\nprovider:\n  kind: static\n  hosts:\n    - {address: 10.0.0.5, roles: [server]}\n"
            "    - {address: '-oProxyCommand=x', alias: '../up', user: '-l', roles: [client]}\n"
            "roles: {server: 1, client: 1}\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="lab.yaml")
    problems = dict(caught.value.problems)
    assert {"address", "alias", "user"} <= {where.rsplit(".", 1)[-1] for where in problems}, problems
    assert all(where.startswith("lab.yaml:6 ") for where in problems), problems


def test_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.txt"
    path.write_text("# rack 3\n10.0.0.5\n\nann@10.0.0.6:2222\n")
    assert read_hosts_file(path, user="ec2-user") == [Host("10.0.0.5", user="ec2-user"),
                                                      Host("10.0.0.6", user="ann", port=2222)]
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no hosts in the file"):
        read_hosts_file(path)
    path.write_text("10.0.0.5\n10.0.0.6:x\n")
    with pytest.raises(ConfigError, match=r"hosts.txt:2: not a host"):
        read_hosts_file(path)
    with pytest.raises(ConfigError, match="cannot read the hosts file"):
        read_hosts_file(tmp_path / "missing.txt")


@pytest.fixture
def ssh_listener() -> Iterator[int]:
    """A port on 127.0.0.1 that greets like an SSH server (what ``status`` looks for)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def static_config(tmp_path: Path, ssh_port: int) -> str:
    (tmp_path / "hosts.txt").write_text(f"# lab\nops@127.0.0.1:{closed_port()}\n")
    return f"""\
name: lab
provider:
  kind: static
  keyfile: ~/.ssh/id_lab
  hosts_file: {tmp_path / 'hosts.txt'}
  hosts_file_role: spare
  hosts:
    - {{address: 127.0.0.1, alias: alpha, port: {ssh_port}, roles: [server, monitor], vars: {{nic: eth1}}}}
    - {{address: 127.0.0.1, alias: beta, port: {ssh_port}, user: bench, keyfile: /keys/beta, roles: [client]}}
"""


def test_static_lifecycle(tmp_path: Path, ssh_listener: int) -> None:
    provider = make_provider(parse_config(static_config(tmp_path, ssh_listener)), Environment(tmp_path / "env"))
    assert isinstance(provider, StaticProvider)
    roles, networks = provider.init()
    assert sorted(roles) == ["client", "monitor", "server", "spare"] and len(networks) == 0
    alpha = roles["server"][0]
    assert roles["monitor"] == (alpha,) and alpha.extra["nic"] == "eth1"
    assert alpha.keyfile == str(Path.home() / ".ssh/id_lab") and roles["client"][0].keyfile == "/keys/beta"
    inventory = yaml.safe_load(provider.env.inventory_file.read_text())["all"]
    assert inventory["hosts"]["beta"]["ansible_user"] == "bench"
    assert inventory["hosts"]["beta"]["ansible_port"] == ssh_listener
    assert set(inventory["children"]["server"]["hosts"]) == {"alpha"}
    status = {s.host.name: s for s in provider.status()}
    assert status["alpha"].reachable and status["alpha"].detail.startswith("SSH-2.0")
    assert not status["127.0.0.1"].reachable  # the spare from the hosts file: nothing listens there
    provider.destroy()
    assert not provider.env.inventory_file.exists()
    assert (provider.env.load_state() or {})["released"] is True
    assert (tmp_path / "hosts.txt").exists()  # nothing of the machines' is touched


def test_redeploy_picks_up_changes(tmp_path: Path, ssh_listener: int) -> None:
    text = static_config(tmp_path, ssh_listener)
    env = Environment(tmp_path / "env")
    make_provider(parse_config(text), env).init()
    (tmp_path / "hosts.txt").write_text("127.0.0.1:2201\n127.0.0.1:2202\n")
    roles, _ = make_provider(parse_config(text), env).init()
    assert [h.port for h in roles["spare"]] == [2201, 2202]


def test_role_counts_are_checked_before_anything_is_written(tmp_path: Path, ssh_listener: int) -> None:
    text = static_config(tmp_path, ssh_listener) + "roles: {server: 1, client: 3}\n"
    provider = make_provider(parse_config(text), Environment(tmp_path / "env"))
    with pytest.raises(ConfigError, match=r"roles.client: needs 3 hosts, the static provider lists 1"):
        provider.init()
    assert not provider.env.state_file.exists()


def test_static_through_the_cli(tmp_path: Path, ssh_listener: int) -> None:
    (tmp_path / "lab.yaml").write_text(static_config(tmp_path, ssh_listener))
    env = {**os.environ, "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ENOSNET, *args], cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)

    out = run("deploy", "-c", "lab.yaml", "--dry-run")
    assert out.returncode == 0 and "plan for" in out.stdout and not (tmp_path / ".enosnet" / "lab").exists()
    out = run("deploy", "-c", "lab.yaml", "--no-install")  # the "machines" only greet; nothing to install on
    assert out.returncode == 0 and "deployed 3 hosts" in out.stdout, out.stderr
    out = run("status")
    assert out.returncode == 1 and "2 reachable, 1 unreachable, 3 total" in out.stdout  # the spare is down
    out = run("destroy")
    assert out.returncode == 0 and "released" in out.stdout
    assert not (tmp_path / ".enosnet" / "lab" / "inventory.yaml").exists()

"""`enosnet deploy | status | inventory | destroy` from a user's shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ENOSNET = str(Path(sys.executable).with_name("enosnet"))


def enosnet(*args: str, cwd: Path, check: bool = False, user: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [ENOSNET, *args]
    if user:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    env = {**os.environ, "COLUMNS": "200"}
    out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_help_is_useful_on_its_own(tmp_path: Path) -> None:
    out = enosnet("--help", cwd=tmp_path, check=True)
    for command in ("deploy", "status", "inventory", "destroy"):
        assert command in out.stdout
    assert "Typical session" in out.stdout


def test_bad_config_exits_2_and_acquires_nothing(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: demo\nprovider: {kind: local}\nroles: {server: -2, client: 1}\n")
    out = enosnet("deploy", "-c", "c.yaml", cwd=tmp_path)
    assert out.returncode == 2
    assert "c.yaml:3 roles.server" in out.stderr and "greater than or equal to 0" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / ".enosnet").exists()


def test_unknown_provider_exits_2(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: demo\nprovider: {kind: vagrant}\nroles: {server: 1}\n")
    out = enosnet("deploy", "-c", "c.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "unknown provider 'vagrant'" in out.stderr


def test_commands_without_an_environment_say_what_to_do(tmp_path: Path) -> None:
    out = enosnet("status", cwd=tmp_path)
    assert out.returncode == 1 and "enosnet deploy -c CONFIG" in out.stderr


def test_usage_error_exits_2(tmp_path: Path) -> None:
    assert enosnet("deploy", cwd=tmp_path).returncode == 2


@pytest.mark.hosts
def test_without_root_the_local_provider_refuses_at_once(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    (tmp_path / "c.yaml").write_text("name: demo\nprovider: {kind: local}\nroles: {server: 1}\n")
    out = enosnet("deploy", "-c", "c.yaml", cwd=tmp_path, user="65534")
    assert out.returncode == 1
    assert "needs root" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".enosnet").exists()


@pytest.mark.hosts
def test_deploy_status_inventory_destroy(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("name: demo\nprovider: {kind: local}\nroles: {server: 1, client: 2}\n")
    try:
        out = enosnet("deploy", "-c", "c.yaml", "--no-install", cwd=tmp_path, check=True)
        assert "deployed 3 hosts (server: 1, client: 2)" in out.stdout
        assert (tmp_path / ".enosnet" / "current").resolve() == tmp_path / ".enosnet" / "demo"

        again = enosnet("deploy", "-c", "c.yaml", "--no-install", cwd=tmp_path, check=True)
        assert "deployed 3 hosts" in again.stdout

        status = json.loads(enosnet("status", "--json", cwd=tmp_path, check=True).stdout)
        assert [h["name"] for h in status["hosts"]] == ["server-0", "client-0", "client-1"]
        assert all(h["reachable"] for h in status["hosts"])
        assert "3 reachable, 0 unreachable, 3 total" in enosnet("status", cwd=tmp_path, check=True).stdout

        inventory = yaml.safe_load(enosnet("inventory", cwd=tmp_path, check=True).stdout)
        assert set(inventory["all"]["children"]) == {"server", "client"}
        server = inventory["all"]["hosts"]["server-0"]
        assert server["ansible_python_interpreter"] == "/usr/bin/python3"
        assert server["ansible_host"].startswith("198.1")
    finally:
        enosnet("destroy", "--env", str(tmp_path / ".enosnet" / "demo"), cwd=tmp_path, check=True)
    out = enosnet("destroy", cwd=tmp_path, check=True)
    assert "released" in out.stdout
    assert enosnet("inventory", cwd=tmp_path).returncode == 2

"""The netbench role's path and download ways, on a real local host, with plain ansible-playbook.

The path way builds a real driver crate from a local folder on the controller
(cargo, incremental) and pushes it; the crates way is in test_roles_standalone.py.
The download way fetches a tar.gz by file:// URL with its checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
ROOT = Path(__file__).resolve().parents[1]
RECAP = re.compile(r"^(\S+)\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", re.M)
BINARIES = ["s2n-netbench-collector", "s2n-netbench-scenarios",
            "s2n-netbench-driver-server-tcp", "s2n-netbench-driver-client-tcp"]


def run(deployment: Any, folder: Path, variables: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    (folder / "nb.yml").write_text("- name: netbench\n  hosts: all\n  gather_facts: false\n  roles: [netbench]\n")
    env = {**os.environ, "ANSIBLE_PIPELINING": "True", "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    argv = [ANSIBLE_PLAYBOOK, "-i", str(deployment.env.inventory_file), str(folder / "nb.yml"),
            "-e", json.dumps({"netbench_drivers": ["tcp"], **variables}), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)


def changed(out: subprocess.CompletedProcess[str]) -> int:
    counts = RECAP.findall(out.stdout)
    assert counts and out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]
    return int(counts[0][1])


def sh(deployment: Any, command: str) -> str:
    argv = [*deployment.provider.enter(deployment.roles.all()[0]), "sh", "-c", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.mark.hosts
@pytest.mark.timeout(900)
def test_path_way_builds_a_local_checkout_on_the_controller_and_pushes_it(
        local_hosts: Callable[..., Any], tmp_path: Path, driver_checkout: Path,
        patch_client: Callable[[Path], None]) -> None:
    deployment = local_hosts({"server": 1}, name="nbpath")
    checkout = driver_checkout  # a protocol developer's own copy of a driver crate
    variables = {"netbench_source": "path", "netbench_path": str(checkout), "netbench_bin_dir": "/opt/netbench/bin"}
    assert changed(run(deployment, tmp_path, variables)) > 0
    assert "--server-id" in sh(deployment, "/opt/netbench/bin/s2n-netbench-driver-server-tcp --help")
    assert changed(run(deployment, tmp_path, variables)) == 0  # rebuilt (incremental, same binary): nothing to push

    patch_client(checkout)  # the developer changes the driver: the hosts get the change
    assert changed(run(deployment, tmp_path, variables)) > 0
    assert "patched" in sh(deployment, "/opt/netbench/bin/s2n-netbench-driver-client-tcp 2>&1; true")


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_download_way_checks_the_checksum_and_fetches_once(local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    deployment = local_hosts({"server": 1}, name="nbdown", share=[dist])
    archive = dist / "netbench.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in BINARIES:
            path = tmp_path / name
            path.write_text(f"#!/bin/sh\necho {name} downloaded\n")
            path.chmod(0o755)
            tar.add(path, arcname=name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    variables = {"netbench_source": "download", "netbench_download_url": f"file://{archive}",
                 "netbench_download_checksum": f"sha256:{digest}"}

    bad = run(deployment, tmp_path, {**variables, "netbench_download_checksum": "sha256:" + "0" * 64})
    assert bad.returncode != 0 and "checksum" in bad.stdout.lower()
    assert changed(run(deployment, tmp_path, variables)) > 0
    assert sh(deployment, "s2n-netbench-scenarios") == "s2n-netbench-scenarios downloaded"
    assert changed(run(deployment, tmp_path, variables)) == 0

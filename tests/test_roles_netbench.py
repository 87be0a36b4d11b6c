"""The netbench role's build and download ways, on a real local host, with plain ansible-playbook.

s2n-netbench cannot be built here (no crates registry), so the build way runs
against a local git repository and a stand-in ``cargo`` that "builds" small
executables named like the real binaries: what is tested is the role's logic
(rebuild only when the checked-out commit changes). Check mode covers the
branch that installs rustup. The download way fetches a tar.gz by file:// URL
with its checksum. (The push way is in test_roles_standalone.py.)
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
FAKE_CARGO = """#!/bin/sh
# stand-in for `cargo build --release`: one small executable per binary, saying which commit it came from
[ "$1 $2" = "build --release" ] || exit 64
mkdir -p target/release
for b in {names}; do
  printf '#!/bin/sh\\necho %s built from %s\\n' "$b" "$(git rev-parse --short HEAD)" > "target/release/$b"
  chmod 755 "target/release/$b"
done
echo build >> "$CARGO_HOME/builds.log"
"""


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


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def source_repo(folder: Path) -> Path:
    repo = folder / "s2n-netbench"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "Cargo.toml").write_text("[workspace]\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


@pytest.mark.hosts
@pytest.mark.timeout(400)
def test_build_way_rebuilds_only_when_the_commit_changes(local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1}, name="nbbuild")
    repo = source_repo(tmp_path)
    cargo_home = tmp_path / "cargo"
    (cargo_home / "bin").mkdir(parents=True)
    (cargo_home / "bin" / "cargo").write_text(FAKE_CARGO.format(names=" ".join(BINARIES)))
    (cargo_home / "bin" / "cargo").chmod(0o755)
    rustup = tmp_path / "rustup-init.sh"
    rustup.write_text("#!/bin/sh\nexit 1\n")
    common = {"netbench_source": "build", "netbench_git_url": f"file://{repo}", "netbench_git_ref": "main",
              "netbench_build_packages": ["git"], "netbench_bin_dir": "/opt/netbench/bin",
              "netbench_src_dir": "/opt/netbench/src"}
    variables = {**common, "netbench_cargo_home": str(cargo_home)}

    check = run(deployment, tmp_path, {**common, "netbench_cargo_home": "/opt/no-cargo",
                                       "netbench_rustup_url": f"file://{rustup}"}, "--check")
    assert changed(check) > 0
    assert "TASK [netbench : Run rustup-init]" in check.stdout and "would build " in check.stdout
    assert sh(deployment, "ls /opt/netbench /tmp/rustup-init.sh 2>&1 | grep -c 'No such file'") == "2"

    assert changed(run(deployment, tmp_path, variables)) > 0
    first = git(repo, "rev-parse", "--short", "HEAD")
    assert sh(deployment, "/opt/netbench/bin/s2n-netbench-collector") == f"s2n-netbench-collector built from {first}"
    assert changed(run(deployment, tmp_path, variables)) == 0
    builds = f"grep -c build {cargo_home}/builds.log"  # written inside the host (its copy-on-write root)
    assert sh(deployment, builds) == "1"

    # commit inside the host: its root is a copy-on-write overlay, which may not show later changes below it
    second = sh(deployment, f"cd {repo} && echo change > README && git add . && git -c user.name=t "
                            "-c user.email=t@example.invalid commit -q -m second && git rev-parse --short HEAD")
    assert second and second != first
    assert changed(run(deployment, tmp_path, variables)) > 0
    assert sh(deployment, "/opt/netbench/bin/s2n-netbench-driver-client-tcp") == \
        f"s2n-netbench-driver-client-tcp built from {second}"
    assert sh(deployment, builds) == "2"


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_download_way_checks_the_checksum_and_fetches_once(local_hosts: Callable[..., Any], tmp_path: Path) -> None:
    deployment = local_hosts({"server": 1}, name="nbdown")
    archive = tmp_path / "netbench.tar.gz"
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

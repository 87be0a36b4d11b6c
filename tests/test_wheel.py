"""A pip-installed enosnet deploys: its wheel, in a fresh virtualenv outside the repository, installs and benches.

The playbooks and roles ship inside the package (``enosnet/playbooks``) and
are found with ``importlib.resources``; nothing may depend on a checkout.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "-q", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def build_wheel(tmp_path: Path) -> Path:
    """The wheel of the working tree, built from a copy (a stale ``build/`` in the tree cannot leak into it)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "enosnet", src / "enosnet", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip("wheel", "--no-deps", str(src), "-w", str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("enosnet-*.whl")
    return wheel


@pytest.mark.hosts
@pytest.mark.timeout(900)
def test_a_wheel_in_a_fresh_virtualenv_deploys_two_local_hosts_and_runs_an_experiment(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    work = tmp_path / "work"  # a user's folder: no checkout anywhere near
    work.mkdir()
    # this repository on no path: not on PYTHONPATH, not the working folder, not this interpreter's folder
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
    env["COLUMNS"] = "200"

    def enosnet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "enosnet"), *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)

    located = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import enosnet.remote as r; print(r.bundled('deploy.yml'))"],
                             cwd=work, env=env, capture_output=True, text=True, check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(located.stdout.strip()) == site / "enosnet" / "playbooks" / "deploy.yml"
    # the roles' files that the repository links to the package's modules are real files in the wheel
    for linked in ("netem/files/impaird.py", "netbench/files/netbench_build.py"):
        path = site / "enosnet" / "playbooks" / "roles" / linked
        assert path.is_file() and not path.is_symlink() and path.stat().st_size > 1000

    (work / "env.yaml").write_text("name: wheel\nprovider: {kind: local}\nroles: {server: 1, client: 1}\n"
                                   "install: {netbench: {drivers: [tcp]}}\n")
    (work / "x.yaml").write_text("name: x\ndriver: iperf3\nduration: 1s\nrepetitions: 1\n"
                                 "iperf3: {server_role: server, client_role: client}\n")
    try:
        deployed = enosnet("deploy", "-c", "env.yaml")
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        assert "2 succeeded, 0 failed, 2 total" in deployed.stdout
        benched = enosnet("bench", "x.yaml")
        assert benched.returncode == 0, benched.stdout[-3000:] + benched.stderr[-3000:]
        root = work / ".enosnet" / "wheel"
        played = [c for c in (p.read_text() for p in (root / "runs").rglob("command")) if "deploy.yml" in c]
        assert played and all(str(site / "enosnet" / "playbooks" / "deploy.yml") in c for c in played)
        with sqlite3.connect(root / "results.db") as db:
            runs = db.execute("SELECT status FROM runs").fetchall()
            throughput = db.execute("SELECT value FROM metrics WHERE name = 'throughput'").fetchall()
        assert runs == [("ok",)] and throughput and all(v > 1e6 for (v,) in throughput)
    finally:
        gone = enosnet("destroy")
    assert gone.returncode == 0, gone.stdout[-2000:] + gone.stderr[-2000:]

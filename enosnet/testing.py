"""Agents without Ansible, and a local AWS endpoint: for tests, benchmarks and loopback experiments.

The ``enosnet_agent`` role (``enosnet deploy``) is how agents reach hosts.
These helpers start the same agent with the same config (``agent_config``,
the one the role renders too) where a test or benchmark wants agents without a
deploy: over the SSH fan-out (``start_agents_over_ssh``), or as processes on
this machine (``LocalAgents``). ``local_aws`` runs moto's server (a test
dependency) on loopback and points boto3 at it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enosnet.coordinator.agent.wire import DEFAULT_PORT
from enosnet.coordinator.catalogue import agent_config
from enosnet.coordinator.core import Worker, workers_from_roles
from enosnet.coordinator.zipapp import build_agent_zipapp
from enosnet.errors import ConfigError, RemoteError
from enosnet.model import Host, Roles
from enosnet.remote import HostResult, Results, push, run_command

REMOTE_DIR = "/var/lib/enosnet-agent"


def start_agents_over_ssh(roles: Roles, *, env_id: str, secret: str, actions: Mapping[str, Any],
                          port: int = DEFAULT_PORT, remote_dir: str = REMOTE_DIR,
                          python: str = "python3") -> list[Worker]:
    """Copy the agent zipapp and its config to every host of ``roles`` and start it as a supervised daemon.

    The files go to ``remote_dir/new`` first; a running agent is stopped
    before they replace its own (a zipapp is read while it runs). Returns the
    workers to give a ``Coordinator``; raises ``HostsFailed`` with the per-host
    results when some hosts fail. Re-running restarts the agents (runs they
    finished stay recorded in their workdir).
    """
    hosts = roles.all()
    with tempfile.TemporaryDirectory(prefix="enosnet-agents-") as tmp:
        pyz = build_agent_zipapp(Path(tmp) / "agent.pyz")
        for host in hosts:
            config = agent_config(host.name, role=",".join(roles.roles_of(host)), secret=secret, env_id=env_id,
                                  actions=actions, port=int(host.extra.get("enosnet_agent_port", port)),
                                  workdir=f"{remote_dir}/work", bind=agent_bind(host))
            (Path(tmp) / host.name).mkdir()
            (written := Path(tmp) / host.name / "agent.json").write_text(json.dumps(config, indent=1))
            written.chmod(0o600)
        new = f"{remote_dir}/new"
        push([str(pyz), f"{tmp}/{{host}}/agent.json"], new, roles=hosts, strict=True)
    home, staged, pidfile = (shlex.quote(p) for p in (remote_dir, new, f"{remote_dir}/agent.pid"))
    run_command(f"set -e; chmod 700 {home}; {stop_line(f'{remote_dir}/agent.pid')}; "
                f"mv -f {staged}/agent.pyz {staged}/agent.json {home}/; "
                f"chmod 600 {home}/agent.json; exec {shlex.quote(python)} {home}/agent.pyz "
                f"--config {home}/agent.json --daemon --pidfile {pidfile}", roles=hosts, strict=True)
    return workers_from_roles(roles, port=port)


def agent_bind(host: Host) -> str:
    """The address an agent on ``host`` binds: the experiment address, never every interface by default.

    ``enosnet_agent_bind`` when the inventory sets it, else the private address
    (EC2: the public one is NAT'd to it), else the address enosnet reaches the
    host on, as the role's default does. An agent whose address is not on its
    host (a NAT'd static host) falls back to all interfaces and says so in its log.
    """
    return str(host.extra.get("enosnet_agent_bind") or host.extra.get("enosnet_private_address") or host.address)


def stop_agents_over_ssh(hosts: Sequence[Host], *, remote_dir: str = REMOTE_DIR) -> Results[HostResult]:
    """Stop the supervised agents (their running actions are killed); per-host results."""
    return run_command(stop_line(f"{remote_dir}/agent.pid"), roles=hosts)


def stop_line(pidfile: str) -> str:
    """A shell line: SIGTERM the supervisor in ``pidfile`` and wait (5 s) until it is gone.

    Only a process started with ``--pidfile <pidfile>`` is signalled: a stale
    file (a reboot, a crash) may hold the pid of an unrelated process by now.
    """
    quoted = shlex.quote(pidfile)
    ours = f"tr '\\0' '\\n' < /proc/$p/cmdline 2>/dev/null | grep -qxF -- {quoted}"
    return (f"if [ -f {quoted} ]; then p=$(cat {quoted}); "
            f"case $p in ''|*[!0-9]*) ;; *) if {ours}; then kill $p 2>/dev/null; "
            f"for i in $(seq 50); do kill -0 $p 2>/dev/null || break; sleep 0.1; done; "
            f"kill -9 $p 2>/dev/null; fi;; esac; rm -f {quoted}; fi; true")


class LocalAgents:
    """Agents as processes on this machine (loopback tests, benchmarks); stop them with ``close``."""

    def __init__(self, configs: Sequence[dict[str, Any]], *, folder: Path, per_process: int = 1,
                 python: str = sys.executable) -> None:
        if not configs:
            raise ConfigError("LocalAgents needs at least one agent config")
        self.folder = Path(folder)
        self.configs = list(configs)
        self.pyz = build_agent_zipapp(self.folder / "agent.pyz")
        self.procs: list[subprocess.Popen[bytes]] = []
        for config in self.configs:  # a previous instance's pid file would look like "listening"
            (Path(config["workdir"]) / "agent.pid").unlink(missing_ok=True)
        groups = [self.configs[i:i + per_process] for i in range(0, len(self.configs), per_process)]
        try:
            for group in groups:
                self.procs.append(self._spawn(group, python))
            self._wait_listening(timeout=30.0)
        except BaseException:
            self.close()
            raise

    def _spawn(self, group: Sequence[dict[str, Any]], python: str) -> subprocess.Popen[bytes]:
        argv = [python, str(self.pyz)]
        for config in group:
            path = self.folder / f"{config['worker_id']}.json"
            path.write_text(json.dumps(config))
            argv += ["--config", str(path)]
        # a file, not a pipe: nobody drains a pipe while the agents run, and a full one would block them
        with self.log(len(self.procs)).open("ab") as log:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=log, start_new_session=True)

    def log(self, index: int) -> Path:
        """The log (stderr) of the ``index``-th agent process."""
        return self.folder / f"agents-{index}.log"

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = [Path(c["workdir"]) / "agent.pid" for c in self.configs]
        while pending and time.monotonic() < deadline:
            pending = [p for p in pending if not p.exists()]
            dead = [i for i, p in enumerate(self.procs) if p.poll() is not None]
            if dead:
                err = self.log(dead[0]).read_text(errors="replace")
                raise RemoteError(f"a local agent exited at start (rc {self.procs[dead[0]].returncode}): "
                                  f"{err[-500:]}")
            time.sleep(0.01)
        if pending:
            raise RemoteError(f"local agents not listening within {timeout:g} s: {len(pending)} missing")

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def close(self) -> None:
        """SIGTERM every agent process (they stop their runs), then SIGKILL stragglers."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> LocalAgents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def local_agents(configs: Sequence[dict[str, Any]], *, folder: Path, per_process: int = 1) -> Iterator[LocalAgents]:
    """``LocalAgents`` as a context manager."""
    agents = LocalAgents(configs, folder=folder, per_process=per_process)
    try:
        yield agents
    finally:
        agents.close()


# ── a local AWS endpoint ────────────────────────────────────────────────────


@dataclass(frozen=True)
class MotoServer:
    """moto's server at ``url``; ``reset`` empties every backend."""

    url: str

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).read()


AWS_VARS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def local_aws() -> Iterator[MotoServer]:
    """moto's server on 127.0.0.1 (a free port) while the block runs, with boto3 pointed at it.

    Sets ``AWS_ENDPOINT_URL`` and test credentials in this process's
    environment and restores them after; moto checks instance types, AMIs and
    key pairs in RunInstances as AWS does.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    strict = {"MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true", "MOTO_ENABLE_AMI_VALIDATION": "true",
              "MOTO_ENABLE_KEYPAIR_VALIDATION": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **strict})
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*AWS_VARS, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RemoteError("moto server did not start (is moto[server] installed?)") from None
                time.sleep(0.1)
        os.environ.update(AWS_VARS, AWS_ENDPOINT_URL=url)
        os.environ.pop("AWS_PROFILE", None)
        yield MotoServer(url)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

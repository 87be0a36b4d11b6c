"""Putting agents on hosts without Ansible: over plain ssh/scp, or as local processes.

The Ansible role ``enosnet_agent`` is the normal way; these helpers serve tests,
experiments on hosts without Ansible, and the loopback benchmark.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enosnet.coordinator.agent.wire import DEFAULT_PORT
from enosnet.coordinator.catalogue import agent_config
from enosnet.coordinator.core import Worker, workers_from_roles
from enosnet.coordinator.zipapp import agent_zipapp_bytes, build_agent_zipapp
from enosnet.errors import ConfigError, HostsFailed, RemoteError
from enosnet.model import Host, Roles
from enosnet.remote.ssh import plain_options, plain_ssh_argv

REMOTE_DIR = "/var/lib/enosnet-agent"


@dataclass(frozen=True)
class SshResult:
    """One host's outcome of an ssh step."""

    host: Host
    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def __repr__(self) -> str:
        return f"SshResult({self.host.name}, rc={self.rc})"


def ssh_base(host: Host) -> list[str]:
    """ssh options for ``host`` from its fields (key, port, ``ansible_ssh_common_args``)."""
    return plain_options(host)


def ssh(host: Host, command: str, *, timeout: float = 60.0, stdin: bytes | None = None) -> SshResult:
    """Run ``command`` (a shell line) on ``host`` over ssh, feeding it ``stdin``."""
    return _run(host, plain_ssh_argv(host, command), timeout, stdin)


def scp(host: Host, files: Mapping[str, Path], *, timeout: float = 60.0) -> SshResult:
    """Copy local files to ``host``: remote path → local path (one scp per file)."""
    for remote, local in files.items():
        argv = ["scp", "-q", *ssh_base(host), "-P", str(host.port), str(local),
                f"{host.user}@{_scp_host(host.address)}:{remote}"]
        result = _run(host, argv, timeout)
        if not result.ok:
            return result
    return SshResult(host, 0, "", "")


def _scp_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _run(host: Host, argv: list[str], timeout: float, stdin: bytes | None = None) -> SshResult:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, input=stdin or b"")
    except subprocess.TimeoutExpired:
        return SshResult(host, 124, "", f"timed out after {timeout:g} s: {shlex.join(argv[:1])}")
    return SshResult(host, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def _fan_out(hosts: Sequence[Host], step: Any) -> dict[Host, SshResult]:
    with ThreadPoolExecutor(max_workers=min(32, max(1, len(hosts)))) as pool:
        return dict(zip(hosts, pool.map(step, hosts), strict=True))


def start_agents_over_ssh(roles: Roles, *, env_id: str, secret: str, actions: Mapping[str, Any],
                          port: int = DEFAULT_PORT, remote_dir: str = REMOTE_DIR,
                          python: str = "python3") -> list[Worker]:
    """Copy the agent zipapp and a config to every host of ``roles`` and start it as a supervised daemon.

    One ssh connection per host (the files travel as a tar stream on stdin).
    Returns the workers to give a ``Coordinator``; raises ``HostsFailed`` with
    the per-host results when some hosts fail. Re-running restarts the agents
    (runs they finished stay recorded in their workdir).
    """
    pyz = agent_zipapp_bytes()

    def install(host: Host) -> SshResult:
        config = agent_config(host.name, role=",".join(roles.roles_of(host)), secret=secret, env_id=env_id,
                              actions=actions, port=int(host.extra.get("enosnet_agent_port", port)),
                              workdir=f"{remote_dir}/work", bind=agent_bind(host))
        bundle = _tar({"agent.pyz": (pyz, 0o755), "agent.json": (json.dumps(config, indent=1).encode(), 0o600)})
        folder, pidfile = shlex.quote(remote_dir), shlex.quote(f"{remote_dir}/agent.pid")
        command = (f"set -e; mkdir -p {folder}; chmod 700 {folder}; {_stop_line(f'{remote_dir}/agent.pid')}; "
                   f"tar -x -C {folder}; exec {shlex.quote(python)} {folder}/agent.pyz "
                   f"--config {folder}/agent.json --daemon --pidfile {pidfile}")
        return ssh(host, command, stdin=bundle)

    results = _fan_out(hosts := roles.all(), install)
    if not all(r.ok for r in results.values()):
        raise HostsFailed(results, _failure_text(f"starting agents on {len(hosts)} hosts", results))
    return workers_from_roles(roles, port=port)


def agent_bind(host: Host) -> str:
    """The address an agent on ``host`` binds: the experiment address, never every interface by default.

    ``enosnet_agent_bind`` when the inventory sets it, else the private address
    (EC2: the public one is NAT'd to it), else the address enosnet reaches the
    host on. An agent whose address is not on its host (a NAT'd static host)
    falls back to all interfaces and says so in its log.
    """
    return str(host.extra.get("enosnet_agent_bind") or host.extra.get("enosnet_private_address") or host.address)


def _tar(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def stop_agents_over_ssh(hosts: Sequence[Host], *, remote_dir: str = REMOTE_DIR) -> dict[Host, SshResult]:
    """Stop the supervised agents (their running actions are killed); per-host results."""
    return _fan_out(hosts, lambda host: ssh(host, _stop_line(f"{remote_dir}/agent.pid")))


def _stop_line(pidfile: str) -> str:
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


def _failure_text(what: str, results: Mapping[Host, SshResult]) -> str:
    failed = [f"{h.name}: {(r.stderr or r.stdout).strip()[-300:]}" for h, r in results.items() if not r.ok]
    return f"{what} failed on {len(failed)} of {len(results)} hosts:\n  " + "\n  ".join(failed)


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

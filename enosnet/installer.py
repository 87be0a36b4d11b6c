"""The install step of ``enosnet deploy``: ``playbooks/deploy.yml`` on every host, with a per-host recap.

It builds the agent zipapp, passes the environment's secret, agent port and
action catalogue to the ``enosnet_agent`` role, and (when given) where
netbench's binaries come from to the ``netbench`` role. A second install on
the same hosts changes nothing (``changed == 0`` for every host).

Example (needs reachable hosts)::

    report = install(env, roles, options=InstallOptions(netbench_dir=Path("target/release")))
    for row in report.recap():
        print(row.host, row.changed)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enosnet.bench.drivers import default_actions, tool_roles
from enosnet.config import NetbenchInstall
from enosnet.coordinator import build_agent_zipapp
from enosnet.coordinator.agent.wire import DEFAULT_PORT
from enosnet.environment import Environment
from enosnet.errors import ConfigError, InstallError
from enosnet.inventory import host_vars
from enosnet.model import FrozenVars, Roles
from enosnet.netbench_build import HOST_TOOLS, BuildError, Built, build, crates_for
from enosnet.remote import AnsibleOptions, AnsibleResults, HostEvent, Status, bundled, run_playbook
from enosnet.results.backup import sha256_file

PLAYBOOK = bundled("deploy.yml")
RECORD_TASK = "Record what the host is like now, for the next deploy's quick check"
Listener = Callable[[HostEvent], None]


@dataclass(frozen=True)
class InstallOptions:
    """What the install step installs.

    ``netbench_dir`` pushes prebuilt s2n-netbench binaries from that controller
    folder; ``netbench_vars`` passes the netbench role's variables directly
    (e.g. ``{"netbench_source": "build", "netbench_git_ref": "v0.1"}``);
    neither installs no netbench. ``agent_pyz`` installs that agent zipapp
    instead of one built from this package. ``extra_vars`` go to every role.
    """

    agent: bool = True
    agent_port: int = DEFAULT_PORT
    agent_pyz: Path | None = None
    netbench_dir: Path | None = None
    netbench_vars: Mapping[str, Any] = field(default_factory=FrozenVars)
    extra_vars: Mapping[str, Any] = field(default_factory=FrozenVars)


@dataclass(frozen=True)
class HostRecap:
    """One host's line of the final recap."""

    host: str
    status: Status
    ok: int
    changed: int
    skipped: int
    failed: int
    message: str = ""


@dataclass(frozen=True)
class InstallReport:
    """What one install did: per-host results, how long it took, the warnings the roles raised."""

    results: AnsibleResults
    duration: float
    warnings: tuple[str, ...] = ()

    def recap(self) -> list[HostRecap]:
        """Counters per host, like Ansible's PLAY RECAP."""
        rows = []
        for host, result in self.results.items():
            count = {s: sum(1 for t in result.tasks if t.status is s) for s in Status}
            rows.append(HostRecap(host.name, result.status, count[Status.OK], result.changed,
                                  count[Status.SKIPPED], count[Status.FAILED] + count[Status.UNREACHABLE],
                                  "" if result.ok else result.message))
        return rows

    @property
    def changed(self) -> int:
        """Changed tasks over all hosts (0 on a second install)."""
        return sum(r.changed for r in self.results.values())


def build_netbench(spec: NetbenchInstall, *, base: Path | None = None,
                   on_output: Callable[[str], None] | None = None) -> tuple[Built, InstallOptions]:
    """Build (or reuse from this machine's cache) the s2n-netbench ``spec`` asks for.

    Returns the build and the install options that push it (with the drivers
    it names) to every host. A relative ``path`` is taken from ``base`` (the
    config file's folder). ``on_output`` gets cargo's lines while something
    builds; nothing is built when everything is cached.
    """
    crates = crates_for([] if spec.path else spec.drivers, versions=spec.versions)
    path = None if spec.path is None else (base or Path.cwd()) / spec.path
    try:
        built = build(crates, path=path, packages=spec.packages, on_output=on_output)
    except BuildError as exc:
        raise InstallError(f"s2n-netbench: {exc}") from None
    drivers = {"netbench_drivers": list(spec.drivers), "netbench_tools": list(HOST_TOOLS)}
    return built, InstallOptions(netbench_dir=built.bin_dir, netbench_vars=FrozenVars(drivers))


def install_vars(env: Environment, options: InstallOptions) -> dict[str, Any]:
    """The extra variables ``deploy.yml`` gets for this environment."""
    tools, _ = tool_roles()
    out: dict[str, Any] = {"deploy_agent": options.agent, "deploy_netbench": False, "deploy_tools": tools}
    if options.agent:
        pyz = options.agent_pyz or build_agent_zipapp(env.create().root / "agent.pyz")
        if not Path(pyz).is_file():
            raise ConfigError(f"agent_pyz={pyz}: no such file")
        out.update(enosnet_agent_pyz=str(Path(pyz).absolute()),
                   enosnet_agent_secret=env.secret(), enosnet_agent_env_id=env.name,
                   enosnet_agent_port=options.agent_port, enosnet_agent_actions=default_actions())
    if options.netbench_dir is not None:
        folder = Path(options.netbench_dir).absolute()
        if not folder.is_dir():
            raise ConfigError(f"netbench_dir={options.netbench_dir}: not a folder")
        out.update(deploy_netbench=True, netbench_source="push", netbench_local_dir=str(folder))
    if options.netbench_vars:
        out.update(deploy_netbench=True, **dict(options.netbench_vars))
    out.update(options.extra_vars)
    return out


def install(env: Environment, roles: Roles, *, options: InstallOptions | None = None,
            on_event: Listener | None = None, strict: bool = True) -> InstallReport:
    """Run ``playbooks/deploy.yml`` on every host of ``roles``.

    With ``strict`` a failed host raises ``HostsFailed`` naming each failed
    host with its failing task and message. Records the agents' id and port in
    the environment state for the coordinator.
    """
    options = options or InstallOptions()
    extra = install_vars(env, options)
    started = time.monotonic()
    _, folders = tool_roles()  # the roles of drivers from other packages
    digests = input_digests(roles, extra, folders)
    stamped = dict((env.load_state() or {}).get("install_stamps") or {})
    extra.update(deploy_stamps=digests, deploy_stamp_check=[h for h, d in digests.items() if stamped.get(h) == d])
    results = run_playbook(PLAYBOOK, roles=roles, extra_vars=extra, env=env, on_event=on_event, strict=False,
                           options=AnsibleOptions(roles_path=tuple(folders)))
    for host, result in results.items():
        record = next((t for t in result.tasks if t.task == RECORD_TASK), None)
        if not result.ok or (record is not None and record.data.get("rc") != 0):
            stamped.pop(host.name, None)
        elif record is not None:
            stamped[host.name] = digests[host.name]
        # else the host ended at the quick check: its stamp stands
    changes: dict[str, Any] = {"install_stamps": stamped}
    if options.agent:
        changes["agent"] = {"env_id": env.name, "port": options.agent_port}
    env.update_state(**changes)
    if strict:
        results.raise_for_failures()
    return InstallReport(results, time.monotonic() - started, _warnings(results))


def input_digests(roles: Roles, extra: Mapping[str, Any], role_folders: Iterable[Path] = ()) -> dict[str, str]:
    """Per host, a digest of everything an install there depends on.

    The extra variables, the files they name (agent zipapp by content,
    netbench binaries by size and modification time), the bundled playbooks and
    roles and those of other packages' drivers, the Ansible version, and the
    host's own inventory variables and groups. Equal digests and equal probe
    output on the host mean the install would change nothing.
    """
    shared = hashlib.sha256(json.dumps(dict(extra), sort_keys=True, default=str).encode())
    shared.update(importlib.metadata.version("ansible-core").encode())
    if extra.get("enosnet_agent_pyz"):
        shared.update(sha256_file(Path(extra["enosnet_agent_pyz"])).encode())
    if extra.get("netbench_local_dir"):
        _hash_tree(shared, Path(extra["netbench_local_dir"]), content=False)
    for folder in (bundled(), *role_folders):
        _hash_tree(shared, Path(folder), content=True)
    base = shared.hexdigest()
    out = {}
    for host in roles.all():
        groups = sorted(role for role, members in roles.items() if host in members)
        text = json.dumps([base, host.name, host_vars(host), groups], sort_keys=True, default=str)
        out[host.name] = hashlib.sha256(text.encode()).hexdigest()
    return out


def _hash_tree(digest: Any, folder: Path, *, content: bool) -> None:
    """Fold every file under ``folder`` (its path and content, or size and mtime) into ``digest``."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        stat = path.stat()
        mark = sha256_file(path) if content else f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"{path.relative_to(folder)}\0{mark}\0".encode())


def _warnings(results: AnsibleResults) -> tuple[str, ...]:
    """Distinct module warnings, each with the hosts that raised it."""
    seen: dict[str, list[str]] = {}
    for host, result in results.items():
        for task in result.tasks:
            for text in task.data.get("warnings") or ():
                hosts = seen.setdefault(str(text), [])
                if host.name not in hosts:
                    hosts.append(host.name)
    return tuple(f"{text} ({', '.join(hosts)})" for text, hosts in seen.items())

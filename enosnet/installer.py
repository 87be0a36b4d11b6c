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

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enosnet.bench.drivers import default_actions, tool_roles
from enosnet.config import NetbenchInstall
from enosnet.coordinator import build_agent_zipapp
from enosnet.coordinator.agent.wire import DEFAULT_PORT
from enosnet.environment import Environment
from enosnet.errors import ConfigError, InstallError
from enosnet.model import FrozenVars, Roles
from enosnet.netbench_build import HOST_TOOLS, BuildError, Built, build, crates_for
from enosnet.remote import AnsibleOptions, AnsibleResults, HostEvent, Status, bundled, run_playbook

PLAYBOOK = bundled("deploy.yml")
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
    results = run_playbook(PLAYBOOK, roles=roles, extra_vars=extra, env=env, on_event=on_event, strict=strict,
                           options=AnsibleOptions(roles_path=tuple(folders)))
    if options.agent:
        env.update_state(agent={"env_id": env.name, "port": options.agent_port})
    return InstallReport(results, time.monotonic() - started, _warnings(results))


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

"""A testbed in one call: ``enosnet.deploy`` acquires hosts, installs the tools and agents, and hands back
everything an experiment script needs, bound to those hosts.

::

    import enosnet

    with enosnet.deploy({"name": "tuto", "provider": {"kind": "local"},
                         "roles": {"server": 1, "client": 1}}) as testbed:
        testbed.run("iperf3 -s -D", role="server")
        result = testbed.bench("incast.yaml")
        print(testbed.report().html)

Configs and experiments are given as a path, YAML text, a mapping or the model
itself, with the same validation and error messages as the CLI's files. The
CLI is built on the same calls: ``enosnet deploy`` is ``acquire`` then
``Testbed.install``, the other commands work on ``attach``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from enosnet.environment import Environment
from enosnet.errors import EnosnetError
from enosnet.model import Networks, Roles
from enosnet.yamlfile import YamlSource, path_or_text

if TYPE_CHECKING:
    from enosnet.bench import BenchResult, Experiment
    from enosnet.bench.events import Event
    from enosnet.config import EnvConfig
    from enosnet.installer import InstallOptions, InstallReport
    from enosnet.netem import Netem
    from enosnet.providers import Provider
    from enosnet.remote import AnsibleResults, HostEvent, HostResult, Results
    from enosnet.remote.ansible import Actions
    from enosnet.results.backup import BackupResult
    from enosnet.results.report import Report
    from enosnet.results.s3 import UploadResult

RoleSelector = str | Sequence[str] | None


def as_config(config: EnvConfig | YamlSource) -> EnvConfig:
    """``config`` validated: a path, YAML text, a mapping or an ``EnvConfig`` (returned as is)."""
    from enosnet.config import EnvConfig, load_config, parse_config

    if isinstance(config, EnvConfig):
        return config
    source = path_or_text(config, what="config")
    return load_config(source) if isinstance(source, Path) else parse_config(source)


def as_experiment(experiment: Experiment | YamlSource) -> Experiment:
    """``experiment`` validated: a path, YAML text, a mapping or an ``Experiment`` (returned as is)."""
    from enosnet.bench import Experiment, load_experiment
    from enosnet.bench.spec import parse_experiment

    if isinstance(experiment, Experiment):
        return experiment
    source = path_or_text(experiment, what="experiment")
    return load_experiment(source) if isinstance(source, Path) else parse_experiment(source)


def _config_folder(config: EnvConfig | YamlSource) -> Path:
    """Where a config's relative paths (a netbench checkout) start: its file's folder, else here."""
    if isinstance(config, (str, Path)):
        located = path_or_text(config, what="config")
        if isinstance(located, Path):
            return located.parent
    return Path.cwd()


@dataclass
class Testbed:
    """Deployed hosts and the library's functions bound to them; a context manager that releases them."""

    env: Environment
    config: EnvConfig
    roles: Roles
    networks: Networks
    provider: Provider = field(repr=False)
    keep: bool = False
    base: Path = field(default_factory=Path.cwd, repr=False)

    # ── lifecycle ──────────────────────────────────────────────────────────

    def install(self, options: InstallOptions | None = None, *, on_event: Callable[[HostEvent], None] | None = None,
                on_build: Callable[[str], None] | None = None, strict: bool = True) -> InstallReport:
        """Install the tools and agents on every host (``playbooks/deploy.yml``); idempotent.

        Without ``options``, s2n-netbench is built (or taken from this machine's
        cache) as the config's ``install.netbench`` asks. ``strict`` raises
        ``HostsFailed`` naming each failed host, its task and message.
        """
        from enosnet.installer import install

        options = options or install_options(self.config, base=self.base, on_build=on_build)
        with self.env.lock("deploy"):
            return install(self.env, self.roles, options=options, on_event=on_event, strict=strict)

    def destroy(self) -> None:
        """Release every host and resource of the environment (idempotent)."""
        with self.env.lock("destroy"):
            self.provider.destroy()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if not self.keep:
            self.destroy()

    # ── on the hosts ───────────────────────────────────────────────────────

    def run(self, cmd: str, *, role: RoleSelector = None, **options: Any) -> Results[HostResult]:
        """``cmd`` on every host (of ``role``) over SSH; see ``enosnet.run_command`` for ``options``."""
        from enosnet.remote import run_command

        return run_command(cmd, roles=self.roles, role=role, env=self.env, **options)

    def push(self, files: Sequence[str | Path], remote_dir: str, *, role: RoleSelector = None,
             **options: Any) -> Results[HostResult]:
        """Copy local ``files`` into ``remote_dir`` on every host (of ``role``)."""
        from enosnet.remote import push

        return push(files, remote_dir, roles=self.roles, role=role, env=self.env, **options)

    def pull(self, remote_files: Sequence[str], local_dir: str | Path, *, role: RoleSelector = None,
             **options: Any) -> Results[HostResult]:
        """Copy ``remote_files`` from every host (of ``role``) into ``local_dir`` (``{host}`` in it)."""
        from enosnet.remote import pull

        return pull(remote_files, local_dir, roles=self.roles, role=role, env=self.env, **options)

    def actions(self, *, role: RoleSelector = None, **options: Any) -> AbstractContextManager[Actions]:
        """Ansible module calls collected in a ``with`` block and run as one play on every host (of ``role``)."""
        from enosnet.remote import actions

        return actions(roles=self.roles, role=role, env=self.env, **options)

    def playbook(self, path: str | Path, *, role: RoleSelector = None, **options: Any) -> AnsibleResults:
        """Run the playbook at ``path`` on every host (of ``role``)."""
        from enosnet.remote import run_playbook

        return run_playbook(path, roles=self.roles, role=role, env=self.env, **options)

    def netem(self, **options: Any) -> Netem:
        """Network emulation between this testbed's hosts: ``.between(...)``, ``.apply(env=testbed.env)``."""
        from enosnet.netem import Netem

        return Netem(self.roles, **options)

    # ── measuring ──────────────────────────────────────────────────────────

    def bench(self, experiment: Experiment | YamlSource, *, resume: bool = False, force: bool = False,
              only: Sequence[str] = (), on_event: Callable[[Event], None] | None = None) -> BenchResult:
        """Run an experiment (a path, YAML text, a mapping or an ``Experiment``) on these hosts."""
        from enosnet.bench import BenchOptions, run_experiment

        options = BenchOptions(resume=resume, force=force, only=tuple(only))
        return run_experiment(self.env, as_experiment(experiment), options=options, on_event=on_event,
                              roles=self.roles)

    def report(self, out_dir: str | Path | None = None, **options: Any) -> Report:
        """Statistics, plots and ``report.html`` of the latest experiment (see ``build_report``)."""
        from enosnet.results.report import build_report

        return build_report(self.env, out_dir, **options)

    def backup(self, *, s3: str | None = None, playbook: str | Path | None = None,
               hosts: bool = True) -> tuple[BackupResult, UploadResult | None]:
        """Back up results, runs and (with ``hosts``) host logs; with ``s3`` (``s3://bucket/prefix``) upload it."""
        from enosnet.results.backup import DEFAULT_PLAYBOOK, agent_keys, make_backup, playbook_collector
        from enosnet.results.s3 import S3Location, upload_backup

        location = S3Location.parse(s3) if s3 else None
        collect = playbook_collector(self.env, Path(playbook or DEFAULT_PLAYBOOK)) if hosts else None
        made = make_backup(self.env, collect_hosts=collect)
        uploaded = upload_backup(made.path, location, keep_out=agent_keys(self.env)) if location else None
        return made, uploaded


def install_options(config: EnvConfig, *, base: Path, netbench_dir: Path | None = None,
                    on_build: Callable[[str], None] | None = None) -> InstallOptions:
    """What ``install`` installs for ``config``: the agent on its port, and s2n-netbench when it asks for it."""
    from enosnet.installer import InstallOptions, build_netbench

    options = InstallOptions(agent_port=config.agent.port, netbench_dir=netbench_dir)
    if config.install.netbench is not None and netbench_dir is None:
        _, built = build_netbench(config.install.netbench, base=base, on_output=on_build)
        options = replace(built, agent_port=config.agent.port)
    return options


def acquire(config: EnvConfig | YamlSource, *, env: str | Path | Environment | None = None,
            keep: bool = False) -> Testbed:
    """Acquire the hosts ``config`` asks for (reusing what exists) without installing anything.

    When acquiring fails (or is interrupted), what was acquired is released
    unless ``keep``. The environment folder is ``env``, else ``.enosnet/<name>``.
    """
    from enosnet.providers import make_provider

    cfg = as_config(config)
    environment = env if isinstance(env, Environment) else Environment(env) if env else Environment.for_name(cfg.name)
    provider = make_provider(cfg, environment)
    provider.check()  # before the environment folder is made: a provider that cannot work here writes nothing
    with environment.lock("deploy"), _released_on_error(provider, keep=keep):
        roles, networks = provider.init()
    return Testbed(environment, cfg, roles, networks, provider, keep=keep, base=_config_folder(config))


def deploy(config: EnvConfig | YamlSource, *, env: str | Path | Environment | None = None, install: bool = True,
           keep: bool = False, on_event: Callable[[HostEvent], None] | None = None,
           on_build: Callable[[str], None] | None = None) -> Testbed:
    """Acquire the hosts, install the tools and agents (unless ``install=False``) and return the ``Testbed``.

    A failure anywhere releases everything (unless ``keep``); so does the end of
    a ``with`` block, also on error. s2n-netbench, when the config asks for it,
    is built before any host is acquired (once per machine; later deploys reuse it).
    """
    cfg, base = as_config(config), _config_folder(config)
    options = install_options(cfg, base=base, on_build=on_build) if install else None
    testbed = acquire(cfg, env=env, keep=keep)
    testbed.base = base
    if options is not None and testbed.provider.waits_for_ssh:
        with _released_on_error(testbed.provider, keep=keep):
            testbed.install(options, on_event=on_event)
    return testbed


def attach(env: str | Path | Environment | None = None) -> Testbed:
    """The ``Testbed`` of an environment deployed earlier (``env``, else ``.enosnet/current``); nothing is contacted.

    It is returned with ``keep=True``: leaving a ``with`` block does not release
    hosts someone else deployed; call ``destroy()`` for that.
    """
    from enosnet.config import EnvConfig
    from enosnet.providers import make_provider

    environment = env if isinstance(env, Environment) else Environment.find(env)
    state = environment.state()
    if state.config is None:
        raise EnosnetError(f"{environment.root}: nothing deployed here (no config in its state)")
    cfg = EnvConfig.model_validate(state.config)
    provider = make_provider(cfg, environment)
    # a deploy that failed part way (kept) has a config and no hosts yet: still attachable, to destroy it
    roles, networks = provider.hosts() if state.acquired else (Roles(), Networks())
    return Testbed(environment, cfg, roles, networks, provider, keep=True)


@contextmanager
def _released_on_error(provider: Provider, *, keep: bool) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        if keep:
            exc.add_note(f"kept what it acquired: release it with `enosnet destroy --env {provider.env.root}`")
            raise
        try:
            provider.destroy()
            exc.add_note("released what it had acquired")
        except EnosnetError as cleanup:
            exc.add_note(f"releasing what it had acquired failed too: {cleanup}")
        raise


__all__ = ["Testbed", "acquire", "as_config", "as_experiment", "attach", "deploy", "install_options"]

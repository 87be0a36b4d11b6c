"""A driver from another package: registered by an entry point, it runs with nothing in enosnet changed."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enosnet.bench import drivers
from enosnet.bench.runner import agent_access, run_experiment
from enosnet.bench.spec import parse_experiment
from enosnet.errors import ConfigError
from enosnet.results.store import ResultsStore
from enosnet.testing import start_agents_over_ssh

PLUGIN = Path(__file__).parent / "fixtures" / "plugin" / "enosnet_uptime_driver.py"


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plugin as pip would leave it: the module and a dist-info naming its entry point, on sys.path."""
    site = tmp_path / "site"
    info = site / "enosnet_uptime_driver-0.1.dist-info"
    info.mkdir(parents=True)
    shutil.copy(PLUGIN, site / PLUGIN.name)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: enosnet-uptime-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[enosnet.drivers]\nuptime = enosnet_uptime_driver:UptimeDriver\n")
    monkeypatch.syspath_prepend(str(site))
    drivers._registered.cache_clear()
    try:
        yield
    finally:
        drivers._registered.cache_clear()


def test_a_registered_driver_is_known_everywhere_and_an_unknown_one_is_named(installed_plugin: None) -> None:
    assert drivers.driver_names() == ["iperf3", "netbench", "uptime"]
    assert "uptime-read" in drivers.default_actions()  # the agents' catalogue holds its action
    spec = parse_experiment("name: u\ndriver: uptime\nparameters: {d: [1, 3]}\nuptime: {digits: '{d}'}\n")
    assert spec.driver_section({"d": 3}) == {"client_role": "client", "digits": 3}
    with pytest.raises(ConfigError, match=r"uptime: \{e\} names no parameter"):
        parse_experiment("name: u\ndriver: uptime\nuptime: {digits: '{e}'}\n")
    with pytest.raises(ConfigError, match="digits"):
        parse_experiment("name: u\ndriver: uptime\nuptime: {digits: [1]}\n")


def test_without_the_package_its_driver_and_section_are_unknown() -> None:
    with pytest.raises(ConfigError, match=r"unknown driver 'uptime' \(drivers: iperf3, netbench\)"):
        parse_experiment("name: u\ndriver: uptime\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:2 uptime.*unknown field"):
        parse_experiment("name: u\nuptime: {digits: 1}\n", "exp.yaml")


@pytest.mark.hosts
@pytest.mark.timeout(300)
def test_a_registered_driver_runs_on_local_hosts(installed_plugin: None, local_hosts: Callable[..., Any]) -> None:
    deployment = local_hosts({"client": 2}, name="plugin")
    access = agent_access(deployment.env)
    start_agents_over_ssh(deployment.roles, env_id=access.env_id, secret=access.secret, port=access.port,
                          actions=drivers.default_actions())
    spec = parse_experiment("name: up\ndriver: uptime\nduration: 1s\nrepetitions: 2\nuptime: {digits: 1}\n")
    result = run_experiment(deployment.env, spec)
    assert (result.done, result.failed) == (2, 0)
    with ResultsStore.open(deployment.env.db_file, create=False) as store:
        uptimes = [m for m in store.metrics(name="uptime")]
    assert len(uptimes) == 4 and {m.host for m in uptimes} == {"client-0", "client-1"}
    assert all(m.value > 0 and m.value == round(m.value, 1) for m in uptimes)

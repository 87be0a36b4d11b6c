"""A driver from another package: registered by an entry point, it runs with nothing in enosnet changed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import enosnet
from enosnet.bench import drivers
from enosnet.bench.spec import parse_experiment
from enosnet.errors import ConfigError
from enosnet.results.store import ResultsStore

PLUGIN = Path(__file__).parent / "fixtures" / "plugin" / "enosnet_uptime_driver.py"


@pytest.fixture
def installed_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The plugin as pip would leave it: the module and a dist-info naming its entry point, on sys.path."""
    site = tmp_path / "site"
    info = site / "enosnet_uptime_driver-0.1.dist-info"
    info.mkdir(parents=True)
    shutil.copy(PLUGIN, site / PLUGIN.name)
    shutil.copytree(PLUGIN.parent / "roles", site / "roles")
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
    roles, folders = drivers.tool_roles()  # and every deploy applies its role, found where the package keeps it
    assert roles == ["iperf3", "uptime_tool"] and [f.name for f in folders] == ["roles"]
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
@pytest.mark.timeout(600)
def test_a_registered_driver_is_installed_and_runs_on_local_hosts(installed_plugin: None, tmp_path: Path) -> None:
    """`enosnet.deploy` applies the plugin's role and gives the agents its action; `bench` runs it."""
    config = {"name": "plugin", "provider": {"kind": "local"}, "roles": {"client": 2}}
    with enosnet.deploy(config, env=tmp_path / "plugin") as testbed:
        marks = testbed.run("cat /var/lib/enosnet/uptime-tool")
        assert [r.stdout for r in marks.values()] == ["ready\n", "ready\n"]
        result = testbed.bench("name: up\ndriver: uptime\nduration: 1s\nrepetitions: 2\nuptime: {digits: 1}\n")
        assert (result.done, result.failed) == (2, 0)
        with ResultsStore.open(testbed.env.db_file, create=False) as store:
            uptimes = [m for m in store.metrics(name="uptime")]
    assert len(uptimes) == 4 and {m.host for m in uptimes} == {"client-0", "client-1"}
    assert all(m.value > 0 and m.value == round(m.value, 1) for m in uptimes)

"""Benchmark drivers: how each tool is installed, run and parsed, found by name.

A driver is a :class:`Driver` subclass. enosnet's own are listed in
``BUILTIN``; a package adds one with an entry point in the group
``enosnet.drivers`` (``mytool = "mypkg.driver:MyToolDriver"``). Nothing else
changes: the experiment's ``driver:`` and section, the agents' catalogue
(``default_actions``) and the install step all ask the registry
(``docs/drivers.md``).

>>> from enosnet.model import Roles
>>> make_driver("iperf3", Roles()).name, driver_names()[:2]
('iperf3', ['iperf3', 'netbench'])
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from enosnet.bench.drivers.base import Driver, Executed, Labelled, Measured
from enosnet.errors import ConfigError
from enosnet.model import Roles

BUILTIN = {"iperf3": "enosnet.bench.drivers.iperf3:Iperf3Driver",
           "netbench": "enosnet.bench.drivers.netbench:NetbenchDriver"}
GROUP = "enosnet.drivers"


@cache
def _registered() -> dict[str, str]:
    """Driver name → ``module:Class``: enosnet's own, then those of installed packages."""
    found = dict(BUILTIN)
    for point in entry_points(group=GROUP):
        found.setdefault(point.name, point.value)
    return found


def driver_names() -> list[str]:
    return list(_registered())


def driver_class(name: str) -> type[Driver[BaseModel]]:
    """The driver registered as ``name``; ``ConfigError`` naming the known ones otherwise."""
    target = _registered().get(name)
    if target is None:
        raise ConfigError(f"unknown driver {name!r} (drivers: {', '.join(driver_names())})")
    module, _, attr = target.partition(":")
    found = getattr(importlib.import_module(module), attr)
    if not (isinstance(found, type) and issubclass(found, Driver)):
        raise ConfigError(f"driver {name!r}: {target} is not an enosnet Driver")
    return found


def make_driver(name: str, roles: Roles, *, source: str | None = None) -> Driver[BaseModel]:
    """The driver called ``name`` for these hosts (``source``: the experiment file, for errors)."""
    return driver_class(name)(roles, source=source)


def tool_roles() -> tuple[list[str], list[Path]]:
    """The Ansible roles every deploy applies for the drivers' tools, and the extra folders they are in."""
    roles: list[str] = []
    folders: list[Path] = []
    for name in driver_names():
        driver = driver_class(name)
        if driver.installed_by_default and driver.install_role not in roles:
            roles.append(driver.install_role)
        if driver.roles_dir is not None and driver.roles_dir not in folders:
            folders.append(driver.roles_dir)
    return roles, folders


def default_actions(**options: Mapping[str, Any]) -> dict[str, Any]:
    """Every registered driver's agent actions: what the agents may run.

    ``options`` are per driver, e.g. ``netbench={"bin_dir": "/opt/nb"}``.
    """
    actions: dict[str, Any] = {}
    for name in driver_names():
        actions.update(driver_class(name).agent_actions(**dict(options.get(name, {}))))
    return actions


__all__ = ["BUILTIN", "Driver", "Executed", "Labelled", "Measured", "default_actions", "driver_class",
           "driver_names", "make_driver", "tool_roles"]

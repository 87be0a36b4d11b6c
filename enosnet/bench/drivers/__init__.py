"""Benchmark drivers: how each tool is laid out on hosts, run and parsed.

>>> from enosnet.model import Roles
>>> make_driver("iperf3", Roles()).name
'iperf3'
"""

from __future__ import annotations

from enosnet.bench.drivers.base import Driver, Executed, Labelled, Measured
from enosnet.errors import ConfigError
from enosnet.model import Roles

DRIVERS = ("iperf3", "netbench")


def make_driver(name: str, roles: Roles, *, source: str | None = None) -> Driver:
    """The driver called ``name`` for these hosts (``source``: the experiment file, for errors)."""
    if name == "iperf3":
        from enosnet.bench.drivers.iperf3 import Iperf3Driver

        return Iperf3Driver(roles, source=source)
    if name == "netbench":
        from enosnet.bench.drivers.netbench import NetbenchDriver

        return NetbenchDriver(roles, source=source)
    raise ConfigError(f"unknown driver {name!r} (drivers: {', '.join(DRIVERS)})")


__all__ = ["DRIVERS", "Driver", "Executed", "Labelled", "Measured", "make_driver"]

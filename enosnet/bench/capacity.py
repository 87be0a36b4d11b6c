"""Has this machine the cores for what an experiment asks of its local hosts? Answered before anything runs.

Local hosts share the machine's CPUs: when the flows of a run need more cores
than there are, the numbers measure the CPUs, not the network. The estimate
counts the threads each host keeps busy in the most demanding run (a sending
flow, a receiving flow: one core each), capped by each host's ``cpus`` limit,
and compares the total with the cores the hosts may use.

>>> print(advice(Capacity(demand=8.0, cores=2, hosts=5, flows=4)))
the busiest run keeps about 8 threads busy on 5 hosts (4 flows at once) but the hosts share 2 cores: \
throughput will measure the CPUs, not the network. Run fewer parallel flows or clients, or give each \
host a fair share with a role's `cpus:` limit (e.g. roles: {client: {count: 4, cpus: 0.5}}) and compare \
rates, not totals
>>> advice(Capacity(demand=2.0, cores=2, hosts=2, flows=1)) is None
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from enosnet.bench.drivers import make_driver
from enosnet.bench.plan import make_plan
from enosnet.bench.spec import Experiment
from enosnet.model import Roles
from enosnet.providers.cgroups import parse_cpu_list

if TYPE_CHECKING:
    from enosnet.testbed import Testbed


@dataclass(frozen=True)
class Capacity:
    """What the busiest run asks (threads, capped by limits) and what the hosts have (cores)."""

    demand: float
    cores: int
    hosts: int
    flows: int


def estimate(spec: Experiment, roles: Roles, *, cpus: Mapping[str, float | None] | None = None,
             cores: int | None = None) -> Capacity:
    """The busiest run of ``spec`` on ``roles``; ``cpus``: each host's CPU limit (None: none)."""
    driver = make_driver(spec.driver, roles, source=spec.source_path)
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    worst = Capacity(0.0, cores, 0, 0)
    for run in make_plan(spec).runs:
        section = driver.section(spec.driver_section(run.params))
        try:
            busy = driver.busy_threads(section)
        except KeyError:  # a role the environment lacks: the bench's own checks say so
            continue
        demand = sum(min(float(n), (cpus or {}).get(h.name) or float(n)) for h, n in busy.items())
        if demand > worst.demand:
            clients = str(getattr(section, "client_role", "client"))
            flows = sum(n for h, n in busy.items() if h in roles.select(clients))
            worst = Capacity(demand, cores, len(busy), flows)
    return worst


def for_local_testbed(spec: Experiment, testbed: Testbed) -> Capacity | None:
    """The estimate on a local testbed's hosts, with their ``cpus`` limits and, when all are pinned, their cores."""
    if testbed.config.kind != "local" or not testbed.roles.all():
        return None
    limits = {h["alias"]: h.get("limits", {}) for h in testbed.provider.provider_state.get("hosts", [])}
    pinned = [set(parse_cpu_list(str(lim["cpuset"]))) for lim in limits.values() if lim.get("cpuset")]
    cores = len(set().union(*pinned)) if pinned and len(pinned) == len(limits) else None
    return estimate(spec, testbed.roles, cpus={a: lim.get("cpus") for a, lim in limits.items()}, cores=cores)


def advice(capacity: Capacity) -> str | None:
    """A warning when the busiest run needs more cores than the hosts have (None: it fits)."""
    if capacity.demand <= capacity.cores:
        return None
    return (f"the busiest run keeps about {capacity.demand:g} threads busy on {capacity.hosts} hosts "
            f"({capacity.flows} flows at once) but the hosts share {capacity.cores} cores: throughput will "
            "measure the CPUs, not the network. Run fewer parallel flows or clients, or give each host a fair "
            "share with a role's `cpus:` limit (e.g. roles: {client: {count: 4, cpus: 0.5}}) and compare rates, "
            "not totals")

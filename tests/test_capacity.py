"""The dry run's capacity estimate: threads the busiest run keeps busy against the cores the hosts have."""

from __future__ import annotations

from enosnet.bench.capacity import advice, estimate
from enosnet.bench.spec import parse_experiment
from enosnet.model import Host, Roles

ROLES = Roles({"server": [Host("198.18.0.2", alias="server-0")],
               "client": [Host(f"198.18.0.{3 + i}", alias=f"client-{i}") for i in range(4)]})
SWEEP = "name: x\nduration: 1s\nparameters: {p: [1, 4]}\niperf3: {parallel: '{p}'}\n"


def test_the_busiest_run_counts_every_flow_and_its_receiver() -> None:
    capacity = estimate(parse_experiment(SWEEP), ROLES, cores=2)
    assert (capacity.demand, capacity.flows, capacity.hosts) == (32.0, 16, 5)  # 4 clients × 4 flows, received once
    assert advice(capacity) is not None and "16 flows at once" in str(advice(capacity))


def test_cpu_limits_cap_what_a_host_can_ask_and_enough_cores_give_no_warning() -> None:
    limited = {f"client-{i}": 0.25 for i in range(4)} | {"server-0": 1.0}
    capacity = estimate(parse_experiment(SWEEP), ROLES, cpus=limited, cores=2)
    assert capacity.demand == 2.0 and advice(capacity) is None
    single = parse_experiment("name: y\nduration: 1s\niperf3: {}\n")
    assert estimate(single, Roles({"server": ROLES["server"], "client": ROLES["client"][:1]}), cores=2).demand == 2.0

"""Network emulation from Python: constraints per interface, per destination, and between role groups.

A ``Netem`` collects constraints (``enosnet.emulation.Constraint``, the one
model and grammar) and turns them into the ``netem`` role's variables per host;
``apply``, ``clear`` and ``show`` run ``playbooks/netem.yml`` and
``playbooks/netem-clear.yml``, whose module hands them to the emulation engine
on each host — the same engine a bench run's conditions use; ``validate`` pings
between the constrained hosts and reports the measured RTT next to the
requested one.

A delay is one-way, on the sending host's egress: ``between("client", "server",
delay 20ms)`` delays each direction, so the RTT between them grows by 40 ms;
``symmetric=False`` constrains only client → server (RTT + 20 ms).

>>> from enosnet.model import Host, Roles
>>> roles = Roles({"client": [Host("198.18.0.3", alias="client-0")], "server": [Host("198.18.0.2", alias="server-0")]})
>>> plan = Netem(roles).between("client", "server", Constraint(delay="10ms", loss="0.5%")).plan()
>>> plan["client-0"]["netem_destinations"]
[{'device': 'eth0', 'dest': '198.18.0.2', 'delay': '10ms', 'loss': '0.5%'}]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from enosnet.emulation import Constraint
from enosnet.emulation.rtt import Ping, parse_pings, ping_script
from enosnet.environment import Environment
from enosnet.errors import ConfigError, RemoteError
from enosnet.model import Host, Roles
from enosnet.remote import AnsibleResults, HostEvent, actions, bundled, run_playbook

PLAYBOOKS = bundled()
Listener = Callable[[HostEvent], None]
__all__ = ["Constraint", "Netem", "RttCheck", "clear", "from_spec", "measure_rtt", "show"]


@dataclass(frozen=True)
class RttCheck:
    """One pair of hosts: the RTT and loss that were asked for next to what ping measured."""

    source: str
    target: str
    address: str
    requested_ms: float
    measured_ms: float | None
    requested_loss: float
    measured_loss: float
    sent: int

    @property
    def extra_ms(self) -> float | None:
        """Measured minus requested (positive: slower than asked; includes the link's own RTT)."""
        return None if self.measured_ms is None else self.measured_ms - self.requested_ms

    def __repr__(self) -> str:
        got = "no reply" if self.measured_ms is None else f"{self.measured_ms:.2f} ms"
        return (f"RttCheck({self.source} → {self.target}: asked +{self.requested_ms:g} ms, got {got}, "
                f"loss asked {self.requested_loss:.2f}%, got {self.measured_loss:.2f}%)")


@dataclass
class _HostPlan:
    interface: Constraint = field(default_factory=Constraint)
    ingress: Constraint = field(default_factory=Constraint)
    destinations: dict[str, Constraint] = field(default_factory=dict)


class Netem:
    """Constraints on the hosts of ``roles``, applied through the ``netem`` role.

    Targets are role names or host names; ``device`` is the interface the hosts
    send on (``eth0`` on local hosts).
    """

    def __init__(self, roles: Roles, *, device: str = "eth0") -> None:
        Constraint(device=device)  # checks the name
        self.roles = roles
        self.device = device
        self._plans: dict[Host, _HostPlan] = {}
        self._pairs: list[tuple[Host, Host]] = []

    def _hosts(self, target: str) -> tuple[Host, ...]:
        if target in self.roles:
            return self.roles[target]
        try:
            return (self.roles.find(target),)
        except KeyError:
            raise ConfigError(f"{target!r}: neither a role ({', '.join(self.roles)}) nor a host name") from None

    def _plan(self, host: Host) -> _HostPlan:
        return self._plans.setdefault(host, _HostPlan())

    def interface(self, target: str, constraint: Constraint, *, ingress: Constraint | None = None) -> Netem:
        """Constrain everything ``target``'s hosts send (and, with ``ingress``, receive)."""
        for shape in (constraint, ingress):
            if shape is not None and shape.destination is not None:
                raise ConfigError(f"interface({target!r}): a constraint on all traffic has no destination, got "
                                  f"{shape.destination!r} (use between)")
        for host in self._hosts(target):
            plan = self._plan(host)
            plan.interface, plan.ingress = constraint, ingress or Constraint()
        return self

    def between(self, source: str, target: str, constraint: Constraint, *, symmetric: bool = True) -> Netem:
        """Constrain traffic from ``source``'s hosts to ``target``'s (and back, when ``symmetric``)."""
        directions = [(source, target), (target, source)] if symmetric else [(source, target)]
        for a, b in directions:
            for src in self._hosts(a):
                for dst in self._hosts(b):
                    if src != dst:
                        self._plan(src).destinations[dst.address] = constraint
                        self._pairs.append((src, dst))
        return self

    def matrix(self, pairs: Mapping[tuple[str, str], Constraint]) -> Netem:
        """Several ``between`` at once: ``{("client", "server"): Constraint(delay="20ms"), ...}``."""
        for (source, target), constraint in pairs.items():
            self.between(source, target, constraint)
        return self

    def plan(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The ``netem`` role's variables per host name (every host of ``roles``; empty clears)."""
        return {host.name: self._host_vars(host) for host in self.roles.all()}

    def _host_vars(self, host: Host) -> dict[str, list[dict[str, Any]]]:
        plan = self._plans.get(host, _HostPlan())
        interfaces: list[dict[str, Any]] = []
        if plan.interface or plan.ingress:
            entry: dict[str, Any] = {"device": self.device, **plan.interface.impairments()}
            if plan.ingress:
                entry["ingress"] = plan.ingress.impairments()
            interfaces.append(entry)
        destinations = [{"device": self.device, "dest": address, **c.impairments()}
                        for address, c in plan.destinations.items() if c]
        return {"netem_interfaces": interfaces, "netem_destinations": destinations}

    def _targets(self) -> Roles:
        plans = self.plan()
        return Roles({role: [h.with_extra(**plans[h.name]) for h in hosts] for role, hosts in self.roles.items()})

    def apply(self, *, env: Environment | None = None, on_event: Listener | None = None) -> AnsibleResults:
        """Make every host's emulation exactly the plan (hosts without constraints are cleared).

        Returns the per-host Ansible results; raises ``HostsFailed`` naming the
        hosts whose tc commands failed, with tc's message.
        """
        return _playbook("netem.yml", self._targets(), {}, env, on_event)

    def clear(self, *, env: Environment | None = None, on_event: Listener | None = None) -> AnsibleResults:
        """Remove exactly what the netem role applied on every host."""
        return clear(self.roles, env=env, on_event=on_event)

    def show(self, *, env: Environment | None = None) -> dict[str, dict[str, str]]:
        """Host name → device → ``tc qdisc show`` text of what the netem role applied."""
        return show(self.roles, env=env)

    def expected(self, a: Host, b: Host) -> tuple[float, float]:
        """Requested extra RTT (ms) and loss (%) between ``a`` and ``b``, both directions summed."""
        there, back = self._one_way(a, b), self._one_way(b, a)
        loss = 100 * (1 - (1 - there[1] / 100) * (1 - back[1] / 100))
        return there[0] + back[0], loss

    def _one_way(self, src: Host, dst: Host) -> tuple[float, float]:
        """Delay (ms) and loss (%) from ``src`` to ``dst``: src's egress, then dst's ingress."""
        plan, far = self._plans.get(src, _HostPlan()), self._plans.get(dst, _HostPlan())
        out = plan.destinations.get(dst.address, plan.interface)
        keep = (1 - out.loss_fraction) * (1 - far.ingress.loss_fraction)
        return 1000 * (out.delay_s + far.ingress.delay_s), 100 * (1 - keep)

    def pairs(self) -> list[tuple[Host, Host]]:
        """The host pairs ``validate`` checks: every constrained pair once, in either order."""
        seen: dict[frozenset[Host], tuple[Host, Host]] = {}
        for a, b in self._pairs:
            seen.setdefault(frozenset((a, b)), (a, b))
        others = list(self.roles.all())
        for host, plan in self._plans.items():
            if plan.interface or plan.ingress:
                peer = next((o for o in others if o != host), None)
                if peer is not None:
                    seen.setdefault(frozenset((host, peer)), (host, peer))
        return list(seen.values())

    def validate(self, *, count: int = 20, interval: float = 0.2, env: Environment | None = None,
                 pairs: Iterable[tuple[Host, Host]] | None = None) -> list[RttCheck]:
        """Ping every constrained pair and report the measured RTT and loss next to the requested ones."""
        chosen = list(pairs) if pairs is not None else self.pairs()
        measured = measure_rtt(chosen, count=count, interval=interval, env=env)
        checks = []
        for (a, b), ping in zip(chosen, measured, strict=True):
            requested_ms, requested_loss = self.expected(a, b)
            rtt = None if ping.rtt_s is None else ping.rtt_s * 1000
            checks.append(RttCheck(a.name, b.name, b.address, requested_ms, rtt, requested_loss,
                                   100.0 * ping.loss, ping.sent))
        return checks


def from_spec(roles: Roles, spec: Mapping[str, Any], *, where: str = "netem spec") -> Netem:
    """A ``Netem`` from a spec document (what ``enosnet netem apply FILE`` reads)::

        device: eth0
        interfaces:
          - {hosts: client, rate: 100mbit, ingress: {rate: 50mbit}}
        between:
          - {from: client, to: server, delay: 10ms, loss: 0.5%}   # symmetric unless symmetric: false

    >>> from enosnet.model import Host
    >>> r = Roles({"a": [Host("198.18.0.2", alias="a-0")], "b": [Host("198.18.0.3", alias="b-0")]})
    >>> from_spec(r, {"between": [{"from": "a", "to": "b", "delay": "5ms"}]}).expected(*r.all())
    (10.0, 0.0)
    """
    unknown = set(spec) - {"device", "interfaces", "between"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))} (expected device, interfaces, between)")
    netem = Netem(roles, device=str(spec.get("device", "eth0")))
    for i, item in enumerate(spec.get("interfaces") or []):
        at = f"{where} interfaces[{i}]"
        entry = _entry(item, at, {"hosts", "ingress"})
        ingress = _constraint(entry.pop("ingress", None) or {}, f"{at}.ingress")
        netem.interface(_target(entry.pop("hosts", None), f"{at}.hosts"), _constraint(entry, at), ingress=ingress)
    for i, item in enumerate(spec.get("between") or []):
        at = f"{where} between[{i}]"
        entry = _entry(item, at, {"from", "to", "symmetric"})
        source, target = _target(entry.pop("from", None), f"{at}.from"), _target(entry.pop("to", None), f"{at}.to")
        symmetric = bool(entry.pop("symmetric", True))
        netem.between(source, target, _constraint(entry, at), symmetric=symmetric)
    return netem


def _entry(item: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {item!r}")
    unknown = set(item) - keys - {"delay", "jitter", "loss", "rate"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    return dict(item)


def _target(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: give a role or host name")
    return value


def _constraint(entry: Mapping[str, Any], where: str) -> Constraint:
    return Constraint.from_mapping({k: v if v is None or k in ("limit", "port") else str(v) for k, v in entry.items()},
                                   where)


def clear(roles: Roles, *, env: Environment | None = None, on_event: Listener | None = None) -> AnsibleResults:
    """Remove exactly what the netem role applied on every host of ``roles``."""
    return _playbook("netem-clear.yml", roles, {}, env, on_event)


def show(roles: Roles, *, env: Environment | None = None) -> dict[str, dict[str, str]]:
    """Host name → device → ``tc qdisc show`` text of what the netem role applied (empty: nothing)."""
    results = _playbook("netem.yml", roles, {"netem_state": "query"}, env, None)
    out: dict[str, dict[str, str]] = {}
    for host, result in results.items():
        data = next((t.data for t in result.tasks if t.action.endswith("enosnet_netem")), {})
        out[host.name] = dict(data.get("tc") or {})
    return out


def measure_rtt(pairs: Iterable[tuple[Host, Host]], *, count: int = 20, interval: float = 0.2,
                env: Environment | None = None) -> list[Ping]:
    """Ping from the first host of each pair to the second, one ``Ping`` per pair.

    Every source pings all its targets at once, in one task (``emulation.rtt``'s script, bounded by ping's
    own deadline).
    """
    chosen = list(pairs)
    targets: dict[Host, list[str]] = {}
    for a, b in chosen:
        targets.setdefault(a, []).append(b.address)
    sources = [host.with_extra(enosnet_ping_targets=addresses) for host, addresses in targets.items()]
    script = ping_script(count=count, interval=interval)
    with actions(roles=sources, env=env, strict=False) as block:
        block.command(argv="{{ ['sh', '-c', " + repr(script) + ", 'ping'] + enosnet_ping_targets }}", task_name="ping")
    assert block.results is not None
    outputs: dict[str, dict[str, Ping]] = {}
    for src, result in block.results.items():
        if not result.ok:
            raise RemoteError(f"ping from {src.name} failed: {result.message}")
        outputs[src.name] = parse_pings(str(result.task("ping").data.get("stdout", "")))
    return [outputs.get(a.name, {}).get(b.address, Ping()) for a, b in chosen]


def _playbook(name: str, roles: Roles, extra_vars: Mapping[str, Any], env: Environment | None,
              on_event: Listener | None) -> AnsibleResults:
    return run_playbook(PLAYBOOKS / name, roles=roles, extra_vars=dict(extra_vars), env=env, on_event=on_event)

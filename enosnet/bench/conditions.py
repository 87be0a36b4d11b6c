"""Emulated network conditions for one run between two groups of roles, applied and cleared by the engine.

A run's ``netem:`` section names two groups and one shape (delay, jitter,
loss, rate). Each host of one group gets that shape toward each peer of the
other group (both ways when ``symmetric``: the round trip then grows by twice
the delay), and hands it to the emulation engine on the host
(``enosnet.emulation``) — the same engine, the same qdiscs and the same state
folder as ``enosnet netem`` and the ``netem`` role.

>>> conditions = Conditions.from_section({"between": ["client", "server"], "delay": "20ms"})
>>> conditions.expected_extra_rtt_s, conditions.label
(0.04, 'delay 20ms')
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enosnet import emulation
from enosnet.emulation import Constraint
from enosnet.errors import ConfigError
from enosnet.model import Host, Roles
from enosnet.remote.results import HostResult
from enosnet.remote.session import Session, gather

STATS_KEY = "emulation.stats"  # host metadata of a run: the engine's `show` (its counters) just before clearing


@dataclass(frozen=True)
class Conditions:
    """What happens to the traffic between ``between[0]`` and ``between[1]``."""

    between: tuple[str, str]
    shape: Constraint
    symmetric: bool = True

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> Conditions:
        between = tuple(section["between"])
        if len(between) != 2:
            raise ConfigError("netem.between: give two roles, e.g. [client, server]")
        knobs = {k: str(section[k]) for k in ("delay", "jitter", "loss", "rate") if section.get(k) not in (None, "")}
        shape = Constraint.from_mapping(knobs, "netem")
        return cls((str(between[0]), str(between[1])), shape, symmetric=bool(section.get("symmetric", True)))

    @property
    def expected_extra_rtt_s(self) -> float:
        """How much these conditions add to the round trip between the groups."""
        return round(self.shape.delay_s * (2 if self.symmetric else 1), 9)

    @property
    def loss_fraction(self) -> float:
        """The asked loss as a fraction (``"1%"`` → 0.01)."""
        return self.shape.loss_fraction

    @property
    def active(self) -> bool:
        return bool(self.shape)

    @property
    def label(self) -> str:
        return self.shape.label()

    def hosts(self, roles: Roles) -> list[Host]:
        """Every host of the two groups (each may hold emulation to clear)."""
        a, b = (roles.select(r) for r in self.between)
        return list(dict.fromkeys([*a, *b]))

    def plan(self, roles: Roles) -> dict[Host, list[Constraint]]:
        """Per host of the two groups, its constraints (none: cleared)."""
        a, b = (roles.select(r) for r in self.between)
        placed = emulation.place(self.shape, a, b, symmetric=self.symmetric) if self.active else {}
        return {host: placed.get(host, []) for host in self.hosts(roles)}


class Emulation:
    """Applies and clears ``Conditions`` on the hosts through the emulation engine, over the run's session.

    The engine is copied to a host once, the first time it is needed there; it picks netem qdiscs where
    the kernel has them and its userspace queue where not (``backend`` says which, once it applied).
    """

    def __init__(self, session: Session, roles: Roles) -> None:
        self.session, self.roles = session, roles
        self.backend: str | None = None
        self._installed: set[str] = set()

    def apply(self, conditions: Conditions) -> None:
        """Put ``conditions`` in place (an inactive one clears); raises ``RemoteError`` naming failed hosts."""
        plan = conditions.plan(self.roles)
        shown = self._each(list(plan), lambda h: self._apply(h, plan[h]), "applying emulation")
        backends = {str((s.get("config") or {}).get("backend")) for s in shown.values() if s.get("applied")}
        if backends:
            self.backend = "/".join(sorted(backends))

    def clear(self, conditions: Conditions) -> None:
        self._each(conditions.hosts(self.roles), lambda h: emulation.clear(self._target(h)), "clearing emulation")

    def clear_lines(self, conditions: Conditions) -> dict[Host, str]:
        """Per host, a shell line that prints the engine's ``show`` (``emulation.stats=<JSON>``, for the fidelity
        check) and clears; run inside the after-run command."""
        return {h: self._clear_line(h) for h in conditions.hosts(self.roles)}

    def _apply(self, host: Host, constraints: list[Constraint]) -> dict[str, Any]:
        target = self._target(host)
        if not constraints:
            emulation.clear(target)
            return {}
        shown = emulation.apply(target, constraints, copy=host.name not in self._installed)
        self._installed.add(host.name)
        return shown

    def _clear_line(self, host: Host) -> str:
        target = self._target(host)
        show = emulation.show_argv(python=target.python, path=target.path, state_dir=target.state_dir)
        clear = emulation.clear_argv(python=target.python, path=target.path, state_dir=target.state_dir)
        return (f"test ! -e {shlex.quote(target.path)} || {{ printf '\\n{STATS_KEY}='; {shlex.join(show)} "
                f"| tr -d '\\n'; echo; {shlex.join(clear)}; }}")

    def _target(self, host: Host) -> emulation.Target:
        python = str(host.extra.get("ansible_python_interpreter", "python3"))
        return emulation.Target(self._runner(host), name=host.name, python=python)

    def _runner(self, host: Host) -> emulation.Runner:
        def run(argv: Sequence[str], *, stdin: bytes | None = None) -> HostResult:
            return self.session.run(host, shlex.join(argv), stdin=stdin, timeout=60)

        return run

    def _each(self, hosts: Sequence[Host], step: Callable[[Host], Any], what: str) -> dict[Host, Any]:
        return gather(hosts, step, what, name=lambda h: h.name)

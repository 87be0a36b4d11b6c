"""Emulated network conditions for one run: tc netem between two groups of roles, applied and cleared.

On each host of one group, traffic to the other group's addresses goes
through a netem qdisc (a ``prio`` root whose third band holds netem; u32
filters on the destination address send the peers' traffic there), so only
the traffic between the groups is delayed. With ``symmetric`` both groups
delay their traffic toward the other: the round trip grows by twice the delay.

>>> conditions = Conditions.from_section({"between": ["client", "server"], "delay": "20ms"})
>>> conditions.expected_extra_rtt_s
0.04
>>> conditions.netem_args()
['delay', '20ms']
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from enosnet import emulation
from enosnet.bench.hostio import Shell, fan_out
from enosnet.bench.spec import parse_seconds
from enosnet.errors import ConfigError, EnosnetError, RemoteError
from enosnet.model import Host, Roles

STATS_KEY = "emulation.stats"  # host metadata of a run: impaird's counters (JSON) just before it was cleared
NETEM_LIMIT = 100_000  # packets: the default 1000 drops at tens of Gbit/s × tens of ms


@dataclass(frozen=True)
class Conditions:
    """What netem does between ``between[0]`` and ``between[1]``."""

    between: tuple[str, str]
    delay: str | None = None
    jitter: str | None = None
    loss: str | None = None
    rate: str | None = None
    symmetric: bool = True

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> Conditions:
        between = tuple(section["between"])
        if len(between) != 2:
            raise ConfigError("netem.between: give two roles, e.g. [client, server]")
        fields = {k: None if section.get(k) in (None, "") else str(section[k]) for k in ("delay", "jitter", "loss",
                                                                                      "rate")}
        made = cls((str(between[0]), str(between[1])), symmetric=bool(section.get("symmetric", True)), **fields)
        made.netem_args()  # validates
        return made

    @property
    def delay_s(self) -> float:
        return parse_seconds(self.delay) if self.delay else 0.0

    @property
    def expected_extra_rtt_s(self) -> float:
        """How much these conditions add to the round trip between the groups."""
        return round(self.delay_s * (2 if self.symmetric else 1), 9)

    @property
    def loss_fraction(self) -> float:
        """The asked loss as a fraction (``"1%"`` → 0.01)."""
        return float(_percent(self.loss).rstrip("%")) / 100 if self.loss else 0.0

    @property
    def active(self) -> bool:
        return any((self.delay_s > 0, self.jitter, self.loss and self.loss.rstrip("%") not in ("0", "0.0"), self.rate))

    def netem_args(self) -> list[str]:
        args: list[str] = []
        if self.delay_s > 0 or self.jitter:
            args += ["delay", _time(self.delay or "0ms", "delay")]
            if self.jitter:
                args.append(_time(self.jitter, "jitter"))
        if self.loss:
            args += ["loss", _percent(self.loss)]
        if self.rate:
            args += ["rate", _token(self.rate, "rate")]
        return args

    def commands(self, roles: Roles) -> dict[Host, str]:
        """The shell line that applies these conditions on each host concerned."""
        a, b = (roles.select(r) for r in self.between)
        plan: dict[Host, list[Host]] = {h: [p for p in b if p != h] for h in a}
        if self.symmetric:
            for h in b:
                plan.setdefault(h, []).extend(p for p in a if p != h and p not in plan.get(h, []))
        return {host: apply_line(host, peers, self.netem_args()) for host, peers in plan.items() if peers}


def _time(text: str, what: str) -> str:
    try:
        seconds = parse_seconds(text)
    except ValueError:
        raise ConfigError(f"netem.{what}: {text!r} is not a duration such as 20ms") from None
    return f"{seconds * 1000:g}ms"


def _percent(text: str) -> str:
    value = text.rstrip("%").strip()
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"netem.loss: {text!r} is not a percentage such as 1%") from None
    if not 0 <= number <= 100:
        raise ConfigError(f"netem.loss: {text!r} is outside 0-100 %")
    return f"{number:g}%"


def _token(text: str, what: str) -> str:
    if not text.replace(".", "").isalnum():
        raise ConfigError(f"netem.{what}: {text!r} is not a rate such as 100mbit")
    return text


def _device_line(peer: Host) -> str:
    return f"dev=$(ip -o route get {shlex.quote(peer.address)} | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')"


def apply_line(host: Host, peers: Sequence[Host], netem: Sequence[str]) -> str:
    """Replace the root qdisc of the interface toward ``peers`` with prio + netem for their addresses."""
    if not netem:
        return clear_line(peers)
    lines = [_device_line(peers[0]), "tc qdisc del dev $dev root 2>/dev/null || true",
             "tc qdisc add dev $dev root handle 1: prio bands 3 priomap 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",
             f"tc qdisc add dev $dev parent 1:3 handle 30: netem limit {NETEM_LIMIT} {' '.join(netem)}"]
    lines += [f"tc filter add dev $dev parent 1: protocol ip prio 1 u32 match ip dst {p.address}/32 flowid 1:3"
              for p in peers]
    return "set -e; " + "; ".join(lines)


def clear_line(peers: Sequence[Host]) -> str:
    """Put the interface toward ``peers`` back to its default qdisc."""
    return f"{_device_line(peers[0])}; tc qdisc del dev $dev root 2>/dev/null; true"


def apply(shell: Shell, roles: Roles, conditions: Conditions) -> None:
    """Apply ``conditions`` on every host concerned; raises ``RemoteError`` naming hosts that failed."""
    commands = conditions.commands(roles) if conditions.active else clear_commands(roles, conditions)
    _check(shell.run_all(commands, timeout=30), "applying netem")


def clear(shell: Shell, roles: Roles, conditions: Conditions) -> None:
    """Remove what ``apply`` put in place."""
    _check(shell.run_all(clear_commands(roles, conditions), timeout=30), "clearing netem")


def clear_commands(roles: Roles, conditions: Conditions) -> dict[Host, str]:
    a, b = (roles.select(r) for r in conditions.between)
    out = {h: clear_line([p for p in b if p != h] or [h]) for h in a}
    out.update({h: clear_line([p for p in a if p != h] or [h]) for h in b if h not in out})
    return out


def _check(results: Mapping[Host, Any], what: str) -> None:
    failed = {h.name: r.stderr.strip()[-200:] for h, r in results.items() if not r.ok}
    if failed:
        detail = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
        hint = ""
        if "qdisc kind is unknown" in detail:
            hint = " (this kernel has no netem qdisc: load it with `modprobe sch_netem`, or use a kernel built " \
                   "with CONFIG_NET_SCH_NETEM)"
        raise RemoteError(f"{what} failed on {len(failed)} host(s): {detail}{hint}")


Backend = Literal["netem", "nfqueue"]


class Emulation:
    """Applies and clears ``Conditions`` on the hosts: tc netem where the kernel has it, else impaird.

    impaird (``enosnet.emulation``) emulates delay, jitter, loss and rate in userspace through NFQUEUE on
    kernels built without netem; it goes through the same SSH channels. The backend is probed once, on
    the first host concerned, when first needed.
    """

    def __init__(self, shell: Shell, roles: Roles, *, backend: Backend | None = None) -> None:
        self.shell, self.roles = shell, roles
        self._backend = backend
        self._installed: set[str] = set()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            host = self.roles.all()[0]
            self._backend = "netem" if emulation.kernel_has_netem(self._runner(host)) else "nfqueue"
        return self._backend

    def apply(self, conditions: Conditions) -> None:
        """Put ``conditions`` in place (an inactive one clears); raises ``RemoteError`` naming failed hosts."""
        if not conditions.active:
            self.clear(conditions)
        elif self.backend == "netem":
            apply(self.shell, self.roles, conditions)
        else:
            plan = self._plan(conditions)
            self._each(list(plan), lambda h: self._impaird_apply(h, plan[h]), "applying emulation")

    def clear(self, conditions: Conditions) -> None:
        if self.backend == "netem":
            clear(self.shell, self.roles, conditions)
        else:
            self._each(list(self._plan(conditions)), lambda h: emulation.clear(self._target(h)),
                       "clearing emulation")

    def clear_lines(self, conditions: Conditions) -> dict[Host, str]:
        """A shell line per host that clears ``conditions`` (run inside the after-run command)."""
        if self.backend == "netem":
            return clear_commands(self.roles, conditions)
        return {h: self._impaird_clear_line(h) for h in self._plan(conditions)}

    def _plan(self, conditions: Conditions) -> dict[Host, list[emulation.Constraint]]:
        a, b = (self.roles.select(r) for r in conditions.between)
        delay = _time(conditions.delay or "0ms", "delay") if conditions.delay_s > 0 or conditions.jitter else None
        return emulation.between(a, b, symmetric=conditions.symmetric, delay=delay,
                                 jitter=_time(conditions.jitter, "jitter") if conditions.jitter else None,
                                 loss=_percent(conditions.loss) if conditions.loss else None,
                                 rate=conditions.rate)

    def _impaird_apply(self, host: Host, constraints: list[emulation.Constraint]) -> None:
        emulation.apply(self._target(host), constraints, copy=host.name not in self._installed)
        self._installed.add(host.name)

    def _impaird_clear_line(self, host: Host) -> str:
        """Print impaird's counters of the run (``emulation.stats=<JSON>``, for the fidelity check), then clear."""
        target = self._target(host)
        show = emulation.show_argv(python=target.python, path=target.path, state_dir=target.state_dir)
        clear = emulation.clear_argv(python=target.python, path=target.path, state_dir=target.state_dir)
        return (f"test ! -e {shlex.quote(target.path)} || {{ printf '\\n{STATS_KEY}='; {shlex.join(show)} "
                f"| tr -d '\\n'; echo; {shlex.join(clear)}; }}")

    def _target(self, host: Host) -> emulation.Target:
        python = str(host.extra.get("ansible_python_interpreter", "python3"))
        return emulation.Target(self._runner(host), name=host.name, python=python)

    def _runner(self, host: Host) -> emulation.Runner:
        def run(argv: Sequence[str], *, stdin: bytes | None = None) -> emulation.CommandOutput:
            out = self.shell.run(host, shlex.join(argv), stdin=stdin, timeout=60)
            return emulation.CommandOutput(out.rc, out.text, out.stderr)

        return run

    def _each(self, hosts: Sequence[Host], step: Callable[[Host], Any], what: str) -> None:
        def guarded(host: Host) -> str | None:
            try:
                step(host)
            except EnosnetError as exc:
                return str(exc)
            return None

        failed = {h.name: why for h, why in fan_out(hosts, guarded).items() if why}
        if failed:
            detail = "; ".join(f"{name}: {why}" for name, why in sorted(failed.items()))
            raise RemoteError(f"{what} failed on {len(failed)} host(s): {detail}")

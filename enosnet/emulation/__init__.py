"""Network emulation: the one constraint model, the one engine on the hosts, and how to drive it.

``impaird.py`` (beside this file, stdlib only) is the engine: it runs on the
host as root and gives delay, jitter, loss, duplication, reordering and rate
per destination, with the kernel's netem qdiscs where the kernel has them and
in userspace (NFQUEUE) where not, recording what it added so that it clears
exactly that. ``enosnet netem`` (through the ``netem`` role) and the bench's
per-run conditions both hand it their constraints, so the same request gets
the same qdiscs whoever asked. This module is the controller's side: the
typed :class:`Constraint` (one grammar: the engine's), the netem probe, and
the commands that install, apply, show and clear the engine on a host — run
through any :class:`Runner` (enosnet's ssh, or the local provider's ``nsenter``
prefix). ``rtt.py`` measures round trips with ping for whoever checks the
emulation. docs/emulation.md has the JSON schema and the commands.

>>> c = Constraint("198.18.0.3", delay="20ms", loss="1%")
>>> c.to_json()
{'destination': '198.18.0.3', 'delay': '20ms', 'loss': '1%'}
>>> emulation_config([c])["constraints"][0]["delay"]
'20ms'
>>> Constraint("198.18.0.3", loss="lots")
Traceback (most recent call last):
...
enosnet.errors.ConfigError: emulation constraint: loss: 'lots' is not a percentage such as 1% or 0.5%
>>> shape = Constraint(delay="20 ms", jitter="2ms")   # no destination yet: what Netem and the bench place
>>> shape.label(), shape.at("198.18.0.3").destination
('delay 20 ms jitter 2ms', '198.18.0.3')
"""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Protocol

from enosnet.emulation import impaird
from enosnet.errors import ConfigError, RemoteError
from enosnet.model import Host
from enosnet.remote.results import HostResult
from enosnet.remote.session import command_result, gather
from enosnet.remote.ssh import SshOptions, ensure_control_dir, ssh_argv

IMPAIRD = Path(__file__).with_name("impaird.py")
REMOTE_PATH = "/var/lib/enosnet-emu/impaird.py"
STATE_DIR = impaird.DEFAULT_STATE_DIR
Backend = Literal["netem", "nfqueue"]

__all__ = [
    "IMPAIRD",
    "IMPAIRMENTS",
    "REMOTE_PATH",
    "STATE_DIR",
    "Backend",
    "Constraint",
    "Runner",
    "Target",
    "apply",
    "apply_all",
    "apply_argv",
    "between",
    "choose_backend",
    "clear",
    "clear_all",
    "clear_argv",
    "emulation_config",
    "install",
    "kernel_has_netem",
    "local_runner",
    "place",
    "show",
    "show_argv",
    "ssh_runner",
]


IMPAIRMENTS = impaird.IMPAIRMENTS


@dataclass(frozen=True)
class Constraint:
    """What happens to packets toward ``destination`` (egress) or from it (ingress), netem's words and units.

    ``destination`` is an address or prefix (IPv4 or IPv6), or None for a shape not placed yet (``at``
    places it); ``port`` (with ``protocol`` tcp/udp/sctp) matches as source or destination port;
    ``reorder`` needs a ``delay`` (reordered packets skip it, as with netem). Values are checked by the
    engine's own grammar when the constraint is made.
    """

    destination: str | None = None
    direction: Literal["egress", "ingress"] = "egress"
    delay: str | None = None
    jitter: str | None = None
    distribution: Literal["uniform", "normal"] | None = None
    loss: str | None = None
    loss_correlation: str | None = None
    duplicate: str | None = None
    reorder: str | None = None
    rate: str | None = None
    protocol: str | None = None
    port: int | str | None = None
    limit: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self._normalized  # noqa: B018 (checks the values now)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> Constraint:
        """A constraint from a document's mapping (YAML, JSON); errors are prefixed with ``where``."""
        unknown = sorted(set(map(str, values)) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {str(exc).removeprefix('emulation constraint: ')}") from None

    @cached_property
    def _normalized(self) -> dict[str, Any]:
        """The engine's checked form (seconds, fractions, bit/s); a shape is checked as if toward anywhere."""
        try:
            return impaird.normalize({"destination": "0.0.0.0/0", **self.to_json()}, "emulation constraint")
        except impaird.ConfigProblem as exc:
            raise ConfigError(str(exc).replace("emulation constraint.", "emulation constraint: ", 1)) from None

    def to_json(self) -> dict[str, Any]:
        """The constraint as the engine's JSON (fields left at their defaults omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None and (k, v) != ("direction", "egress")}

    def at(self, destination: str) -> Constraint:
        """This shape toward ``destination``."""
        return replace(self, destination=destination)

    def impairments(self) -> dict[str, Any]:
        """The set impairments (delay, loss, rate, ...), as the netem role's entries take them."""
        return {k: v for k, v in self.to_json().items() if k in IMPAIRMENTS}

    def label(self) -> str:
        """The impairments in netem's words, e.g. ``delay 20ms loss 1%``."""
        return " ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.impairments().items())

    def __bool__(self) -> bool:
        """Whether it does anything to packets (a 0 ms delay alone does not)."""
        n = self._normalized
        return bool(n["delay_s"] or n["jitter_s"] or n["loss"] or n["duplicate"] or n["reorder"] or n["rate_bps"])

    @property
    def delay_s(self) -> float:
        return float(self._normalized["delay_s"])

    @property
    def loss_fraction(self) -> float:
        """The loss asked (``"1%"`` → 0.01)."""
        return float(self._normalized["loss"])


def emulation_config(constraints: Iterable[Constraint], *, seed: int | None = None, queue_base: int | None = None,
                     realtime: bool = True) -> dict[str, Any]:
    """impaird's config for one host (checked)."""
    config: dict[str, Any] = {"version": impaird.VERSION, "constraints": [c.to_json() for c in constraints]}
    if seed is not None:
        config["seed"] = seed
    if queue_base is not None:
        config["queue_base"] = queue_base
    if not realtime:
        config["realtime"] = False
    try:
        impaird.load_config(config)
    except impaird.ConfigProblem as exc:
        raise ConfigError(f"emulation config: {exc}") from None
    return config


def between(group_a: Sequence[Host], group_b: Sequence[Host], *, symmetric: bool = True, delay: str | None = None,
            jitter: str | None = None, loss: str | None = None, duplicate: str | None = None,
            reorder: str | None = None, rate: str | None = None) -> dict[Host, list[Constraint]]:
    """Per host, egress constraints toward each peer of the other group (both ways when ``symmetric``).

    With ``symmetric`` a 20 ms delay adds 40 ms to the round trip between the groups, as netem on both sides.
    """
    shape = Constraint(delay=delay, jitter=jitter, loss=loss, duplicate=duplicate, reorder=reorder, rate=rate)
    return place(shape, group_a, group_b, symmetric=symmetric)


def place(shape: Constraint, group_a: Sequence[Host], group_b: Sequence[Host], *,
          symmetric: bool = True) -> dict[Host, list[Constraint]]:
    """``between`` for a ready shape: per host, ``shape`` toward each peer of the other group."""
    plan: dict[Host, list[Constraint]] = {}
    pairs = [(a, b) for a in group_a for b in group_b] + ([(b, a) for a in group_a for b in group_b] if symmetric
                                                          else [])
    for src, dst in pairs:
        if src != dst:
            plan.setdefault(src, []).append(shape.at(dst.address))
    return plan


# ── running commands on a host ──────────────────────────────────────────────


class Runner(Protocol):
    """Runs an argv on one host (as root), feeding it ``stdin``; the fan-out's ``HostResult`` says how it ended."""

    def __call__(self, argv: Sequence[str], *, stdin: bytes | None = None) -> HostResult: ...


LOCAL = Host("127.0.0.1", alias="localhost")


def _run(host: Host, argv: list[str], stdin: bytes | None, timeout: float) -> HostResult:
    started = time.monotonic()
    try:
        done = subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return command_result(host, None, "", "", duration=time.monotonic() - started, timeout=timeout)
    return command_result(host, done.returncode, done.stdout.decode(errors="replace"),
                          done.stderr.decode(errors="replace"), duration=time.monotonic() - started)


def local_runner(prefix: Sequence[str] = (), *, timeout: float = 60.0, host: Host = LOCAL) -> Runner:
    """Run on this machine, after ``prefix`` — e.g. ``local_runner(provider.enter(h), host=h)`` for a local host."""

    def run(argv: Sequence[str], *, stdin: bytes | None = None) -> HostResult:
        return _run(host, [*prefix, *argv], stdin, timeout)

    return run


def ssh_runner(host: Host, *, timeout: float = 60.0, options: SshOptions | None = None) -> Runner:
    """Run on ``host`` with enosnet's SSH setup (``remote.ssh``; no Ansible), the argv quoted into one shell line."""
    options = options or SshOptions()

    def run(argv: Sequence[str], *, stdin: bytes | None = None) -> HostResult:
        ensure_control_dir(options)
        return _run(host, ssh_argv(host, options, shlex.join(argv)), stdin, timeout)

    return run


@dataclass(frozen=True)
class Target:
    """One host for impaird: how to run commands there, where the program lives, which python runs it."""

    run: Runner = field(repr=False)
    name: str = "host"
    python: str = "python3"
    path: str = REMOTE_PATH
    state_dir: str = STATE_DIR

    @classmethod
    def over_ssh(cls, host: Host, *, timeout: float = 60.0) -> Target:
        """``host`` over enosnet's ssh, with its ``ansible_python_interpreter`` when it has one."""
        python = str(host.extra.get("ansible_python_interpreter", ""))
        python = python if python.startswith("/") else "python3"  # not Ansible's "auto" discovery values
        return cls(ssh_runner(host, timeout=timeout), name=host.name, python=python)


# ── the backend ─────────────────────────────────────────────────────────────

def kernel_has_netem(run: Runner) -> bool:
    """Whether the kernel where ``run`` runs can add a netem qdisc: the engine's own probe, before it is installed.

    Raises ``RemoteError`` when the probe itself cannot run (no tc, not root).
    """
    out = run(["sh", "-c", impaird.NETEM_PROBE])
    if out.ok:
        return True
    if any(text in out.stderr for text in impaird.NO_NETEM):
        return False
    raise RemoteError(f"could not probe for netem ({_why(out)})")


def choose_backend(run: Runner, *, prefer: Literal["auto", "netem", "nfqueue"] = "auto") -> Backend:
    """``netem`` where the kernel has it (real hosts), else ``nfqueue`` (impaird); ``prefer`` forces one."""
    if prefer != "auto":
        return prefer
    return "netem" if kernel_has_netem(run) else "nfqueue"


# ── impaird on a host ───────────────────────────────────────────────────────


def install_argv(path: str = REMOTE_PATH) -> list[str]:
    """Writes stdin to ``path`` atomically (give it ``IMPAIRD.read_bytes()``)."""
    quoted = shlex.quote(path)
    return ["sh", "-c", f'set -e; mkdir -p "$(dirname {quoted})"; cat > {quoted}.tmp; chmod 755 {quoted}.tmp; '
                        f"mv {quoted}.tmp {quoted}"]


def apply_argv(constraints: Iterable[Constraint], *, python: str = "python3", path: str = REMOTE_PATH,
               state_dir: str = STATE_DIR, seed: int | None = None) -> list[str]:
    """The command that applies ``constraints`` on a host (replacing what is there), config inline."""
    config = json.dumps(emulation_config(constraints, seed=seed), separators=(",", ":"))
    return [python, path, "apply", "--config", config, "--state-dir", state_dir]


def clear_argv(*, python: str = "python3", path: str = REMOTE_PATH, state_dir: str = STATE_DIR) -> list[str]:
    return [python, path, "clear", "--state-dir", state_dir]


def show_argv(*, python: str = "python3", path: str = REMOTE_PATH, state_dir: str = STATE_DIR) -> list[str]:
    return [python, path, "show", "--state-dir", state_dir]


def install(target: Target) -> None:
    """Copy impaird.py to the host (nothing to do when the target path is this package's own file)."""
    if target.path == str(IMPAIRD):
        return
    _check(target, target.run(install_argv(target.path), stdin=IMPAIRD.read_bytes()), "installing impaird")


def apply(target: Target, constraints: Iterable[Constraint], *, seed: int | None = None,
          copy: bool = True) -> dict[str, Any]:
    """Install impaird (unless ``copy`` is false) and apply ``constraints``; returns what ``show`` reports."""
    if copy:
        install(target)
    argv = apply_argv(constraints, python=target.python, path=target.path, state_dir=target.state_dir, seed=seed)
    shown: dict[str, Any] = json.loads(_check(target, target.run(argv), "applying emulation").stdout)
    return shown


def clear(target: Target) -> None:
    """Remove everything impaird applied on the host (nothing to do is fine)."""
    argv = ["sh", "-c", f"test ! -e {shlex.quote(target.path)} || exec {shlex.join(clear_argv(**_where(target)))}"]
    _check(target, target.run(argv), "clearing emulation")


def show(target: Target) -> dict[str, Any]:
    """What is applied on the host: config, daemon pid and liveness, per-queue counters."""
    shown: dict[str, Any] = json.loads(_check(target, target.run(show_argv(**_where(target))), "showing").stdout)
    return shown


def apply_all(plan: Mapping[Target, Sequence[Constraint]], *, seed: int | None = None,
              copy: bool = True) -> dict[str, dict[str, Any]]:
    """``apply`` on many hosts at once (threads); ``RemoteError``/``ConfigError`` name every host that failed.

    Returns each host's ``show`` by target name.
    """
    done = gather(list(plan), lambda t: apply(t, plan[t], seed=seed, copy=copy), "applying emulation", name=_name)
    return {target.name: shown for target, shown in done.items()}


def clear_all(targets: Iterable[Target]) -> None:
    """``clear`` on many hosts at once; raises naming every host that could not be cleared."""
    gather(list(targets), clear, "clearing emulation", name=_name)


def _where(target: Target) -> dict[str, str]:
    return {"python": target.python, "path": target.path, "state_dir": target.state_dir}


def _name(target: Target) -> str:
    return target.name


def _why(out: HostResult) -> str:
    detail = out.stderr.strip()[-500:] or out.message
    return f"exit {out.rc}: {detail}" if out.rc is not None else detail


def _check(target: Target, out: HostResult, what: str) -> HostResult:
    if out.rc == 2:
        raise ConfigError(f"{what} on {target.name}: {out.stderr.strip()[-500:]}")
    if not out.ok:
        raise RemoteError(f"{what} on {target.name} failed ({_why(out)})")
    return out

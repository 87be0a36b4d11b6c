"""Network emulation where the kernel has no netem: constraints, backend choice, and impaird on hosts.

``impaird.py`` (beside this file, stdlib only) runs on the host as root and
emulates delay, jitter, loss, duplication, reordering and rate per destination
with NFQUEUE, nft ``dup`` and HTB. This module is the controller's side: typed
constraints, a probe that tells whether a host's kernel has netem, and the
commands that install, apply, show and clear impaird on a host — run through
any :class:`Runner` (plain ssh, or the local provider's ``nsenter`` prefix).
docs/emulation.md has the JSON schema and the commands for Ansible roles.

>>> c = Constraint("198.18.0.3", delay="20ms", loss="1%")
>>> c.to_json()
{'destination': '198.18.0.3', 'delay': '20ms', 'loss': '1%'}
>>> emulation_config([c])["constraints"][0]["delay"]
'20ms'
>>> Constraint("198.18.0.3", loss="lots")
Traceback (most recent call last):
...
enosnet.errors.ConfigError: emulation constraint: loss: 'lots' is not a percentage such as 1% or 0.5%
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from enosnet.emulation import impaird
from enosnet.errors import ConfigError, EnosnetError, RemoteError
from enosnet.model import Host
from enosnet.remote.ssh import plain_ssh_argv

IMPAIRD = Path(__file__).with_name("impaird.py")
REMOTE_PATH = "/var/lib/enosnet-emu/impaird.py"
STATE_DIR = impaird.DEFAULT_STATE_DIR
Backend = Literal["netem", "nfqueue"]

__all__ = [
    "IMPAIRD",
    "REMOTE_PATH",
    "STATE_DIR",
    "Backend",
    "CommandOutput",
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
    "show",
    "show_argv",
    "ssh_runner",
]


@dataclass(frozen=True)
class Constraint:
    """What happens to packets toward ``destination`` (egress) or from it (ingress), netem's words and units.

    ``destination`` is an address or prefix (IPv4 or IPv6); ``port`` (with ``protocol`` tcp/udp/sctp) matches
    as source or destination port; ``reorder`` needs a ``delay`` (reordered packets skip it, as with netem).
    """

    destination: str
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
        try:
            impaird.normalize(self.to_json(), "emulation constraint")
        except impaird.ConfigProblem as exc:
            raise ConfigError(str(exc).replace("emulation constraint.", "emulation constraint: ", 1)) from None

    def to_json(self) -> dict[str, Any]:
        """The constraint as impaird's JSON (fields left at their defaults omitted)."""
        return {k: v for k, v in asdict(self).items() if v is not None and (k, v) != ("direction", "egress")}

    @property
    def delay_s(self) -> float:
        return impaird.parse_duration(self.delay, "delay") if self.delay else 0.0


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
    plan: dict[Host, list[Constraint]] = {}
    pairs = [(a, b) for a in group_a for b in group_b] + ([(b, a) for a in group_a for b in group_b] if symmetric
                                                          else [])
    for src, dst in pairs:
        if src != dst:
            plan.setdefault(src, []).append(Constraint(dst.address, delay=delay, jitter=jitter, loss=loss,
                                                       duplicate=duplicate, reorder=reorder, rate=rate))
    return plan


# ── running commands on a host ──────────────────────────────────────────────


@dataclass(frozen=True)
class CommandOutput:
    """What one command on a host gave back."""

    rc: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0


class Runner(Protocol):
    """Runs an argv on one host (as root), feeding it ``stdin``."""

    def __call__(self, argv: Sequence[str], *, stdin: bytes | None = None) -> CommandOutput: ...


def _run(argv: list[str], stdin: bytes | None, timeout: float) -> CommandOutput:
    try:
        done = subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return CommandOutput(124, "", f"timed out after {timeout:g} s: {shlex.join(argv)}")
    return CommandOutput(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))


def local_runner(prefix: Sequence[str] = (), *, timeout: float = 60.0) -> Runner:
    """Run on this machine, after ``prefix`` — e.g. ``local_runner(provider.enter(host))`` for a local host."""

    def run(argv: Sequence[str], *, stdin: bytes | None = None) -> CommandOutput:
        return _run([*prefix, *argv], stdin, timeout)

    return run


def ssh_runner(host: Host, *, timeout: float = 60.0) -> Runner:
    """Run on ``host`` over plain ssh (no Ansible); the argv is quoted into one remote shell line."""

    def run(argv: Sequence[str], *, stdin: bytes | None = None) -> CommandOutput:
        return _run(plain_ssh_argv(host, shlex.join(argv)), stdin, timeout)

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
        """``host`` over plain ssh, with its ``ansible_python_interpreter`` when it has one."""
        python = str(host.extra.get("ansible_python_interpreter", ""))
        python = python if python.startswith("/") else "python3"  # not Ansible's "auto" discovery values
        return cls(ssh_runner(host, timeout=timeout), name=host.name, python=python)


# ── the backend ─────────────────────────────────────────────────────────────

# a throwaway network namespace leaves nothing behind; without one, lo is used only if it has no qdisc of its own
_PROBE = """
command -v tc >/dev/null || { echo "no tc on this host (install iproute2)" >&2; exit 3; }
if unshare --net true 2>/dev/null; then exec unshare --net tc qdisc add dev lo root netem delay 0ms; fi
tc qdisc show dev lo | grep -q '^qdisc netem' && exit 0
tc qdisc show dev lo | grep -q '^qdisc noqueue 0: root' || { echo "lo has a qdisc, cannot probe" >&2; exit 3; }
tc qdisc add dev lo root handle e57f: netem delay 0ms && tc qdisc del dev lo root handle e57f:
"""
_NO_NETEM = ("qdisc kind is unknown", "RTNETLINK answers: No such file or directory")  # new and old tc


def kernel_has_netem(run: Runner) -> bool:
    """Whether the kernel where ``run`` runs can add a netem qdisc (tried where it changes nothing).

    Raises ``RemoteError`` when the probe itself cannot run (no tc, not root).
    """
    out = run(["sh", "-c", _PROBE])
    if out.ok:
        return True
    if any(text in out.stderr for text in _NO_NETEM):
        return False
    raise RemoteError(f"could not probe for netem (exit {out.rc}): {out.stderr.strip()[-300:]}")


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
    return _fan_out(list(plan), lambda t: apply(t, plan[t], seed=seed, copy=copy), "applying emulation")


def clear_all(targets: Iterable[Target]) -> None:
    """``clear`` on many hosts at once; raises naming every host that could not be cleared."""
    _fan_out(list(targets), clear, "clearing emulation")


def _fan_out(targets: list[Target], step: Callable[[Target], Any], what: str) -> dict[str, Any]:
    done: dict[str, Any] = {}
    failed: dict[str, EnosnetError] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(targets)))) as pool:
        for target, future in [(t, pool.submit(step, t)) for t in targets]:
            try:
                done[target.name] = future.result()
            except EnosnetError as exc:
                failed[target.name] = exc
    if failed:
        kind = ConfigError if all(isinstance(e, ConfigError) for e in failed.values()) else RemoteError
        raise kind(f"{what} failed on {len(failed)} of {len(targets)} hosts: " +
                   "; ".join(f"{name}: {exc}" for name, exc in sorted(failed.items())))
    return done


def _where(target: Target) -> dict[str, str]:
    return {"python": target.python, "path": target.path, "state_dir": target.state_dir}


def _check(target: Target, out: CommandOutput, what: str) -> CommandOutput:
    if out.rc == 2:
        raise ConfigError(f"{what} on {target.name}: {out.stderr.strip()[-500:]}")
    if not out.ok:
        raise RemoteError(f"{what} on {target.name} failed (exit {out.rc}): {out.stderr.strip()[-500:]}")
    return out

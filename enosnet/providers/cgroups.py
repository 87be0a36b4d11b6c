"""Control groups for local hosts: each host's CPU and memory limits, its cores, and its own CPU accounting.

Every local host gets a group per controller, under one group per
environment (``<prefix>-<tag>``, named like its bridge), so that its CPU use
is counted apart from the machine's and its limits hold for everything that
runs inside it (sshd, the agent, the benchmark tools). The host's PID 1 joins
its groups before it starts anything and binds them read-only at
``/sys/fs/cgroup`` inside the host, where the agent and the metadata probe
read them as a container would.

Both cgroup layouts are supported:

- **v1** (one hierarchy per controller, e.g. ``/sys/fs/cgroup/cpu``): groups
  are made under the controller's group of this process (a job's memory limit
  keeps holding); ``cpu.cfs_quota_us``, ``memory.limit_in_bytes`` (and
  ``memsw`` when swap is accounted), ``cpuset.cpus``; CPU time from
  ``cpuacct.usage``. With real-time group scheduling (``cpu.rt_runtime_us``
  present) a new group has no real-time CPU time, so no process in it may
  take a real-time priority: each host's group gets a share (``realtime_share``),
  for the agent's start gate.
- **v2** (one unified hierarchy with ``cgroup.controllers``): groups are made
  under the root (v2 allows no processes in a group whose children have
  controllers); ``cpu.max``, ``memory.max`` (and ``memory.swap.max`` 0),
  ``cpuset.cpus``; CPU time from ``cpu.stat``.

>>> plan_cpusets(["a", "b", "c"], [0, 1, 2, 3, 4, 5, 6])
({'a': '0-1', 'b': '2-3', 'c': '4-5'}, None)
>>> plan_cpusets(["a", "b", "c"], [0, 1])
({'a': '0', 'b': '1', 'c': '0'}, '3 hosts with cpuset: auto on 2 cores: some hosts share a core')
"""

from __future__ import annotations

import abc
import errno
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from enosnet.errors import ProviderError

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
RT_PER_HOST_US = 10_000  # real-time CPU time per second (rt_period_us) a host may use, at most
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory")


@dataclass(frozen=True)
class Limits:
    """One host's limits: CPU-seconds per second, bytes, cores (``cpuset.cpus`` syntax); None: none."""

    cpus: float | None = None
    memory: int | None = None
    cpuset: str | None = None

    @property
    def quota_us(self) -> int | None:
        """CPU time per ``CFS_PERIOD_US`` period (at least 1 ms, the kernel's floor)."""
        return None if self.cpus is None else max(1000, round(self.cpus * CFS_PERIOD_US))

    def as_dict(self) -> dict[str, float | int | str]:
        return {k: v for k, v in (("cpus", self.cpus), ("memory", self.memory), ("cpuset", self.cpuset))
                if v is not None}


class Layout(abc.ABC):
    """Where a host's groups live and how limits are written, for one cgroup version."""

    version: int

    @abc.abstractmethod
    def parents(self) -> dict[str, Path]:
        """Per mount name (``cpu``, ``memory``, … or ``unified``), the group environments' groups go under."""

    def env_dirs(self, name: str) -> dict[str, Path]:
        """The environment's group per mount name."""
        return {mount: parent / name for mount, parent in self.parents().items()}

    @abc.abstractmethod
    def prepare(self, env_dirs: Mapping[str, Path], hosts: int) -> None:
        """Create the environment's groups (for ``hosts`` hosts) and make the controllers available below them."""

    @abc.abstractmethod
    def limit(self, host_dirs: Mapping[str, Path], limits: Limits) -> None:
        """Write ``limits`` into a host's (already created) groups."""

    def roots(self) -> list[Path]:
        """Folders under which environments' groups are found (for ``destroy --all``)."""
        return sorted(set(self.parents().values()))

    @property
    def has_cpuset(self) -> bool:
        return bool({"cpuset", "unified"} & set(self.parents()))

    def all_cpus(self) -> list[int]:
        """The cores environments' hosts may use (the cpuset of the group they go under)."""
        parents = self.parents()
        for name in ("cpuset", "unified"):
            if name in parents:
                for file in ("cpuset.cpus.effective", "cpuset.cpus"):
                    text = _read(parents[name] / file)
                    if text:
                        return parse_cpu_list(text)
        return sorted(os.sched_getaffinity(0))


class V1(Layout):
    version = 1

    def __init__(self, mounts: Mapping[str, Path], own: Mapping[str, str]) -> None:
        self.mounts = dict(mounts)  # controller → its hierarchy's mount point
        self.own = dict(own)        # controller → this process's group in it
        self.realtime_us = 0        # each host's real-time CPU time per period (see realtime_share)

    def parents(self) -> dict[str, Path]:
        return {c: self.mounts[c] / self.own.get(c, "/").lstrip("/") for c in self.mounts}

    def prepare(self, env_dirs: Mapping[str, Path], hosts: int) -> None:
        for controller, folder in env_dirs.items():
            folder.mkdir(exist_ok=True)
            if controller == "cpuset":  # a v1 cpuset group has no cores until given its parent's
                for file in ("cpuset.cpus", "cpuset.mems"):
                    if not _read(folder / file):
                        _write(folder / file, _read(folder.parent / file))
        if "cpu" in env_dirs:
            self.realtime_us = realtime_share(env_dirs["cpu"], hosts)

    def limit(self, host_dirs: Mapping[str, Path], limits: Limits) -> None:
        if self.realtime_us and "cpu" in host_dirs:
            try:  # a nicety for the start gate's precision, never a reason to fail the hosts
                _write(host_dirs["cpu"] / "cpu.rt_runtime_us", str(self.realtime_us))
            except OSError as exc:
                log.warning("no real-time CPU time for %s: %s", host_dirs["cpu"], exc.strerror)
        if "cpuset" in host_dirs:
            for file in ("cpuset.cpus", "cpuset.mems"):
                _write(host_dirs["cpuset"] / file, _read(host_dirs["cpuset"].parent / file))
            if limits.cpuset is not None:
                _write(host_dirs["cpuset"] / "cpuset.cpus", limits.cpuset)
        if limits.quota_us is not None:
            _write(host_dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(host_dirs["cpu"] / "cpu.cfs_quota_us", str(limits.quota_us))
        if limits.memory is not None:
            _write(host_dirs["memory"] / "memory.limit_in_bytes", str(limits.memory))
            if (host_dirs["memory"] / "memory.memsw.limit_in_bytes").exists():  # swap accounted: no escape
                _write(host_dirs["memory"] / "memory.memsw.limit_in_bytes", str(limits.memory))

    def roots(self) -> list[Path]:  # each hierarchy's top too: where a process of the root group made them
        return sorted({*self.mounts.values(), *self.parents().values()})


class V2(Layout):
    version = 2

    def __init__(self, root: Path) -> None:
        self.root = root

    def parents(self) -> dict[str, Path]:
        return {"unified": self.root}

    def prepare(self, env_dirs: Mapping[str, Path], hosts: int) -> None:
        folder = env_dirs["unified"]
        folder.mkdir(exist_ok=True)
        wanted = [c for c in ("cpu", "cpuset", "memory") if c in _read(self.root / "cgroup.controllers").split()]
        for parent in (self.root, folder):
            _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    def limit(self, host_dirs: Mapping[str, Path], limits: Limits) -> None:
        folder = host_dirs["unified"]
        if limits.quota_us is not None:
            _write(folder / "cpu.max", f"{limits.quota_us} {CFS_PERIOD_US}")
        if limits.memory is not None:
            _write(folder / "memory.max", str(limits.memory))
            if (folder / "memory.swap.max").exists():
                _write(folder / "memory.swap.max", "0")
        if limits.cpuset is not None:
            _write(folder / "cpuset.cpus", limits.cpuset)


def detect(mountinfo: str | None = None, own: str | None = None) -> Layout:
    """This machine's layout: v2 when the unified hierarchy at /sys/fs/cgroup has the controllers, else v1."""
    mountinfo = mountinfo if mountinfo is not None else _read(Path("/proc/self/mountinfo"))
    own = own if own is not None else _read(Path("/proc/self/cgroup"))
    mounts: dict[str, Path] = {}
    unified: Path | None = None
    for line in mountinfo.splitlines():
        fields = line.split(" - ", 1)
        if len(fields) != 2:
            continue
        point = Path(fields[0].split()[4])
        fstype, _, options = [*fields[1].split(), "", "", ""][:3]
        if fstype == "cgroup2" and point == CGROUP_ROOT:
            unified = point
        elif fstype == "cgroup":
            for controller in options.split(","):
                if controller in V1_CONTROLLERS:
                    mounts[controller] = point
    if unified is not None and {"cpu", "memory"} <= set(_read(unified / "cgroup.controllers").split()):
        return V2(unified)
    missing = [c for c in ("cpu", "cpuacct", "memory") if c not in mounts]
    if missing:
        raise ProviderError(f"this machine's cgroups lack the {', '.join(missing)} controller: local hosts "
                            "need them for their CPU accounting and limits",
                            hint="mount cgroup v2 with the cpu and memory controllers, or v1's cpu, cpuacct "
                                 "and memory hierarchies")
    paths = {}
    for line in own.splitlines():
        _, controllers, path = [*line.split(":", 2), "", ""][:3]
        for controller in controllers.split(","):
            if controller in mounts:
                paths[controller] = path
    return V1(mounts, paths)


def realtime_share(env_cpu: Path, hosts: int) -> int:
    """Give the environment's v1 cpu group real-time CPU time for its hosts; each host's share (0: none).

    Under real-time group scheduling a v1 cpu group starts with none
    (``cpu.rt_runtime_us`` 0), and a process in it asking for SCHED_FIFO is
    refused: the agents' start gate then runs at normal priority, and the
    starts of 50 co-located hosts spread over 40 ms instead of about 1 ms.
    The agent holds the priority only from ARM to its start and spins for
    0.2 ms of it, so each host gets up to ``RT_PER_HOST_US`` per period, out
    of what the parent group has not given to its other children. Without
    that much to give, hosts share what there is; with none, they get none.
    """
    mine = env_cpu / "cpu.rt_runtime_us"
    if hosts <= 0 or not mine.exists():
        return 0
    parent = env_cpu.parent
    total = _int(parent / "cpu.rt_runtime_us")
    if total < 0:  # unlimited (the root group without a throttle): the period bounds it
        total = _int(parent / "cpu.rt_period_us")
    given = sum(max(_int(child / "cpu.rt_runtime_us"), 0) for child in parent.iterdir()
                if child.is_dir() and child != env_cpu)
    budget = min(hosts * RT_PER_HOST_US, total - given)
    while budget >= hosts * 100:  # below 0.1 ms per host a start could be throttled mid-spin: none at all
        try:
            _write(mine, str(budget - budget % hosts))
            return budget // hosts
        except OSError:  # the kernel counts differently (other periods, a sibling raced us): ask for less
            budget //= 2
    log.warning("the cgroup %s has no real-time CPU time left to give %d local hosts: their agents start runs "
                "at normal priority, and co-located starts spread wider", parent, hosts)
    return 0


def _int(path: Path) -> int:
    text = _read(path)
    return int(text) if text.lstrip("-").isdigit() else 0


@dataclass(frozen=True)
class HostGroups:
    """One host's groups (mount name → folder) and its limits."""

    dirs: dict[str, str]
    limits: Limits


def create(layout: Layout, env_name: str, hosts: Sequence[tuple[str, Limits]]) -> dict[str, HostGroups]:
    """The environment's group and one group per host under it, limits written; host alias → its groups."""
    env_dirs = layout.env_dirs(env_name)
    try:
        layout.prepare(env_dirs, len(hosts))
        made: dict[str, HostGroups] = {}
        for alias, limits in hosts:
            dirs = {name: folder / alias for name, folder in env_dirs.items()}
            for folder in dirs.values():
                folder.mkdir(exist_ok=True)
            layout.limit(dirs, limits)
            made[alias] = HostGroups({name: str(folder) for name, folder in dirs.items()}, limits)
    except OSError as exc:
        raise ProviderError(f"creating the hosts' cgroups failed: {exc}",
                            hint="the local provider needs root and writable cgroup controllers") from None
    return made


def remove(folders: Iterable[str | Path], *, deadline: float = 10.0) -> list[str]:
    """Remove these groups, children first, waiting for killed tasks to leave; what could not be removed."""
    pending = sorted({Path(f) for f in folders}, key=lambda p: len(p.parts), reverse=True)
    end = time.monotonic() + deadline
    while True:
        left = []
        for folder in pending:
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    raise ProviderError(f"removing the cgroup {folder} failed: {exc.strerror}") from None
                left.append(folder)
        if not left or time.monotonic() > end:
            return [str(f) for f in left]
        pending = left
        time.sleep(0.05)


def leftovers(layout: Layout, pattern: re.Pattern[str]) -> list[Path]:
    """Environment groups (and their hosts' groups) whose name fully matches ``pattern``."""
    found: list[Path] = []
    for root in layout.roots():
        try:
            children = [p for p in root.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
        except OSError:
            continue
        for env_dir in children:
            found += [p for p in env_dir.iterdir() if p.is_dir()] + [env_dir]
    return found


def plan_cpusets(aliases: Sequence[str], cpus: Sequence[int]) -> tuple[dict[str, str], str | None]:
    """Cores of their own for each host while there are enough (an equal share each), else one each in turn."""
    if not aliases:
        return {}, None
    share = len(cpus) // len(aliases)
    if share >= 1:
        return {a: format_cpu_list(cpus[i * share:(i + 1) * share]) for i, a in enumerate(aliases)}, None
    warning = (f"{len(aliases)} hosts with cpuset: auto on {len(cpus)} cores: some hosts share a core")
    return {a: str(cpus[i % len(cpus)]) for i, a in enumerate(aliases)}, warning


def parse_cpu_list(text: str) -> list[int]:
    """``0-2,5`` → [0, 1, 2, 5].

    >>> parse_cpu_list("0-2,5")
    [0, 1, 2, 5]
    """
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            low, _, high = part.partition("-")
            cpus += range(int(low), int(high or low) + 1)
    return cpus


def format_cpu_list(cpus: Sequence[int]) -> str:
    """[0, 1, 2, 5] → ``0-2,5``.

    >>> format_cpu_list([0, 1, 2, 5])
    '0-2,5'
    """
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and "-" not in parts[-1] and int(parts[-1]) == cpu - 1:
            parts[-1] = f"{parts[-1]}-{cpu}"
        elif parts and "-" in parts[-1] and int(parts[-1].split("-")[1]) == cpu - 1:
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, value: str) -> None:
    with open(path, "w") as out:  # one write(2): cgroup files take a value per write
        out.write(value)

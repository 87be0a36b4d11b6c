"""What a benchmark driver is: which agent actions it runs on which hosts, and how it reads their output.

A driver is given one run's substituted section; it starts servers, schedules
clients through the coordinator and returns the agents' records (with labels
naming the folders the outputs are pulled into). After the pull it parses
those folders into metrics and samples.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ValidationError

from enosnet.coordinator import Coordinator, WorkerRecord
from enosnet.errors import ConfigError
from enosnet.model import Host, Roles
from enosnet.remote.session import Session
from enosnet.results.store import HostMeta, Metric, Sample
from enosnet.yamlfile import line_map, where

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class Labelled:
    """A worker record and the folder name its outputs get under ``runs/<run-id>/<host>/``.

    ``client``: the driver ran it as a client (what the run measures), not as a server.
    """

    label: str
    host: str
    role: str
    record: WorkerRecord
    client: bool = False


@dataclass(frozen=True)
class Executed:
    """What a driver ran in one run: every process record, servers and clients."""

    records: Sequence[Labelled]
    scheduled_ns: int | None = None
    context: Mapping[str, str] = field(default_factory=dict)

    @property
    def clients(self) -> list[Labelled]:
        return [r for r in self.records if r.client]


@dataclass
class Measured:
    """What a driver read from one run's outputs; ``problems`` make the run fail."""

    metrics: list[Metric] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    headline: tuple[str, float, str] | None = None
    metadata: list[HostMeta] = field(default_factory=list)


class Driver(abc.ABC, Generic[S]):
    """One benchmark tool: what it needs installed and allowed, how it runs on hosts, how it is read.

    A driver declares, in one class: its ``name`` (``driver:`` in an
    experiment, and the key of its section), its ``section_model`` (the
    section's pydantic model ``S``: every method gets one run's section as an
    ``S``, checked once by ``section``), the Ansible role that installs its tool
    (``install_role``), the agent actions it runs (``agent_actions``), and how
    it runs (``execute``) and reads (``parse``) one run. ``enosnet.bench.drivers``
    finds it by name (``docs/drivers.md``).
    """

    name: ClassVar[str]
    section_model: ClassVar[type[BaseModel]]  # S
    install_role: ClassVar[str]
    build_sources: ClassVar[tuple[str, ...]] = ()  # what a build of `builds:` may come from (none: no builds)
    # whether every deploy applies install_role (netbench's is asked for in the config: it builds first)
    installed_by_default: ClassVar[bool] = True
    roles_dir: ClassVar[Path | None] = None  # where a driver from another package keeps its role

    @staticmethod
    @abc.abstractmethod
    def agent_actions(**options: Any) -> dict[str, Any]:
        """The agent action declarations the driver runs (the agents' catalogue holds every driver's)."""

    def __init__(self, roles: Roles, *, source: str | None = None) -> None:
        self.roles = roles
        self.source = source

    def section(self, data: Mapping[str, Any]) -> S:
        """One run's substituted section through ``section_model``; ``ConfigError`` naming each bad field."""
        try:
            return cast(S, self.section_model.model_validate(dict(data)))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{self.name} section after substituting parameters: {problems}") from None

    def where(self, *loc: str) -> str:
        """``file:line field`` of a place in the experiment file (for errors found while running)."""
        if self.source is None:
            return ".".join(loc)
        try:
            text = Path(self.source).read_text()
        except OSError:
            return f"{self.source} {'.'.join(loc)}"
        return where(self.source, line_map(text), loc)

    @abc.abstractmethod
    def validate(self, section: S) -> None:
        """Raise ``ConfigError`` if this run's section cannot work on these hosts (before anything runs)."""

    @abc.abstractmethod
    def extra_roles(self, section: S) -> Roles:
        """Coordinator roles beyond the environment's (e.g. one role per server port)."""

    @abc.abstractmethod
    def server_ports(self, section: S) -> dict[Host, list[int]]:
        """The TCP/UDP ports each server host listens on (checked free before measuring)."""

    @abc.abstractmethod
    async def execute(self, coordinator: Coordinator, section: S, *, duration_s: float,
                      timeout_s: float) -> Executed:
        """Start servers, run clients at one scheduled instant, stop servers."""

    @abc.abstractmethod
    def parse(self, executed: Executed, folder: Path, *, started_ns: int | None) -> Measured:
        """Metrics and samples from the pulled outputs in ``folder`` (``<host>/<label>/``)."""

    def prepare(self, session: Session, sections: Sequence[S]) -> None:
        """Anything to do on the hosts before the first run (e.g. copy a scenario file)."""

    def busy_threads(self, section: S) -> dict[Host, int]:
        """How many threads each host keeps busy when nothing else holds it back (the capacity estimate).

        A client sends ``parallel`` flows (1 unless the section says), a server
        receives those of the clients it serves.
        """
        clients = self.roles.select(str(getattr(section, "client_role", "client")))
        servers = self.roles.select(str(getattr(section, "server_role", "server")))
        try:
            flows = max(1, int(getattr(section, "parallel", 1)))
        except (TypeError, ValueError):
            flows = 1
        busy = {h: flows for h in clients}
        for h in servers:
            busy[h] = busy.get(h, 0) + math.ceil(len(clients) / max(1, len(servers))) * flows
        return busy

    @property
    def headline_metric(self) -> str:
        return "throughput"

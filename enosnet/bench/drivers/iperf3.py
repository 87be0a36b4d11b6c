"""iperf3: servers on the server hosts, clients started together at one scheduled instant (incast).

Client ``j`` talks to server host ``j mod S`` on port ``base + j div S``: an
iperf3 server serves one test at a time, so clients sharing a server host each
get their own server process and port. Each client's ``-J`` output becomes
per-host metrics (throughput, retransmits, RTT, CPU) and per-interval
throughput samples.

>>> from enosnet.model import Host, Roles
>>> roles = Roles({"server": [Host("198.18.0.2", alias="s0")],
...                "client": [Host(f"198.18.0.{i}", alias=f"c{i}") for i in (3, 4)]})
>>> [(c.name, s.name, port) for c, s, port in layout(roles, "server", "client", 5201)]
[('c3', 's0', 5201), ('c4', 's0', 5202)]
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from enosnet.bench.builds import InstalledBuild, build_metadata, install_builds, installed_name
from enosnet.bench.drivers.base import Driver, Executed, Labelled, Measured
from enosnet.bench.spec import Iperf3Section
from enosnet.coordinator import Coordinator, Worker, WorkerRecord, iperf3_actions
from enosnet.errors import ConfigError
from enosnet.model import Host, Roles
from enosnet.remote.session import Session
from enosnet.results.store import Metric, Sample

SERVER_ACTION, CLIENT_ACTION = "iperf3-server", "iperf3-client"


def layout(roles: Roles, server_role: str, client_role: str, base_port: int) -> list[tuple[Host, Host, int]]:
    """(client, server, port) for every client host."""
    servers, clients = roles.select(server_role), roles.select(client_role)
    if not servers or not clients:
        raise ConfigError(f"iperf3 needs at least one host in role {server_role!r} and one in {client_role!r}")
    return [(c, servers[j % len(servers)], base_port + j // len(servers)) for j, c in enumerate(clients)]


def port_role(server_role: str, slot: int) -> str:
    """The coordinator role of the ``slot``-th server process of each server host."""
    return f"{server_role}.p{slot}"


class Iperf3Driver(Driver[Iperf3Section]):
    """``driver: iperf3`` (see the module docstring)."""

    name = "iperf3"
    section_model = Iperf3Section
    install_role = "iperf3"
    build_sources = ("binary", "dir")

    @staticmethod
    def agent_actions(**options: Any) -> dict[str, Any]:
        """``iperf3-server``/``-client`` (and their ``-build`` forms): ``iperf3_actions``."""
        return iperf3_actions(**options)

    def __init__(self, roles: Roles, *, source: str | None = None) -> None:
        super().__init__(roles, source=source)
        self.builds: dict[str, InstalledBuild] = {}

    def prepare(self, session: Session, sections: Sequence[Iperf3Section]) -> None:
        """The builds of ``builds:`` on the hosts that run them, as ``<bin_dir>/iperf3+<label>``."""
        self.builds = install_builds(session, (
            (sec.build, sec.bin_dir, ["iperf3"],
             [*self.roles.select(sec.server_role), *self.roles.select(sec.client_role)])
            for sec in sections if sec.build is not None), experiment=self.source)

    def validate(self, sec: Iperf3Section) -> None:
        try:
            self._layout(sec)
        except KeyError as exc:
            raise ConfigError(f"iperf3: {exc.args[0]}") from None
        for name in ("parallel",):
            if not isinstance(getattr(sec, name), int):
                raise ConfigError(f"iperf3.{name}: must be an integer, not {getattr(sec, name)!r}")

    def _layout(self, sec: Iperf3Section) -> list[tuple[Host, Host, int]]:
        return layout(self.roles, sec.server_role, sec.client_role, sec.port)

    def _slots(self, sec: Iperf3Section) -> dict[int, list[Host]]:
        """slot → server hosts running a server on ``base + slot``."""
        slots: dict[int, list[Host]] = {}
        for _, server, port in self._layout(sec):
            slots.setdefault(port - sec.port, []).append(server)
        return slots

    def extra_roles(self, sec: Iperf3Section) -> Roles:
        return Roles({port_role(sec.server_role, slot): hosts for slot, hosts in self._slots(sec).items()})

    def server_ports(self, sec: Iperf3Section) -> dict[Host, list[int]]:
        ports: dict[Host, list[int]] = {}
        for _, server, port in self._layout(sec):
            ports.setdefault(server, []).append(port)
        return ports

    async def execute(self, coordinator: Coordinator, sec: Iperf3Section, *, duration_s: float,
                      timeout_s: float) -> Executed:
        slots = sorted(self._slots(sec))
        targets = {c.name: (s.address, port) for c, s, port in self._layout(sec)}
        groups = [port_role(sec.server_role, slot) for slot in slots]
        # a build of `builds:` runs through the same actions with its own program
        program = {"binary": installed_name("iperf3", sec.build.label)} if sec.build else {}
        server_action, client_action = (f"{a}-build" if sec.build else a for a in (SERVER_ACTION, CLIENT_ACTION))
        await asyncio.gather(*(coordinator.start(g, server_action, {"port": sec.port + slot, **program})
                               for g, slot in zip(groups, slots, strict=True)))
        servers: list[WorkerRecord] = []
        try:
            await asyncio.gather(*(coordinator.wait_ready(g) for g in groups))
            clients = await coordinator.run(sec.client_role, client_action,
                                            lambda w: {**self._client_params(w, sec, targets, duration_s), **program},
                                            deadline_s=timeout_s)
        finally:
            stopped = await asyncio.gather(*(coordinator.stop(g) for g in groups), return_exceptions=True)
            servers = [r for group in stopped if isinstance(group, list) for r in group]
        records = [Labelled(f"{SERVER_ACTION}-{_port_of(r, sec)}", r.worker, sec.server_role, r) for r in servers]
        records += [Labelled(CLIENT_ACTION, r.worker, sec.client_role, r, client=True) for r in clients]
        scheduled = min((r.scheduled_ns - (r.offset_ns or 0) for r in clients if r.scheduled_ns), default=None)
        return Executed(records, scheduled, {"build": sec.build.label if sec.build else ""})

    @staticmethod
    def _client_params(worker: Worker, sec: Iperf3Section, targets: Mapping[str, tuple[str, int]],
                       duration_s: float) -> dict[str, Any]:
        host, port = targets[worker.id]
        return {"host": host, "port": port, "duration": max(1, math.ceil(duration_s)), "parallel": sec.parallel,
                "congestion": sec.congestion, "reverse": bool(sec.reverse), "udp": bool(sec.udp),
                "bitrate": sec.bitrate, "length": sec.length}

    def parse(self, executed: Executed, folder: Path, *, started_ns: int | None) -> Measured:
        out = Measured()
        build = self.builds.get(executed.context.get("build", ""))
        if build is not None:
            for host in sorted({item.host for item in executed.records}):
                out.metadata += build_metadata(build, host, "iperf3")
        for item in executed.clients:
            path = folder / item.host / item.label / "stdout"
            try:
                result = parse_client_json(path.read_text(), host=item.host)
            except (OSError, ValueError) as exc:
                out.problems.append(f"{item.host}: cannot read iperf3 output {path.name}: {exc}")
                continue
            out.metrics += result.metrics
            out.samples += result.samples
            out.problems += result.problems
        total = sum(m.value for m in out.metrics if m.name == "throughput")
        if any(m.name == "throughput" for m in out.metrics):
            out.headline = ("throughput", total, "bit/s")
        return out


def _port_of(record: WorkerRecord, sec: Iperf3Section) -> int:
    if "." in record.role and record.role.rsplit(".p", 1)[-1].isdigit():
        return sec.port + int(record.role.rsplit(".p", 1)[-1])
    return sec.port


def parse_client_json(text: str, *, host: str) -> Measured:
    """Metrics and samples from one iperf3 client's ``-J`` output.

    >>> m = parse_client_json(Path("tests/fixtures/iperf3/client-reno.json").read_text(), host="c0")
    >>> sorted({x.name for x in m.metrics})[:4], m.problems
    (['cpu_local', 'cpu_remote', 'retransmits', 'rtt_max'], [])
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    out = Measured()
    if data.get("error"):
        out.problems.append(f"{host}: iperf3: {data['error']}")
    end = data.get("end") or {}
    out.metrics += _summary_metrics(end, host)
    out.samples += _interval_samples(data.get("intervals") or [], host)
    if not end and not out.problems:
        out.problems.append(f"{host}: iperf3 output has no summary (test cut short?)")
    return out


def _summary_metrics(end: Mapping[str, Any], host: str) -> list[Metric]:
    received, sent = end.get("sum_received") or end.get("sum") or {}, end.get("sum_sent") or end.get("sum") or {}
    metrics: list[Metric] = []
    if "bits_per_second" in received:
        metrics.append(Metric(host, "throughput", float(received["bits_per_second"]), "bit/s"))
    if "bits_per_second" in sent:
        metrics.append(Metric(host, "throughput_sent", float(sent["bits_per_second"]), "bit/s"))
    if "retransmits" in sent:
        metrics.append(Metric(host, "retransmits", float(sent["retransmits"]), "retransmits"))
    if "lost_percent" in received:
        metrics.append(Metric(host, "loss", float(received["lost_percent"]), "%"))
    rtts = [s.get("sender") or {} for s in end.get("streams") or []]
    for name, key, pick in (("rtt_mean", "mean_rtt", _mean), ("rtt_min", "min_rtt", min), ("rtt_max", "max_rtt", max)):
        values = [float(s[key]) for s in rtts if key in s]
        if values:
            metrics.append(Metric(host, name, pick(values) / 1000.0, "ms"))
    cpu = end.get("cpu_utilization_percent") or {}
    for name, key in (("cpu_local", "host_total"), ("cpu_remote", "remote_total")):
        if key in cpu:
            metrics.append(Metric(host, name, float(cpu[key]), "%"))
    return metrics


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _interval_samples(intervals: list[Any], host: str) -> list[Sample]:
    samples: list[Sample] = []
    for interval in intervals:
        total = interval.get("sum") or {}
        if "bits_per_second" not in total or total.get("omitted"):
            continue
        t = float(total.get("end", 0.0))
        samples.append(Sample(host, "throughput", t, float(total["bits_per_second"]), "bit/s"))
        if "retransmits" in total:
            samples.append(Sample(host, "retransmits", t, float(total["retransmits"]), "retransmits"))
        rtts = [float(s["rtt"]) for s in interval.get("streams") or [] if "rtt" in s]
        if rtts:
            samples.append(Sample(host, "rtt", t, _mean(rtts) / 1000.0, "ms"))
    return samples

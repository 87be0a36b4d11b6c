"""s2n-netbench: every server and client of a scenario, each driver run by the agent itself.

Scenario ``servers[i]`` runs on server host ``i`` and ``clients[j]`` on client
host ``j`` (the numbers must match, checked before anything runs); each gets
``SERVER_ID`` / ``CLIENT_ID`` from its index and clients get ``SERVER_<i>``
for every server. The ``drivers`` listed are compared as a parameter named
``driver``.

Drivers are not run under s2n-netbench-collector: without bpftrace the
collector turns the driver's own throughput trace off and reports no bytes,
exits 0 whatever the driver did, and starts the driver after itself. Run by
the agent, a driver starts at the scheduled instant, its exit status and
rusage (CPU, peak memory) are its own, and its ``TRACE=throughput`` lines give
the per-second samples. A client that completed has received exactly what
its scenario sends it (drivers fail otherwise), so its throughput over the run
is those bytes over its run time, checked against the trace and against the
host's interface counters (``docs/netbench.md``).

The measurements are also written in the layout ``s2n-netbench report-tree``
reads: ``runs/<run>/netbench/<scenario>/<driver>/{server,client}-<i>.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enosnet.bench.builds import InstalledBuild, build_metadata, install_builds, installed_name
from enosnet.bench.drivers.base import Driver, Executed, Labelled, Measured
from enosnet.bench.drivers.netbench_output import Trace, parse_trace, scenario_bytes, trace_samples
from enosnet.bench.instrument import interface_bytes, udp_receive_drops
from enosnet.bench.spec import NetbenchScenarioArgs, NetbenchSection
from enosnet.coordinator import Coordinator, WorkerRecord, netbench_actions
from enosnet.errors import ConfigError
from enosnet.model import Host, Roles
from enosnet.remote.session import Session
from enosnet.results.store import HostMeta, Metric

ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the generator colours its errors even into a pipe
CROSS_CHECK_TOLERANCE = 0.10  # interface bytes vs the client's bytes: beyond this the run is flagged
SERVER_ACTION, CLIENT_ACTION = "netbench-server", "netbench-client"


class NetbenchDriver(Driver[NetbenchSection]):
    """``driver: netbench`` (see the module docstring)."""

    name = "netbench"
    section_model = NetbenchSection
    install_role = "netbench"
    build_sources = ("crates", "path", "dir")
    installed_by_default = False  # `install: {netbench: ...}` builds it on the controller, then deploy_netbench

    @staticmethod
    def agent_actions(**options: Any) -> dict[str, Any]:
        """``netbench-server``/``-client``: ``netbench_actions`` (``bin_dir``, ``scenario_dir``)."""
        return netbench_actions(**options)

    def __init__(self, roles: Roles, *, source: str | None = None) -> None:
        super().__init__(roles, source=source)
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.builds: dict[str, InstalledBuild] = {}

    def validate(self, sec: NetbenchSection) -> None:
        driver = sec.run_driver
        if not driver.replace("-", "").isalnum():
            raise ConfigError(f"netbench.drivers: {driver!r} is not a driver name such as tcp or s2n-quic")
        if sec.scenario is not None:
            self._check_counts(sec, _read_scenario(Path(sec.scenario)), sec.scenario)

    def _check_counts(self, sec: NetbenchSection, scenario: Mapping[str, Any], source: str) -> None:
        servers, clients = self.roles.select(sec.server_role), self.roles.select(sec.client_role)
        need = (len(scenario.get("servers") or []), len(scenario.get("clients") or []))
        if need != (len(servers), len(clients)):
            raise ConfigError(
                f"netbench scenario {source} has {need[0]} servers and {need[1]} clients, but the environment has "
                f"{len(servers)} hosts in role {sec.server_role!r} and {len(clients)} in {sec.client_role!r}: "
                "servers[i] runs on server host i and clients[j] on client host j, so the counts must match")

    def extra_roles(self, sec: NetbenchSection) -> Roles:
        return Roles()

    def server_ports(self, sec: NetbenchSection) -> dict[Host, list[int]]:
        return {host: [sec.port] for host in self.roles.select(sec.server_role)}

    # ── before the first run: the scenario on every host ────────────────────

    def prepare(self, session: Session, sections: Sequence[NetbenchSection]) -> None:
        for sec in sections:
            key = self._scenario_key(sec)
            if key in self.scenarios:
                continue
            name, text = self._scenario_text(session, sec)
            scenario = json.loads(text)
            self._check_counts(sec, scenario, name)
            self._push(session, sec.scenario_dir, name, text)
            stem = Path(sec.scenario).stem if sec.scenario else sec.generate.name if sec.generate else "scenario"
            self.scenarios[key] = {"name": name, "id": stem, "data": scenario}
        self._install_builds(session, sections)

    def _install_builds(self, session: Session, sections: Sequence[NetbenchSection]) -> None:
        """Each build the runs name, on the hosts that run it, with the drivers it is run with."""
        self.builds = install_builds(session, (
            (sec.build, sec.bin_dir, [f"s2n-netbench-driver-{side}-{sec.run_driver}" for side in ("server", "client")],
             [*self.roles.select(sec.server_role), *self.roles.select(sec.client_role)])
            for sec in sections if sec.build is not None), experiment=self.source)

    @staticmethod
    def _scenario_key(sec: NetbenchSection) -> str:
        return sec.scenario or json.dumps(sec.generate.model_dump() if sec.generate else {}, sort_keys=True)

    def _scenario_text(self, session: Session, sec: NetbenchSection) -> tuple[str, str]:
        if sec.scenario is not None:
            return Path(sec.scenario).name, Path(sec.scenario).read_text()
        assert sec.generate is not None
        gen = sec.generate
        digest = hashlib.sha256(self._scenario_key(sec).encode()).hexdigest()[:8]
        out_dir = f"{sec.scenario_dir}/generated-{digest}"
        options = " ".join(shlex.quote(arg) for arg in generator_args(gen))
        host = self.roles.select(sec.server_role)[0]
        out = session.run(host, f"mkdir -p {shlex.quote(out_dir)} && {shlex.quote(gen.program)} {options} "
                              f"{shlex.quote(out_dir)} >&2 && cat {shlex.quote(out_dir)}/{shlex.quote(gen.name)}.json",
                        timeout=60)
        if not out.ok:
            said = " ".join(line.strip() for line in ANSI.sub("", out.stderr).splitlines()[:3] if line.strip())
            raise ConfigError(f"{self.where('netbench', 'generate', 'options')}: s2n-netbench-scenarios on "
                              f"{host.name} refused the options {options}: {said[:300]}")
        return f"{gen.name}-{digest}.json", out.stdout

    def _push(self, session: Session, folder: str, name: str, text: str) -> None:
        command = f"mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(folder + '/' + name)}"
        session.run_all({h: command for h in self.roles.all()}, stdin=text.encode(),
                        timeout=30).raise_for_failures(f"copying scenario {name} to the hosts")

    # ── one run ─────────────────────────────────────────────────────────────

    async def execute(self, coordinator: Coordinator, sec: NetbenchSection, *, duration_s: float,
                      timeout_s: float) -> Executed:
        driver = sec.run_driver
        key = self._scenario_key(sec)
        scenario = self.scenarios[key]["name"]
        servers = self.roles.select(sec.server_role)
        label = sec.build.label if sec.build else None

        def binary(side: str) -> str:
            name = f"s2n-netbench-driver-{side}-{driver}"
            return installed_name(name, label) if label else name

        await coordinator.start(sec.server_role, SERVER_ACTION,
                                {"scenario": scenario, "port": sec.port, "transport": transport(driver),
                                 "driver": binary("server")})
        server_records: list[WorkerRecord] = []
        try:
            await coordinator.wait_ready(sec.server_role)
            addresses = [f"{_bracket(h.address)}:{sec.port}" for h in servers]
            clients = await coordinator.run(sec.client_role, CLIENT_ACTION,
                                            {"scenario": scenario, "driver": binary("client"),
                                             "servers": addresses}, deadline_s=timeout_s)
        finally:
            server_records = await coordinator.stop(sec.server_role)
        records = [Labelled(SERVER_ACTION, r.worker, sec.server_role, r) for r in server_records]
        records += [Labelled(CLIENT_ACTION, r.worker, sec.client_role, r, client=True) for r in clients]
        scheduled = min((r.scheduled_ns - (r.offset_ns or 0) for r in clients if r.scheduled_ns), default=None)
        context = {"driver": driver, "scenario": str(self.scenarios[key]["id"]), "key": key, "build": label or ""}
        for role in (sec.server_role, sec.client_role):
            context.update({f"index:{h.name}": str(i) for i, h in enumerate(self.roles.select(role))})
        return Executed(records, scheduled, context)

    def parse(self, executed: Executed, folder: Path, *, started_ns: int | None) -> Measured:
        out = Measured()
        driver, scenario_id = executed.context.get("driver", "unknown"), executed.context.get("scenario", "scenario")
        scenario = self.scenarios.get(executed.context.get("key", ""), {}).get("data") or {}
        tree = folder / "netbench" / scenario_id / driver
        received: list[float] = []
        build = self.builds.get(executed.context.get("build", ""))
        for item in executed.records:
            client = item.record.action == CLIENT_ACTION
            pulled = folder / item.host / item.label
            if build is not None:
                side = "client" if client else "server"
                out.metadata += build_metadata(build, item.host, f"s2n-netbench-driver-{side}-{driver}")
            try:
                trace = parse_trace((pulled / "stderr").read_text(errors="replace").splitlines())
            except OSError as exc:
                out.problems.append(f"{item.host}: no driver output: {exc.strerror}")
                continue
            offset = _seconds_after(item.record.start_coordinator_ns, started_ns)
            index = int(executed.context.get(f"index:{item.host}", "0"))
            if not client:
                out.metrics += _usage_metrics(pulled, item.record, host=item.host, prefix="server_")
                _write_report_file(tree / f"server-{index}.json", item, trace, None)
                continue
            result = _client_result(item, trace, scenario, index, pulled)
            out.metrics += result.metrics
            out.samples += trace_samples(trace, host=item.host, offset=offset)
            out.metadata += result.metadata
            out.problems += result.problems
            received += [m.value for m in result.metrics if m.name == "throughput"]
            _write_report_file(tree / f"client-{index}.json", item, trace, result)
        if received and len(received) == len(executed.clients) and not out.problems:
            out.headline = ("throughput", sum(received), "bit/s")
        return out


@dataclass
class ClientResult:
    """One client's figures, what they rest on, and why the run fails if it does."""

    metrics: list[Metric] = field(default_factory=list)
    metadata: list[HostMeta] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    received: float = 0.0
    sent: float = 0.0
    seconds: float = 0.0


def _client_result(item: Labelled, trace: Trace, scenario: Mapping[str, Any], index: int,
                   pulled: Path) -> ClientResult:
    """Bytes, throughput over the run, CPU and memory of one client, checked three ways.

    A client that completes its scenario has received exactly what the
    scenario sends it (the driver fails otherwise), so its bytes come from
    the scenario; its throughput is those bytes over the driver's own run time
    (exec to exit, measured by the agent). The trace lines must not exceed
    them, and the host's interface counters must agree within 10 %.
    """
    host, record, out = item.host, item.record, ClientResult()
    expected_rx, expected_tx = scenario_bytes(scenario, index)
    traced_rx, traced_tx = trace.totals()
    if trace.error:
        out.problems.append(f"{host}: the client failed: {trace.error}")
    elif record.state == "exited" and record.rc not in (0, None):
        out.problems.append(f"{host}: the client exited {record.rc} without saying why")
    if record.state != "exited" or record.rc != 0 or trace.error:
        return out
    if expected_rx is not None and traced_rx > expected_rx * 1.02 + 1500:
        out.problems.append(f"{host}: the client received {traced_rx:.0f} bytes, more than the {expected_rx} its "
                            "scenario sends: the scenario on the host is not the one enosnet read")
    out.received = float(expected_rx) if expected_rx is not None else traced_rx
    out.sent = float(expected_tx) if expected_tx is not None else traced_tx
    source = "scenario" if expected_rx is not None else "driver-trace (lower bound)"
    out.seconds = record.seconds or 0.0
    if out.seconds <= 0:
        out.problems.append(f"{host}: the client's run time is unknown (start or end not reported)")
        return out
    out.metrics += [Metric(host, "bytes_received", out.received, "bytes"),
                    Metric(host, "bytes_sent", out.sent, "bytes"),
                    Metric(host, "duration", out.seconds, "s"),
                    Metric(host, "throughput", out.received * 8 / out.seconds, "bit/s"),
                    Metric(host, "throughput_sent", out.sent * 8 / out.seconds, "bit/s"),
                    Metric(host, "bytes_received_traced", traced_rx, "bytes")]
    out.metrics += _usage_metrics(pulled, record, host=host)
    out.metadata += [HostMeta(host, "netbench.measured_by", f"driver-trace; bytes from the {source}", "driver"),
                     *_cross_check(host, pulled, out)]
    return out


def _cross_check(host: str, pulled: Path, result: ClientResult) -> list[HostMeta]:
    """The host's interface bytes received during the run against the client's bytes; flagged beyond 10 %."""
    counted = interface_bytes(pulled / "samples.jsonl")
    if counted is None or result.received <= 0:
        return [HostMeta(host, "netbench.cross_check", "no interface counters", "agent")]
    ratio = counted[0] / result.received
    result.metrics.append(Metric(host, "iface_rx_ratio", ratio, "ratio"))
    verdict = "agrees" if abs(ratio - 1) <= CROSS_CHECK_TOLERANCE else "FLAGGED: differs by more than 10 %"
    drops = udp_receive_drops(pulled / "samples.jsonl")
    if drops is not None:
        result.metrics.append(Metric(host, "udp_rcvbuf_drops", float(drops), "datagrams"))
    if drops:  # the usual reason for a QUIC client's interface to count far more than its bytes
        verdict += (f"; the host's UDP sockets dropped {drops} datagrams with their receive buffer full "
                    "(what the server sent again crossed the interface twice)")
    return [HostMeta(host, "netbench.cross_check",
                     f"interface received {counted[0]} bytes = {ratio:.3f} x the client's: {verdict}", "agent")]


def _usage_metrics(pulled: Path, record: WorkerRecord, *, host: str, prefix: str = "") -> list[Metric]:
    """The driver's CPU (% of one core over its run) and peak memory, from the agent's rusage."""
    try:
        usage = json.loads((pulled / "run.json").read_text()).get("usage") or {}
    except (OSError, ValueError):
        return []
    seconds = record.seconds or 0.0
    out = [Metric(host, f"{prefix}memory_max", float(usage.get("max_rss_kib", 0)) * 1024, "B")]
    if seconds > 0:
        cpu = float(usage.get("user_s", 0)) + float(usage.get("system_s", 0))
        out.append(Metric(host, f"{prefix}cpu", 100 * cpu / seconds, "%"))
    return out


def _write_report_file(path: Path, item: Labelled, trace: Trace, result: ClientResult | None) -> None:
    """One endpoint of the run as ``s2n-netbench report-tree`` reads it (the collector's format).

    Drivers here are not run under the collector (see the module docstring),
    so the file is written from what was measured: the header, then one line
    per trace interval with the bytes received and sent in it, and for a
    client a last line with what the trace's last interval left out. The file
    is named ``server-<i>``/``client-<i>``: report-tree tells servers from
    clients by the file name, so a host name must not decide it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"pid": item.record.pid or 0, "driver": f"{path.parent.name}-{path.stem}",
              "scenario": path.parent.parent.name, "start_time": _epoch(item.record.start_ns)}
    lines = [json.dumps(header)] + [json.dumps(_interval(t, rx, tx)) for t, rx, tx in trace.intervals()]
    last = trace.points[-1].t if trace.points else 0.0
    if result is not None and result.seconds > last:
        rx, tx = trace.totals()
        lines.append(json.dumps(_interval(result.seconds, max(result.received - rx, 0), max(result.sent - tx, 0))))
    path.write_text("\n".join(lines) + "\n")


def _interval(t: float, rx: float, tx: float) -> dict[str, Any]:
    stream = "0:0"
    return {"t": int(t * 1000), "send": {stream: {"count": 1, "total": int(tx)}},
            "receive": {stream: {"count": 1, "total": int(rx)}}}


def _epoch(ns: int | None) -> dict[str, int]:
    ns = ns or 0
    return {"secs_since_epoch": ns // 10**9, "nanos_since_epoch": ns % 10**9}


def _seconds_after(start_ns: int | None, origin_ns: int | None) -> float:
    return 0.0 if start_ns is None or origin_ns is None else (start_ns - origin_ns) / 1e9


def generator_args(gen: NetbenchScenarioArgs) -> list[str]:
    """``s2n-netbench-scenarios`` options as it takes them: ``--<scenario>.<option> <value>``, flags bare.

    >>> generator_args(NetbenchScenarioArgs(options={"response_size": "1MB", "parallel": True, "count": 2}))
    ['--request_response.response_size', '1MB', '--request_response.parallel', '--request_response.count', '2']
    """
    args: list[str] = []
    for option, value in gen.options.items():
        if value is False:
            continue
        args.append(f"--{gen.name}.{option}")
        if value is not True:
            args.append(str(value))
    return args


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _read_scenario(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"netbench scenario {path}: cannot read it as JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"netbench scenario {path}: not a JSON object")
    return data


def transport(driver: str) -> str:
    """What a netbench driver's server listens on: QUIC drivers on UDP, the others (tcp, s2n-tls, ...) on TCP.

    >>> transport("s2n-quic"), transport("tcp"), transport("s2n-tls")
    ('udp', 'tcp', 'tcp')
    """
    return "udp" if "quic" in driver else "tcp"

"""s2n-netbench: every server and client of a scenario, each under s2n-netbench-collector.

Scenario ``servers[i]`` runs on server host ``i`` and ``clients[j]`` on client
host ``j`` (the numbers must match, checked before anything runs); each gets
``SERVER_ID`` / ``CLIENT_ID`` from its index and clients get ``SERVER_<i>``
for every server. The ``drivers`` listed are compared as a parameter named
``driver``. The collectors' JSON lines become metrics and samples; the raw
files are also kept in the layout ``s2n-netbench report-tree`` reads:
``runs/<run>/netbench/<scenario>/<driver>/<host>-{server,client}.json``.

>>> lines = ['{"pid": 1, "driver": "d", "scenario": "s", "start_time": {}, "traces": []}',
...          '{"t": 1000, "cpu": 50.0, "memory": 4096, "receive": {"0:0": {"count": 1, "total": 125000}}}']
>>> m = parse_collector(lines, host="c0")
>>> [(x.name, x.value) for x in m.metrics if x.name in ("throughput", "cpu")]
[('throughput', 1000000.0), ('cpu', 50.0)]
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from enosnet.bench.drivers.base import Driver, Executed, Labelled, Measured
from enosnet.bench.hostio import Shell, fan_out
from enosnet.bench.spec import NetbenchSection
from enosnet.coordinator import Coordinator, WorkerRecord
from enosnet.errors import BenchError, ConfigError
from enosnet.model import Host, Roles
from enosnet.results.store import Metric, Sample

SERVER_ACTION, CLIENT_ACTION = "netbench-server", "netbench-client"


class NetbenchDriver(Driver):
    """``driver: netbench`` (see the module docstring)."""

    name = "netbench"
    actions = (SERVER_ACTION, CLIENT_ACTION)

    def __init__(self, roles: Roles) -> None:
        super().__init__(roles)
        self.scenarios: dict[str, dict[str, Any]] = {}

    def section(self, data: Mapping[str, Any]) -> tuple[NetbenchSection, str]:
        """The validated section and the run's netbench driver (``tcp``, ``s2n-quic``, …)."""
        values = dict(data)
        driver = str(values.pop("driver", ""))
        try:
            sec = NetbenchSection.model_validate(values)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"netbench section after substituting parameters: {problems}") from None
        return sec, driver or sec.drivers[0]

    def validate(self, section: Mapping[str, Any]) -> None:
        sec, driver = self.section(section)
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

    def extra_roles(self, section: Mapping[str, Any]) -> Roles:
        return Roles()

    def server_ports(self, section: Mapping[str, Any]) -> dict[Host, list[int]]:
        sec, _ = self.section(section)
        return {host: [sec.port] for host in self.roles.select(sec.server_role)}

    # ── before the first run: the scenario on every host ────────────────────

    def prepare(self, shell: Shell, sections: Sequence[Mapping[str, Any]]) -> None:
        for section in sections:
            sec, _ = self.section(section)
            key = self._scenario_key(sec)
            if key in self.scenarios:
                continue
            name, text = self._scenario_text(shell, sec)
            scenario = json.loads(text)
            self._check_counts(sec, scenario, name)
            self._push(shell, sec.scenario_dir, name, text)
            self.scenarios[key] = {"name": name, "id": str(scenario.get("id") or Path(name).stem)}

    @staticmethod
    def _scenario_key(sec: NetbenchSection) -> str:
        return sec.scenario or json.dumps(sec.generate.model_dump() if sec.generate else {}, sort_keys=True)

    def _scenario_text(self, shell: Shell, sec: NetbenchSection) -> tuple[str, str]:
        if sec.scenario is not None:
            return Path(sec.scenario).name, Path(sec.scenario).read_text()
        assert sec.generate is not None
        gen = sec.generate
        digest = hashlib.sha256(self._scenario_key(sec).encode()).hexdigest()[:8]
        out_dir = f"{sec.scenario_dir}/generated-{digest}"
        options = " ".join(f"--{shlex.quote(gen.name)}.{shlex.quote(k)} {shlex.quote(str(v))}"
                           for k, v in gen.options.items())
        host = self.roles.select(sec.server_role)[0]
        out = shell.run(host, f"mkdir -p {shlex.quote(out_dir)} && {shlex.quote(gen.program)} {shlex.quote(out_dir)} "
                              f"{options} && cat {shlex.quote(out_dir)}/{shlex.quote(gen.name)}.json", timeout=60)
        if not out.ok:
            raise BenchError(f"{host.name}: s2n-netbench-scenarios failed: {out.stderr.strip()[-300:]}")
        return f"{gen.name}-{digest}.json", out.text

    def _push(self, shell: Shell, folder: str, name: str, text: str) -> None:
        command = f"mkdir -p {shlex.quote(folder)} && cat > {shlex.quote(folder + '/' + name)}"
        hosts = list(self.roles.all())
        results = fan_out(hosts, lambda h: shell.run(h, command, stdin=text.encode(), timeout=30))
        failed = [f"{h.name}: {r.stderr.strip()}" for h, r in results.items() if not r.ok]
        if failed:
            raise BenchError(f"copying scenario {name} to the hosts failed: {'; '.join(failed)}")

    # ── one run ─────────────────────────────────────────────────────────────

    async def execute(self, coordinator: Coordinator, section: Mapping[str, Any], *, duration_s: float,
                      timeout_s: float) -> Executed:
        sec, driver = self.section(section)
        scenario = self.scenarios[self._scenario_key(sec)]["name"]
        common = {"scenario": scenario, "port": sec.port, "trace": sec.trace}
        servers = self.roles.select(sec.server_role)
        await coordinator.start(sec.server_role, SERVER_ACTION,
                                {**common, "driver": f"s2n-netbench-driver-server-{driver}",
                                 "transport": transport(driver)})
        server_records: list[WorkerRecord] = []
        try:
            await coordinator.wait_ready(sec.server_role)
            addresses = [f"{_bracket(h.address)}:{sec.port}" for h in servers]
            clients = await coordinator.run(sec.client_role, CLIENT_ACTION,
                                            {**common, "driver": f"s2n-netbench-driver-client-{driver}",
                                             "servers": addresses}, deadline_s=timeout_s)
        finally:
            server_records = await coordinator.stop(sec.server_role)
        records = [Labelled(SERVER_ACTION, r.worker, sec.server_role, r) for r in server_records]
        records += [Labelled(CLIENT_ACTION, r.worker, sec.client_role, r) for r in clients]
        scheduled = min((r.scheduled_ns - (r.offset_ns or 0) for r in clients if r.scheduled_ns), default=None)
        scenario_id = str(self.scenarios[self._scenario_key(sec)]["id"])
        return Executed(records, scheduled, {"driver": driver, "scenario": scenario_id})

    def parse(self, executed: Executed, folder: Path, *, started_ns: int | None) -> Measured:
        out = Measured()
        driver, scenario = executed.context.get("driver", "unknown"), executed.context.get("scenario", "scenario")
        tree = folder / "netbench" / scenario / driver
        for item in executed.records:
            side = "client" if item.record.action == CLIENT_ACTION else "server"
            path = folder / item.host / item.label / "stdout"
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                out.problems.append(f"{item.host}: no collector output: {exc.strerror}")
                continue
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, tree / f"{item.host}-{side}.json")
            parsed = parse_collector(lines, host=item.host)
            out.metrics += parsed.metrics
            out.samples += parsed.samples
            if side == "client":
                out.problems += parsed.problems
        total = sum(m.value for m in out.metrics if m.name == "throughput")
        if any(m.name == "throughput" for m in out.metrics):
            out.headline = ("throughput", total, "bit/s")
        return out


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


def parse_collector(lines: Sequence[str], *, host: str) -> Measured:
    """Metrics and samples from one collector's JSON lines (header first, then one line per interval)."""
    out = Measured()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            value = json.loads(line)
        except ValueError:
            out.problems.append(f"{host}: collector output line {number} is not JSON")
            continue
        if isinstance(value, dict):
            records.append(value)
    if not records or "pid" not in records[0]:
        out.problems.append(f"{host}: collector output has no header line")
        return out
    intervals = [r for r in records[1:] if isinstance(r.get("t"), int | float)]
    received = sent = 0
    previous_t = 0.0
    cpus: list[float] = []
    memory = 0.0
    for point in intervals:
        t = float(point["t"]) / 1000
        rx, tx = _bytes(point.get("receive")), _bytes(point.get("send"))
        received, sent = received + rx, sent + tx
        if t > previous_t:
            out.samples.append(Sample(host, "throughput", t, rx * 8 / (t - previous_t), "bit/s"))
        previous_t = max(previous_t, t)
        if "cpu" in point:
            cpus.append(float(point["cpu"]))
            out.samples.append(Sample(host, "cpu_process", t, float(point["cpu"]), "%"))
        memory = max(memory, float(point.get("memory") or 0))
    if previous_t > 0:
        out.metrics += [Metric(host, "throughput", received * 8 / previous_t, "bit/s"),
                        Metric(host, "throughput_sent", sent * 8 / previous_t, "bit/s"),
                        Metric(host, "bytes_received", float(received), "bytes")]
    if cpus:
        out.metrics.append(Metric(host, "cpu", sum(cpus) / len(cpus), "%"))
    if memory:
        out.metrics.append(Metric(host, "memory_max", memory, "B"))
    return out


def _bytes(streams: Any) -> int:
    if not isinstance(streams, dict):
        return 0
    return sum(int(s.get("total", 0)) for s in streams.values() if isinstance(s, dict))


def transport(driver: str) -> str:
    """What a netbench driver's server listens on: QUIC drivers on UDP, the others (tcp, s2n-tls, ...) on TCP.

    >>> transport("s2n-quic"), transport("tcp"), transport("s2n-tls")
    ('udp', 'tcp', 'tcp')
    """
    return "udp" if "quic" in driver else "tcp"

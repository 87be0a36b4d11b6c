"""Before measuring, show that the environment works: every check yields results that are stored.

Hosts reachable, agents ready with clock offsets in bounds, no leftover
benchmark process or port held, MTU consistent, base RTT in bounds, and every
netem setting the experiment asks for actually in place (measured RTT vs
requested delay).

>>> listening_ports("  0: 00000000:1451 00000000:0000 0A 0 0\\n  1: 00000000:1452 0100007F:0001 01 0 0")
{5201}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import median

from enosnet.bench.conditions import Conditions
from enosnet.bench.spec import ChecksSection
from enosnet.emulation.rtt import parse_pings, ping_command
from enosnet.errors import EnosnetError
from enosnet.model import Host, Roles
from enosnet.remote.session import Session
from enosnet.results.store import CheckResult, HostMeta

LEFTOVER_COMMAND = ("pgrep -a -x iperf3; pgrep -a -f '[s]2n-netbench-'; echo @@PORTS@@; "
                    "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true")
PING_COUNT, PING_INTERVAL = 5, 0.05


@dataclass
class Checks:
    """Check results gathered so far; ``failed`` are those that stop the experiment."""

    results: list[CheckResult] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str = "", host: str | None = None) -> CheckResult:
        result = CheckResult(name, ok, detail, host)
        self.results.append(result)
        return result

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def forced(self) -> list[CheckResult]:
        """The results with every failure marked as overridden (``--force``)."""
        return [r if r.ok else CheckResult(r.name, r.ok, r.detail, r.host, forced=True) for r in self.results]

    def summary(self) -> str:
        lines = [f"  {r.name}{f' on {r.host}' if r.host else ''}: {r.detail}" for r in self.failed]
        return f"{len(self.failed)} environment check(s) failed:\n" + "\n".join(lines)


def check_reachable(session: Session, hosts: Sequence[Host], checks: Checks) -> list[Host]:
    """Every host answers a trivial command over SSH; returns the reachable ones."""
    outputs = session.run_all({h: "true" for h in hosts}, timeout=20)
    for host, out in outputs.items():
        checks.add("reachable", out.ok, "ssh ok" if out.ok else (out.stderr.strip()[-200:] or f"rc {out.rc}"),
                   host.name)
    return [h for h, out in outputs.items() if out.ok]


def check_clocks(offsets: Mapping[str, tuple[float, float]], bounds: ChecksSection, checks: Checks) -> None:
    """Each agent answered; its clock offset (ms) against the controller is within the bound."""
    limit_ms = bounds.max_clock_offset * 1000
    for worker, (offset_ms, rtt_ms) in sorted(offsets.items()):
        checks.add("agent", True, f"ready (control RTT {rtt_ms:.2f} ms)", worker)
        ok = abs(offset_ms) <= limit_ms
        checks.add("clock_offset", ok, f"{offset_ms:+.3f} ms (bound ±{limit_ms:g} ms)", worker)


def check_leftovers(session: Session, hosts: Sequence[Host], ports: Mapping[Host, Sequence[int]],
                    checks: Checks) -> None:
    """No benchmark process already running, no server port already taken."""
    outputs = session.run_all({h: LEFTOVER_COMMAND for h in hosts}, timeout=20)
    for host, out in outputs.items():
        procs, _, tcp = out.stdout.partition("@@PORTS@@")
        running = [line.strip() for line in procs.splitlines() if line.strip()]
        taken = sorted(set(ports.get(host, ())) & listening_ports(tcp))
        problems = []
        if running:
            problems.append("benchmark processes still running: " + "; ".join(running[:5]))
        if taken:
            problems.append(f"port(s) {', '.join(map(str, taken))} already listening")
        checks.add("leftovers", not problems, "; ".join(problems) or "none", host.name)


def listening_ports(proc_net_tcp: str) -> set[int]:
    """Ports in LISTEN state in /proc/net/tcp{,6} text."""
    ports = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A" and ":" in fields[1]:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def check_mtu(metadata: Iterable[HostMeta], hosts: Sequence[Host], checks: Checks) -> None:
    """Every host's interface toward the others has the same MTU."""
    mtus = {m.host: m.value for m in metadata if m.key == "net.mtu"}
    missing = [h.name for h in hosts if h.name not in mtus]
    values = sorted(set(mtus.values()))
    ok = len(values) <= 1 and not missing
    detail = f"MTU {values[0]} everywhere" if ok and values else (
        "MTUs differ: " + ", ".join(f"{h}={v}" for h, v in sorted(mtus.items()))
        + (f"; unknown on {', '.join(missing)}" if missing else ""))
    checks.add("mtu", ok, detail)


def measure_rtts(session: Session, pairs: Mapping[Host, Sequence[Host]]) -> dict[tuple[str, str], float | None]:
    """Average ping RTT (s) from each host to each of its peers; one command per source, its pings at once."""
    commands = {src: ping_command([p.address for p in peers], count=PING_COUNT, interval=PING_INTERVAL)
                for src, peers in pairs.items() if peers}
    rtts: dict[tuple[str, str], float | None] = {}
    for src, out in session.run_all(commands, timeout=60).items():
        pings = parse_pings(out.stdout)
        for peer in pairs[src]:
            ping = pings.get(peer.address)
            rtts[(src.name, peer.name)] = ping.rtt_s if ping else None
    return rtts


def pairs_between(roles: Roles, a: str, b: str) -> dict[Host, list[Host]]:
    return {src: [dst for dst in roles.select(b) if dst != src] for src in roles.select(a)}


def check_base_rtt(session: Session, pairs: Mapping[Host, Sequence[Host]], bounds: ChecksSection,
                   checks: Checks) -> dict[tuple[str, str], float | None]:
    """RTT between the groups without netem, within ``max_rtt``; returns it as the baseline."""
    rtts = measure_rtts(session, pairs)
    for (src, dst), rtt in sorted(rtts.items()):
        ok = rtt is not None and rtt <= bounds.max_rtt
        shown = "no answer" if rtt is None else f"{rtt * 1000:.3f} ms"
        checks.add("rtt", ok, f"{src} → {dst}: {shown} (bound {bounds.max_rtt * 1000:g} ms)", src)
    return rtts


def check_netem(session: Session, roles: Roles, settings: Sequence[Conditions], bounds: ChecksSection,
                baseline: Mapping[tuple[str, str], float | None], checks: Checks, *,
                apply: Callable[[Conditions], None], clear: Callable[[Conditions], None]) -> None:
    """Apply each netem setting in turn and check the measured RTT is the base plus what was asked."""
    base = median([v for v in baseline.values() if v is not None] or [0.0])
    for conditions in settings:
        if not conditions.active:
            continue
        label = conditions.label
        try:
            apply(conditions)
            rtts = measure_rtts(session, pairs_between(roles, *conditions.between))
        except EnosnetError as exc:
            checks.add("netem", False, f"{label}: {exc}")
            continue
        finally:
            clear(conditions)
        expected = base + conditions.expected_extra_rtt_s
        slack = max(bounds.rtt_tolerance, bounds.rtt_tolerance_ratio * conditions.expected_extra_rtt_s)
        for (src, dst), rtt in sorted(rtts.items()):
            ok = rtt is not None and abs(rtt - expected) <= slack
            shown = "no answer" if rtt is None else f"{rtt * 1000:.2f} ms"
            checks.add("netem", ok, f"{label}: {src} → {dst} RTT {shown}, expected {expected * 1000:.2f} "
                                    f"± {slack * 1000:.2f} ms", src)

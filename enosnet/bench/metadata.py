"""Host metadata: what each host was (kernel, CPU, NIC, offloads, sysctls, tool versions) when it measured.

Collected with ONE command per host (a small Python program reading /proc,
/sys and a few tools, printing one JSON object): once per experiment, and per
run for what a run can change (qdisc, MTU, congestion control).

>>> items = parse_metadata("h0", '{"kernel": "6.1.0", "nic.eth0.offload.tso": "on"}', source="probe")
>>> [(m.key, m.value) for m in items]
[('kernel', '6.1.0'), ('nic.eth0.offload.tso', 'on')]
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from typing import Literal

from enosnet.model import Host
from enosnet.remote.session import Session
from enosnet.results.store import HostMeta

Scope = Literal["experiment", "run"]

# Runs on the host with its python3 (the agent needs it anyway): stdlib only, Python 3.8+.
PROBE = r'''
import json, os, platform, re, subprocess, sys
full = sys.argv[1] == "experiment"
out = {}
def sh(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return ""
def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
ifaces = sorted(n for n in os.listdir("/sys/class/net") if n != "lo")
for line in sh("ip", "-o", "addr", "show").splitlines():
    parts = line.split()
    if len(parts) > 3 and parts[3].split("/")[0] == sys.argv[2]:
        out["net.iface"] = parts[1]
        out["net.mtu"] = read("/sys/class/net/%s/mtu" % parts[1])
for name in ifaces:
    out["mtu." + name] = read("/sys/class/net/%s/mtu" % name)
    out["qdisc." + name] = " | ".join(l.strip() for l in sh("tc", "qdisc", "show", "dev", name).splitlines())
for key in ("net.ipv4.tcp_congestion_control", "net.core.default_qdisc"):
    out["sysctl." + key] = read("/proc/sys/" + key.replace(".", "/"))
if full:
    out["kernel"] = platform.release()
    os_release = dict(re.findall(r'^(\w+)="?([^"\n]*)"?$', read("/etc/os-release"), re.M))
    out["os"] = os_release.get("PRETTY_NAME", platform.system())
    models = re.findall(r"^model name\s*:\s*(.*)$", read("/proc/cpuinfo"), re.M)
    out["cpu.model"] = models[0] if models else platform.machine()
    out["cpu.count"] = str(os.cpu_count())
    mem = re.search(r"^MemTotal:\s*(\d+) kB", read("/proc/meminfo"), re.M)
    out["memory.total_mib"] = str(int(mem.group(1)) // 1024) if mem else ""
    # the host's own limits, from the control group it sees at /sys/fs/cgroup (v2, else v1's hierarchies)
    cg = "/sys/fs/cgroup/"
    quota = read(cg + "cpu.max").split() or [read(cg + "cpu/cpu.cfs_quota_us"), read(cg + "cpu/cpu.cfs_period_us")]
    out["limits.cpus"] = ("%g" % (int(quota[0]) / int(quota[1])) if len(quota) == 2 and quota[0].isdigit()
                          and quota[1].isdigit() and int(quota[1]) else "none")
    memory = read(cg + "memory.max") or read(cg + "memory/memory.limit_in_bytes")
    out["limits.memory_mib"] = str(int(memory) // 2**20) if memory.isdigit() and int(memory) < 2**60 else "none"
    out["limits.cpuset"] = (read(cg + "cpuset.cpus.effective") or read(cg + "cpuset/cpuset.effective_cpus")
                            or read(cg + "cpuset/cpuset.cpus") or "none")
    out["cpu.allowed"] = str(len(os.sched_getaffinity(0)))
    for key in ("net.ipv4.tcp_available_congestion_control", "net.core.rmem_max", "net.core.wmem_max",
                "net.core.rmem_default", "net.core.wmem_default", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
                "net.ipv4.tcp_mtu_probing", "net.core.netdev_max_backlog"):
        out["sysctl." + key] = " ".join(read("/proc/sys/" + key.replace(".", "/")).split())
    for name in ifaces:
        info = dict(l.split(": ", 1) for l in sh("ethtool", "-i", name).splitlines() if ": " in l)
        out["nic.%s.driver" % name] = info.get("driver", os.path.basename(os.path.realpath(
            "/sys/class/net/%s/device/driver" % name)) if os.path.exists("/sys/class/net/%s/device" % name) else "")
        for line in sh("ethtool", "-k", name).splitlines()[1:]:
            m = re.match(r"^([\w-]+): (on|off)", line.strip())
            if m:
                out["nic.%s.offload.%s" % (name, m.group(1))] = m.group(2)
        out["nic.%s.speed" % name] = read("/sys/class/net/%s/speed" % name)
    for tool, argv in (("iperf3", ["iperf3", "--version"]), ("python3", [sys.executable, "--version"]),
                       ("s2n-netbench-collector", ["s2n-netbench-collector", "--version"]),
                       ("ethtool", ["ethtool", "--version"]), ("tc", ["tc", "-V"])):
        text = sh(*argv)
        out["version." + tool] = text.splitlines()[0] if text else "not installed"
print(json.dumps(out))
'''


# What a run can change, in plain shell (no interpreter start-up: this runs after every run).
RUN_PROBE = (
    "for d in /sys/class/net/*; do n=${d##*/}; [ \"$n\" = lo ] && continue; "
    "echo \"mtu.$n=$(cat $d/mtu)\"; echo \"qdisc.$n=$(tc qdisc show dev $n 2>/dev/null | tr '\\n' '|')\"; done; "
    "echo \"sysctl.net.ipv4.tcp_congestion_control=$(cat /proc/sys/net/ipv4/tcp_congestion_control)\"; "
    "echo \"sysctl.net.core.default_qdisc=$(cat /proc/sys/net/core/default_qdisc)\""
)


def parse_run_probe(host: str, text: str) -> list[HostMeta]:
    """``HostMeta`` items from ``RUN_PROBE``'s ``key=value`` lines.

    >>> [(m.key, m.value) for m in parse_run_probe("h", "mtu.eth0=1500\\nqdisc.eth0=qdisc noqueue 0: root|")]
    [('mtu.eth0', '1500'), ('qdisc.eth0', 'qdisc noqueue 0: root')]
    """
    items = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Za-z0-9_.:-]+", key) and value.strip(" |"):
            items.append(HostMeta(host, key, value.strip(" |"), "probe:run"))
    return items


def probe_command(scope: Scope, address: str, python: str = "python3") -> str:
    """The one shell command that prints a host's metadata as JSON (``address``: the host's own, to find its NIC)."""
    return f"{shlex.quote(python)} -c {shlex.quote(PROBE)} {scope} {shlex.quote(address)}"


def parse_metadata(host: str, text: str, *, source: str) -> list[HostMeta]:
    """``HostMeta`` items from the probe's JSON (empty values dropped)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("metadata probe did not print a JSON object")
    return [HostMeta(host, str(k), str(v), source) for k, v in data.items() if v not in ("", None)]


def collect(session: Session, hosts: Sequence[Host], scope: Scope, *, timeout: float = 30.0) -> tuple[
        list[HostMeta], dict[str, str]]:
    """Metadata of every host (one command each, in parallel) and, per host, why it failed."""
    commands = {h: probe_command(scope, h.address, _python(h)) for h in hosts}
    outputs = session.run_all(commands, timeout=timeout)
    items: list[HostMeta] = []
    errors: dict[str, str] = {}
    for host, out in outputs.items():
        try:
            if not out.ok:
                raise ValueError(out.stderr.strip()[-300:] or f"exit status {out.rc}")
            items += parse_metadata(host.name, out.stdout, source=f"probe:{scope}")
        except ValueError as exc:
            errors[host.name] = str(exc)
    return items, errors


def _python(host: Host) -> str:
    python = host.extra.get("ansible_python_interpreter")
    return str(python) if python else "python3"

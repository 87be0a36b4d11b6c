"""The local provider: many isolated hosts on this machine, built from Linux namespaces.

Each host is a network namespace with a veth on the environment's bridge, its
own hostname, a copy-on-write overlay of ``/`` and a PID namespace whose PID 1
(``hostinit.py``) reaps orphans, running its own sshd that accepts only the
environment's key. Addresses come from 198.18.0.0/15 and nothing routes
outside the bridge. Needs root.

Names carry a prefix (``enos``, or ``$ENOSNET_LOCAL_PREFIX``) so that
``destroy_all`` finds every host even without state: namespaces
``<prefix>-<tag>-<n>``, bridges ``<prefix>-<tag>``, veths ``<prefix>-<tag><n>``,
where ``<tag>`` is six hex digits derived from the environment directory. The
``-`` after the prefix keeps prefixes apart (``enos`` never matches ``enos1``'s
objects).

>>> names = Names("enos", "a1b2c3")
>>> names.netns(3), names.bridge, names.veth(3)
('enos-a1b2c3-3', 'enos-a1b2c3', 'enos-a1b2c33')

A host is a box, not the machine (see ``hostinit.py``): it sees none of the
machine's ``/root``, ``/home``, ``/tmp`` or enosnet environments, no disk
device, cannot set the clock or load modules (``DROPPED_CAPABILITIES``), and
on the gateway address reaches only the coordinator (``gateway_filter``).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enosnet.config import LocalProviderConfig, LocalRole
from enosnet.environment import make_keypair, registered, write_atomic
from enosnet.errors import ConfigError, PrivilegeError, ProviderError
from enosnet.model import Host, Network, Networks, Roles
from enosnet.providers import cgroups
from enosnet.providers.base import Provider, wait_ssh

NETNS_DIR = Path("/run/netns")
LOCK_FILE = Path("/run/enosnet-local.lock")
HOSTINIT = Path(__file__).with_name("hostinit.py")
TOOLS = ("ip", "unshare", "nsenter", "setpriv", "nft", "pivot_root", "/usr/sbin/sshd", "ssh-keygen")
DEFAULT_PREFIX = "enos"
IFNAMSIZ = 15
# Machine folders no host sees (beside every registered environment): root's and users' homes with
# their keys and cloud credentials, and the shared temporary folders.
HIDDEN = ("/root", "/home", "/tmp", "/var/tmp")
# Removed from every host's bounding set. A host keeps what its tools need: sshd (setuid, setgid,
# sys_chroot, chown, dac_override, fowner, kill, audit_write), tc, ip, iptables and nft (net_admin,
# net_raw), the agent's real-time start (sys_nice, ipc_lock) and bpftrace (bpf, perfmon, sys_resource).
# sys_admin goes too: with it a host could mount the machine's disk or unmount what hides its folders.
DROPPED_CAPABILITIES = ("sys_time", "sys_module", "sys_rawio", "sys_boot", "sys_admin", "mknod",
                        "dac_read_search", "sys_pacct", "syslog", "wake_alarm", "block_suspend",
                        "mac_admin", "mac_override", "audit_control", "linux_immutable", "sys_tty_config")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log = logging.getLogger(__name__)


def prefix_from_env() -> str:
    prefix = os.environ.get("ENOSNET_LOCAL_PREFIX", DEFAULT_PREFIX)
    if not re.fullmatch(r"[a-z][a-z0-9]{0,4}", prefix, flags=re.ASCII):
        raise ProviderError(f"ENOSNET_LOCAL_PREFIX={prefix!r}: must be 1-5 lowercase letters or digits, "
                            "starting with a letter")
    return prefix


@dataclass(frozen=True)
class Names:
    """How the local provider names the kernel objects of one environment."""

    prefix: str
    tag: str

    def netns(self, index: int) -> str:
        return f"{self.prefix}-{self.tag}-{index}"

    def veth(self, index: int) -> str:
        return f"{self.prefix}-{self.tag}{index}"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-{self.tag}"

    @property
    def nft_table(self) -> str:
        return f"enosnet_{self.prefix}_{self.tag}"

    @staticmethod
    def netns_pattern(prefix: str) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(prefix)}-[0-9a-f]{{6}}-[0-9]+", re.ASCII)

    @staticmethod
    def bridge_pattern(prefix: str) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(prefix)}-[0-9a-f]{{6}}", re.ASCII)

    @staticmethod
    def veth_pattern(prefix: str) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(prefix)}-[0-9a-f]{{6}}[0-9]+", re.ASCII)

    @staticmethod
    def nft_table_pattern(prefix: str) -> re.Pattern[str]:
        return re.compile(rf"enosnet_{re.escape(prefix)}_[0-9a-f]{{6}}", re.ASCII)


class LocalProvider(Provider):
    """Hosts made of namespaces on this machine (``provider: {kind: local}``)."""

    kind = "local"

    @property
    def settings(self) -> LocalProviderConfig:
        assert isinstance(self.config.provider, LocalProviderConfig)
        return self.config.provider

    def check(self) -> None:
        require_root_and_tools()
        self._check_cpusets(cgroups.detect())

    def _check_cpusets(self, layout: cgroups.Layout) -> None:
        """Every ``cpuset`` a role asks for is possible here (before anything is made)."""
        cores = layout.all_cpus()
        for role, spec in self.config.roles.items():
            cpuset = spec.cpuset if isinstance(spec, LocalRole) else None
            if cpuset and not layout.has_cpuset:
                raise ConfigError(f"roles.{role}.cpuset: this machine has no cpuset cgroup controller")
            if cpuset and cpuset != "auto" and not set(cgroups.parse_cpu_list(cpuset)) <= set(cores):
                raise ConfigError(f"roles.{role}.cpuset: {cpuset} names cores this machine does not have "
                                  f"(it has {cgroups.format_cpu_list(cores)})")

    def _acquire(self) -> tuple[Roles, Networks]:
        self._release()  # leftovers of an earlier, different or broken deployment
        names = Names(prefix_from_env(), self.env.tag)
        plan = [(role, i) for role, spec in self.config.roles.items() for i in range(spec.count)]
        if plan and len(names.veth(len(plan) - 1)) > IFNAMSIZ:
            raise ProviderError(f"{len(plan)} hosts are too many for the prefix {names.prefix!r}: the link name "
                                f"{names.veth(len(plan) - 1)} is longer than {IFNAMSIZ} characters",
                                hint="set a shorter ENOSNET_LOCAL_PREFIX")
        shared = self._shared()
        key = self.env.ensure_keypair()
        host_key = self.env.ssh_dir / "host_ed25519"
        if not host_key.exists():
            make_keypair(host_key, comment=f"enosnet-host-{self.env.name}")
        with machine_lock():
            subnet = allocate_subnet(ipaddress.IPv4Network(self.settings.subnet), len(plan), used_networks())
            addresses = list(subnet.hosts())
            gateway = addresses[0]
            hosts = [{"alias": f"{role}-{i}", "role": role, "netns": names.netns(n), "veth": names.veth(n),
                      "address": str(addresses[n + 1])} for n, (role, i) in enumerate(plan)]
            self.save_provider_state(prefix=names.prefix, tag=names.tag, bridge=names.bridge, subnet=str(subnet),
                                     gateway=str(gateway), hosts=hosts)
            remove_stale(names, hosts)
            create_links(names.bridge, f"{gateway}/{subnet.prefixlen}", hosts)
            fast_arp(names.bridge)
            gateway_filter(names, str(gateway), self.config.agent.port)
        self._cgroups(names, hosts)
        self._boot(hosts, subnet.prefixlen, host_key, shared)
        roles = self._roles(hosts, key)
        write_known_hosts(self.env.known_hosts, Path(f"{host_key}.pub").read_text().split()[:2], hosts)
        deadline = time.monotonic() + self.settings.boot_timeout
        silent = wait_ssh(list(roles.all()), deadline)
        if silent:
            logs = ", ".join(str(self.env.logs_dir / f"{h.name}.log") for h in silent)
            raise ProviderError(f"{len(silent)} local hosts did not answer on SSH within "
                                f"{self.settings.boot_timeout:g} s: {', '.join(h.name for h in silent)}",
                                hint=f"see {logs}")
        network = Network("local", str(subnet), str(gateway), names.bridge)
        return roles, Networks([network])

    def _shared(self) -> list[str]:
        """The ``share`` folders, checked: absolute, existing folders, none holding an environment."""
        shared = []
        for raw in self.settings.share:
            path = Path(raw)
            if not path.is_absolute() or not path.is_dir():
                raise ProviderError(f"provider.share: {raw}: not an absolute path of an existing folder")
            path = path.resolve()
            secret = [env for env in {*registered(), self.env.root} if env.is_relative_to(path)]
            if secret:
                raise ProviderError(f"provider.share: {raw} holds the enosnet environment {secret[0]}, "
                                    "whose secret and keys no host may read")
            shared.append(str(path))
        return shared

    def _cgroups(self, names: Names, hosts: list[dict[str, Any]]) -> None:
        """A group per host (CPU accounting, and the role's limits) under one for the environment."""
        layout = cgroups.detect()
        env_dirs = layout.env_dirs(names.bridge)
        folders = [str(f) for f in env_dirs.values()] + [str(f / h["alias"]) for f in env_dirs.values() for h in hosts]
        self.save_provider_state(cgroups=folders)  # named before made: destroy removes them after any crash
        spec = {h["alias"]: self._role_spec(h["role"]) for h in hosts}
        auto = [h["alias"] for h in hosts if spec[h["alias"]].cpuset == "auto"]
        pinned, warning = cgroups.plan_cpusets(auto, layout.all_cpus())
        if warning:
            log.warning("%s", warning)
        wanted = [(h["alias"], cgroups.Limits(spec[h["alias"]].cpus, spec[h["alias"]].memory,
                                              pinned.get(h["alias"], spec[h["alias"]].cpuset)))
                  for h in hosts]
        made = cgroups.create(layout, names.bridge, wanted)
        for h in hosts:
            h["cgroups"], h["limits"] = made[h["alias"]].dirs, made[h["alias"]].limits.as_dict()
        self.save_provider_state(hosts=hosts)

    def _role_spec(self, role: str) -> LocalRole:
        spec = self.config.roles[role]
        return spec if isinstance(spec, LocalRole) else LocalRole(count=spec.count)

    def _boot(self, hosts: list[dict[str, Any]], prefixlen: int, host_key: Path, shared: list[str]) -> None:
        """Start every host's PID 1, recording each pid as soon as it exists."""
        etc_hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost\n" + "".join(
            f"{h['address']}\t{h['alias']}\n" for h in hosts)
        hidden = [*HIDDEN, *(str(env) for env in {*registered(), self.env.root})]
        common = {"host_key": host_key.read_text(), "authorized_key": self.env.public_key(),
                  "prefixlen": prefixlen, "etc_hosts": etc_hosts, "hide": sorted(hidden), "share": shared,
                  "drop_caps": list(DROPPED_CAPABILITIES)}
        self.env.logs_dir.mkdir(parents=True, exist_ok=True)
        specs = self.env.root / "hosts"
        specs.mkdir(mode=0o700, exist_ok=True)
        for h in hosts:
            spec = {**common, "hostname": h["alias"], "address": h["address"], "netns": h["netns"],
                    "cgroups": h.get("cgroups", {})}
            spec_file = specs / f"{h['alias']}.json"
            write_atomic(spec_file, json.dumps(spec), mode=0o600)
            with open(self.env.logs_dir / f"{h['alias']}.log", "ab") as log:
                proc = subprocess.Popen(
                    ["nsenter", f"--net={NETNS_DIR / h['netns']}", "unshare", "--mount", "--uts", "--pid",
                     "--fork", "--kill-child", sys.executable, "-I", "-S", str(HOSTINIT), str(spec_file),
                     h["netns"]],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={"PATH": HOST_PATH, "LANG": "C.UTF-8"})  # nothing of the controller's (AWS_*, …)
            h["pid"] = proc.pid
        self.save_provider_state(hosts=hosts)

    def _roles(self, hosts: list[dict[str, Any]], key: Path) -> Roles:
        ssh_args = (f"-o UserKnownHostsFile={self.env.known_hosts} -o StrictHostKeyChecking=yes "
                    "-o LogLevel=ERROR")
        by_role: dict[str, list[Host]] = {}
        for h in hosts:
            extra = {"ansible_python_interpreter": self.settings.python, "ansible_ssh_common_args": ssh_args,
                     "enosnet_netns": h["netns"], "enosnet_provider": "local"}
            host = Host(h["address"], alias=h["alias"], user="root", port=22, keyfile=str(key), extra=extra)
            by_role.setdefault(h["role"], []).append(host)
        return Roles(by_role)

    def _still_there(self, roles: Roles) -> bool:
        hosts = self.provider_state.get("hosts", [])
        saved = self.env.state().config
        if saved != self.config.model_dump(mode="json") or len(hosts) != len(roles.all()):
            return False
        return all((NETNS_DIR / h["netns"]).exists() and _alive(h.get("pid")) for h in hosts)

    def _release(self) -> None:
        state = self.provider_state
        if not state:
            return
        require_root_and_tools()
        hosts = state.get("hosts", [])
        links = [h["veth"] for h in hosts] + ([state["bridge"]] if state.get("bridge") else [])
        remove_hosts([h["netns"] for h in hosts], links, [h["pid"] for h in hosts if h.get("pid")])
        if state.get("prefix") and state.get("tag"):
            remove_nft_tables([Names(state["prefix"], state["tag"]).nft_table])
        stuck = cgroups.remove(state.get("cgroups", []))
        if stuck:
            raise ProviderError(f"cgroups still in use after the hosts were killed: {', '.join(stuck)}",
                                hint="a process of a host survived; `enosnet destroy` again removes them")
        self.env.update_state(provider={})

    def enter(self, host: Host) -> list[str]:
        """argv prefix that runs a command inside ``host`` (all its namespaces), without SSH."""
        for h in self.provider_state.get("hosts", []):
            if h["alias"] == host.name:
                return nsenter_argv(h["pid"])
        raise ProviderError(f"{host.name}: not a host of {self.env.root}")


# ── machine-level helpers ───────────────────────────────────────────────────


def require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise PrivilegeError("the local provider needs root (it creates network namespaces, bridges and mounts)",
                             hint="run enosnet as root, e.g. with sudo")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ProviderError(f"the local provider needs {', '.join(missing)}, not found on this machine",
                            hint="run `make deps` (installs iproute2, util-linux and openssh-server)")


@contextmanager
def machine_lock() -> Iterator[None]:
    """Serialise subnet allocation and bridge creation between enosnet processes."""
    with open(LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def used_networks() -> list[ipaddress.IPv4Network]:
    out = _ip_json("-4", "addr", "show")
    return [ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}").network
            for link in out for a in link.get("addr_info", []) if a.get("family") == "inet"]


def allocate_subnet(pool: ipaddress.IPv4Network, count: int,
                    used: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first block of ``pool`` big enough for ``count`` hosts plus a gateway that overlaps nothing used.

    >>> allocate_subnet(ipaddress.IPv4Network("198.18.0.0/15"), 4, [ipaddress.IPv4Network("198.18.0.0/24")])
    IPv4Network('198.18.1.0/24')
    """
    prefixlen = min(24, 32 - (count + 2).bit_length())
    if prefixlen < pool.prefixlen:
        raise ProviderError(f"{count} hosts do not fit in {pool}")
    used = list(used)
    for block in pool.subnets(new_prefix=prefixlen):
        if not any(block.overlaps(u) for u in used):
            return block
    raise ProviderError(f"no free /{prefixlen} left in {pool} for {count} hosts",
                        hint="destroy unused environments (enosnet destroy --all)")


def remove_stale(names: Names, hosts: list[dict[str, Any]]) -> None:
    """Remove leftovers that carry the names this environment is about to use."""
    links = [names.bridge, *(h["veth"] for h in hosts)]
    netns = [h["netns"] for h in hosts]
    present = {link["ifname"] for link in _ip_json("link", "show")}
    if present & set(links) or set(netns) & set(_netns_names()):
        remove_hosts(netns, links, [])


def create_links(bridge: str, gateway: str, hosts: list[dict[str, Any]]) -> None:
    lines = [f"link add {bridge} type bridge", f"addr add {gateway} dev {bridge}", f"link set {bridge} up"]
    for h in hosts:
        lines += [f"netns add {h['netns']}",
                  f"link add {h['veth']} type veth peer name eth0 netns {h['netns']}",
                  f"link set {h['veth']} master {bridge} up"]
    _ip_batch(lines, what="creating the bridge and host links")


def fast_arp(bridge: str) -> None:
    """Retry ARP every 50 ms on the bridge (not 1 s): the first probe of a booting host often goes unanswered."""
    Path(f"/proc/sys/net/ipv4/neigh/{bridge}/retrans_time_ms").write_text("50\n")


def write_known_hosts(path: Path, key: list[str], hosts: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(f"{h['address']} {key[0]} {key[1]}\n" for h in hosts), mode=0o600)


def nsenter_argv(pid: int) -> list[str]:
    """Enter the host whose PID 1 is the child of ``pid`` (the ``unshare`` process), with a host's capabilities."""
    init = _children(pid)
    target = init[0] if init else pid
    drop = ",".join(f"-{cap}" for cap in DROPPED_CAPABILITIES)
    return ["nsenter", "-t", str(target), "-n", "-m", "-u", "-p", "--", "setpriv", f"--bounding-set={drop}", "--"]


def gateway_filter(names: Names, gateway: str, agent_port: int) -> None:
    """On the machine, let hosts reach only the coordinator: agents' datagrams and replies, nothing routed.

    Hosts talk among themselves over the bridge (not filtered here). Towards
    the machine they may answer what the machine started (SSH, the
    coordinator's requests) and send from the agent port to the gateway (an
    agent's events after a long silent measurement, when conntrack has
    forgotten the flow); everything else, including the machine's own services
    on the gateway address, and routing through the machine, is dropped.
    """
    bridge = json.dumps(names.bridge)
    remove_nft_tables([names.nft_table])
    rules = f"""table inet {names.nft_table} {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname {bridge} ct state established,related accept
    iifname {bridge} ip daddr {gateway} udp sport {agent_port} accept
    iifname {bridge} drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname {bridge} oifname != {bridge} drop
    oifname {bridge} iifname != {bridge} ct state != established,related drop
  }}
}}
"""
    proc = subprocess.run(["nft", "-f", "-"], input=rules, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ProviderError(f"filtering the gateway {gateway} of {names.bridge} failed: {proc.stderr.strip()}",
                            hint="the local provider needs nftables (nft) and the kernel's nf_tables")


def remove_nft_tables(tables: list[str]) -> None:
    for table in tables:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True, timeout=30)


def _nft_tables() -> list[str]:
    proc = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        return []
    return [item["table"]["name"] for item in json.loads(proc.stdout or "{}").get("nftables", [])
            if "table" in item and item["table"].get("family") == "inet"]


def remove_hosts(netns: list[str], links: list[str], pids: list[int], deadline: float = 20.0) -> None:
    """Kill everything in these hosts, delete their links and namespaces, wait until the links are gone.

    Veths are deleted explicitly (one end takes the pair with it) rather than
    left to the namespace's destruction, which the kernel may defer while
    anything still references the namespace.
    """
    _kill_inits(pids)
    _kill_in_netns(netns)
    present = {link["ifname"] for link in _ip_json("link", "show")}
    _ip_batch([f"link del {name}" for name in links if name in present], what="deleting links", check=False)
    existing = [n for n in netns if (NETNS_DIR / n).exists()]
    _ip_batch([f"netns del {n}" for n in existing], what="deleting network namespaces", check=False)
    _wait_links_gone(links, time.monotonic() + deadline)


def destroy_all(prefix: str | None = None) -> list[str]:
    """Remove every local host of this prefix on the machine, with or without state.

    Returns the names of what was removed.
    """
    require_root_and_tools()
    prefix = prefix or prefix_from_env()
    netns = [n for n in _netns_names() if Names.netns_pattern(prefix).fullmatch(n)]
    links = [link["ifname"] for link in _ip_json("link", "show")
             if Names.bridge_pattern(prefix).fullmatch(link["ifname"])
             or Names.veth_pattern(prefix).fullmatch(link["ifname"])]
    tables = [t for t in _nft_tables() if Names.nft_table_pattern(prefix).fullmatch(t)]
    remove_hosts(netns, links, _hostinit_pids(prefix))
    remove_nft_tables(tables)
    groups = [str(g) for g in cgroups.leftovers(cgroups.detect(), Names.bridge_pattern(prefix))]
    cgroups.remove(groups)
    return netns + links + tables + groups


def _hostinit_pids(prefix: str) -> list[int]:
    """``unshare`` processes of hosts with this prefix, found by their command line."""
    netns = Names.netns_pattern(prefix)
    return [pid for pid, argv in _processes()
            if argv and argv[0].endswith("unshare") and HOSTINIT.name in " ".join(argv) and netns.fullmatch(argv[-1])]


def _processes() -> Iterator[tuple[int, list[str]]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            yield int(entry.name), raw.decode(errors="replace").split("\0")[:-1]


def _kill_inits(pids: list[int]) -> None:
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if HOSTINIT.name in argv:
            for child in _children(pid):
                _kill(child)
            _kill(pid)


def _kill_in_netns(netns: list[str]) -> None:
    """SIGKILL every process whose network namespace is one of these."""
    inodes = set()
    for name in netns:
        try:
            inodes.add(f"net:[{(NETNS_DIR / name).stat().st_ino}]")
        except OSError:
            continue
    if not inodes:
        return
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") in inodes:
                    _kill(int(entry.name))
            except OSError:
                continue


def _wait_links_gone(links: list[str], deadline: float) -> None:
    """Wait until these links vanished (the kernel removes them asynchronously)."""
    wanted = set(links)
    while wanted and time.monotonic() < deadline:
        if not wanted & {link["ifname"] for link in _ip_json("link", "show")}:
            return
        time.sleep(0.05)


def _netns_names() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int | None) -> bool:
    return bool(pid) and Path(f"/proc/{pid}").exists()


def _kill(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise ProviderError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    data = json.loads(out.stdout or "[]")
    return data if isinstance(data, list) else []


def _ip_batch(lines: list[str], *, what: str, check: bool = True) -> None:
    if not lines:
        return
    proc = subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise ProviderError(f"{what} failed: {proc.stderr.strip()}")

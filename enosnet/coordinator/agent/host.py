"""What the agent does to its host: processes held at a gate and their groups, ports, system samples.

Stdlib-only, Python 3.8 compatible (ships in the agent zipapp).
"""

from __future__ import annotations

import errno
import os
import signal
import time
from typing import Any

GATE_SHELL = "/bin/sh"
GATE_SCRIPT = 'read -r _ <&3 || exit 125; exec 3<&-; exec "$@"'  # no line (gate closed): exit, run nothing


class Child:
    """A run's process, in its own session (its process group is the run); ``poll`` reaps it.

    Made at PREPARE with posix_spawn (vfork semantics, cheap even for a large
    agent) and held at a gate, so starting it costs the agent one write: on a
    host shared by many agents, what each does at the start instant is start
    skew.
    """

    RESET = (signal.SIGPIPE, signal.SIGXFSZ)  # ignored by Python; a started program gets the defaults

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.usage: dict[str, float] | None = None

    @classmethod
    def gated(cls, argv: list[str], env: dict[str, str], cwd: str, stdout: int, stderr: int, *,
              home: str) -> tuple[Child, int]:
        """A run's process, made ahead of its start and waiting at a gate; returns it and the gate.

        It is ``sh`` reading one line from a pipe: writing a line opens the
        gate and the shell execs ``argv`` (same pid, same process group, files
        already in place), so at the scheduled instant the agent only writes
        one byte. Closing the gate without a line (the agent cancelled, or
        died) makes it exit 125 without running anything. ``argv`` reaches the
        shell as positional parameters: no value is ever parsed by it.
        """
        read_end, gate = os.pipe()
        os.chdir(cwd)
        try:
            pid = os.posix_spawn(GATE_SHELL, ["sh", "-c", GATE_SCRIPT, "enosnet-gate", *argv], env, setsid=True,
                                 setsigdef=cls.RESET, setsigmask=(),
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                               (os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2),
                                               (os.POSIX_SPAWN_DUP2, read_end, 3)])
        except BaseException:
            os.close(gate)
            raise
        finally:
            os.close(read_end)
            os.chdir(home)
        return cls(pid), gate

    def poll(self) -> int | None:
        """The exit code (negative: killed by that signal) once it exited, else None."""
        if self.returncode is None:
            self._wait(os.WNOHANG)
        return self.returncode

    def wait(self) -> int | None:
        if self.returncode is None:
            self._wait(0)
        return self.returncode

    def _wait(self, flags: int) -> None:
        try:
            pid, status, usage = os.wait4(self.pid, flags)
        except ChildProcessError:
            self.returncode = -1
            return
        if pid:
            self.returncode = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            # what the program and the children it waited for used: CPU seconds and peak resident memory
            self.usage = {"user_s": usage.ru_utime, "system_s": usage.ru_stime, "max_rss_kib": usage.ru_maxrss}


def signal_group(pgid: int, sig: int) -> None:
    if pgid <= 1:
        return
    try:
        os.killpg(pgid, sig)
    except OSError as exc:
        if exc.errno not in (errno.ESRCH, errno.EPERM):
            raise


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of group ``pgid`` in this PID namespace."""
    if pgid <= 1:
        return []
    try:
        os.killpg(pgid, 0)
    except OSError:
        return []  # the usual case, and cheap: no process at all is left in the group
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            members.append(int(name))
    return members


def exe(pid: int) -> str | None:
    """The program process ``pid`` runs (None once it is gone)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a recycled pid from ours."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def kill_orphan(pid: int | None, ticks: int | None) -> None:
    """A previous agent instance died while its run ran: kill the group of ``pid`` if it is still that process
    (started at ``ticks``)."""
    if pid and ticks is not None and start_ticks(pid) == ticks:
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        signal_group(pid, signal.SIGKILL)


def listening(proto: str, port: int) -> bool:
    """Whether something in this network namespace listens on ``proto`` ``port``."""
    wanted = f":{port:04X}"
    for family in ("", "6"):
        try:
            with open(f"/proc/net/{proto}{family}") as handle:
                next(handle, None)
                for line in handle:
                    fields = line.split()
                    if len(fields) > 3 and fields[1].endswith(wanted) and (proto == "udp" or fields[3] == "0A"):
                        return True
        except OSError:
            continue
    return False


def system_sample() -> dict[str, Any]:
    """CPU jiffies (/proc/stat ``cpu`` line), interface counters (/proc/net/dev), the host's own CPU time and
    its UDP receive-buffer drops (``udp_drops``).

    ``cg`` is ``[CPU ns used, periods, throttled periods, quota in CPUs or 0]``
    of the control group at /sys/fs/cgroup as this host sees it: a local host
    its own group (its PID 1 binds it there), a real machine the whole machine.
    """
    sample: dict[str, Any] = {"t": time.time_ns()}
    try:
        with open("/proc/stat") as handle:
            sample["cpu"] = [int(v) for v in handle.readline().split()[1:]]
        with open("/proc/net/dev") as handle:
            lines = handle.readlines()[2:]
        sample["net"] = {name.strip(): [int(v) for v in rest.split()]
                         for name, _, rest in (line.partition(":") for line in lines)}
    except (OSError, ValueError) as exc:
        sample["error"] = str(exc)
    group = _cgroup_cpu()
    if group is not None:
        sample["cg"] = group
    pressure = _key_values_line("/proc/pressure/cpu", "some").get("total")
    if pressure is not None:
        sample["psi"] = pressure  # µs during which some task waited for a CPU (the machine's, PSI)
    drops = udp_receive_drops()
    if drops is not None:
        sample["udp_drops"] = drops
    return sample


def udp_receive_drops() -> int | None:
    """Datagrams this network namespace's UDP sockets dropped for a full receive buffer (IPv4 and IPv6)."""
    rows = [line.split() for line in _read_text("/proc/net/snmp").splitlines() if line.startswith("Udp:")]
    if len(rows) < 2 or "RcvbufErrors" not in rows[0] or len(rows[1]) != len(rows[0]):
        return None
    value = rows[1][rows[0].index("RcvbufErrors")]
    if not value.isdigit():
        return None
    return int(value) + _key_values("/proc/net/snmp6").get("Udp6RcvbufErrors", 0)


def _cgroup_cpu() -> list[float] | None:
    """``[used ns, periods, throttled periods, quota CPUs]`` from cgroup v2's or v1's files (None: neither)."""
    root = "/sys/fs/cgroup"
    v2 = _key_values(f"{root}/cpu.stat")
    if "usage_usec" in v2:
        quota, _, period = _read_text(f"{root}/cpu.max").partition(" ")
        cpus = int(quota) / int(period) if quota.isdigit() and period.strip().isdigit() else 0.0
        return [v2["usage_usec"] * 1000, v2.get("nr_periods", 0), v2.get("nr_throttled", 0), cpus]
    usage = _read_text(f"{root}/cpuacct/cpuacct.usage")
    if not usage.isdigit():
        return None
    v1 = _key_values(f"{root}/cpu/cpu.stat")
    quota, period = _read_text(f"{root}/cpu/cpu.cfs_quota_us"), _read_text(f"{root}/cpu/cpu.cfs_period_us")
    cpus = int(quota) / int(period) if quota.isdigit() and period.isdigit() and int(period) else 0.0
    return [int(usage), v1.get("nr_periods", 0), v1.get("nr_throttled", 0), cpus]


def _read_text(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _key_values_line(path: str, first: str) -> dict[str, int]:
    """``key=value`` numbers of the line starting with ``first`` (the PSI files' format)."""
    for line in _read_text(path).splitlines():
        words = line.split()
        if words and words[0] == first:
            pairs = (w.partition("=") for w in words[1:])
            return {k: int(v) for k, _, v in pairs if v.isdigit()}
    return {}


def _key_values(path: str) -> dict[str, int]:
    pairs = (line.split() for line in _read_text(path).splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].isdigit()}

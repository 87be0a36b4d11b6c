"""The agent's config file and the actions of enosnet's own drivers (iperf3, s2n-netbench).

The Ansible role ``enosnet_agent`` templates exactly the document
``agent_config`` returns; docs/coordinator.md describes every field. Each
driver declares which of these it runs (``Driver.agent_actions``);
``enosnet.bench.drivers.default_actions`` gathers every registered driver's.

>>> cfg = agent_config("client-0", role="client", secret="0" * 32, env_id="demo", actions=iperf3_actions())
>>> sorted(cfg["actions"])
['iperf3-client', 'iperf3-client-build', 'iperf3-server', 'iperf3-server-build']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from enosnet.coordinator.agent.wire import DEFAULT_PORT, worker_key

DEFAULT_WORKDIR = "/var/lib/enosnet-agent"
CONGESTION = r"[a-z0-9_]{1,16}"


def agent_config(worker_id: str, *, role: str, secret: str, env_id: str, actions: Mapping[str, Any],
                 port: int = DEFAULT_PORT, workdir: str = DEFAULT_WORKDIR, bind: str = "0.0.0.0",
                 replay_window_s: float = 30.0, sample_interval_s: float = 1.0) -> dict[str, Any]:
    """The agent's JSON config: one flat object (see docs/coordinator.md).

    ``secret`` is the environment's; the config holds only this worker's key
    derived from it (``worker_key``), so one host's config commands no other.
    """
    return {
        "worker_id": worker_id,
        "role": role,
        "env_id": env_id,
        "secret": worker_key(secret, worker_id),
        "port": port,
        "bind": bind,
        "workdir": workdir,
        "replay_window_s": replay_window_s,
        "sample_interval_s": sample_interval_s,
        "actions": dict(actions),
    }


def iperf3_actions(*, binary: str = "iperf3", bin_dir: str = "/usr/local/bin") -> dict[str, Any]:
    """``iperf3-server`` (a service until stopped) and ``iperf3-client`` (a job, JSON output).

    ``iperf3-server-build`` and ``iperf3-client-build`` are the same with the
    program a build of an experiment's ``builds:`` (``<bin_dir>/iperf3+<label>``).
    """
    plain = _iperf3(binary, {})
    build = _iperf3("{binary}", {"binary": {"type": "file", "dir": bin_dir, "pattern": r"iperf3\+[a-z0-9_-]+"}})
    return {**plain, **{f"{name}-build": action for name, action in build.items()}}


def _iperf3(program: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    port = {"type": "int", "min": 1, "max": 65535, "default": 5201}
    return {
        "iperf3-server": {
            "kind": "service",
            "argv": [program, "-s", "-p", "{port}", ["-B", "{bind}"], ["-1", "{one_off}"]],
            "params": {"port": port, "bind": {"type": "host", "default": None},
                       "one_off": {"type": "bool", "default": False}, **extra},
            "listen": "tcp:{port}",
        },
        "iperf3-client": {
            "kind": "job",
            "argv": [program, "-c", "{host}", "-p", "{port}", "-t", "{duration}", "-J",
                     "-P", "{parallel}", ["-C", "{congestion}"], ["-R", "{reverse}"], ["-u", "{udp}"],
                     ["-b", "{bitrate}"], ["-l", "{length}"]],
            "params": {
                "host": {"type": "host"},
                "port": port,
                "duration": {"type": "int", "min": 1, "max": 86400, "default": 10},
                "parallel": {"type": "int", "min": 1, "max": 128, "default": 1},
                "congestion": {"type": "string", "pattern": CONGESTION, "default": None},
                "reverse": {"type": "bool", "default": False},
                "udp": {"type": "bool", "default": False},
                "bitrate": {"type": "string", "pattern": r"[0-9]{1,12}[KMG]?", "default": None},
                "length": {"type": "string", "pattern": r"[0-9]{1,8}[KM]?", "default": None},
                **extra,
            },
        },
    }


def netbench_actions(*, bin_dir: str = "/usr/local/bin",
                     scenario_dir: str = "/var/lib/enosnet/scenarios") -> dict[str, Any]:
    """``netbench-server`` / ``netbench-client``: an s2n-netbench driver, run by the agent itself.

    The driver is chosen by file name inside ``bin_dir`` (``<binary>+<label>``
    for a build of an experiment's ``builds:``), the scenario by file
    name inside ``scenario_dir``; drivers take everything from the environment
    (they get no arguments under netbench's own collector either). Servers get
    ``PORT``, ``SERVER_ID`` (the host's index in its role), ``SCENARIO`` and
    ``TRACE``; clients ``CLIENT_ID`` and ``SERVER_<i>=host:port`` for every
    server of the scenario instead of ``PORT``/``SERVER_ID``. With the default
    ``TRACE=throughput`` a driver writes its rates once a second to stderr.
    Run by the agent, a driver's start is the scheduled start, and its exit
    status and resource use are its own (s2n-netbench-collector hides both).
    A server given ``transport`` (``tcp`` or ``udp``, what its driver listens
    on) is ready once it listens on ``port``; without it, as soon as it runs.
    """
    common = {
        "scenario": {"type": "file", "dir": scenario_dir, "pattern": r"[A-Za-z0-9_.-]+\.json"},
        "trace": {"type": "choice", "values": ["disabled", "throughput"], "default": "throughput"},
    }

    def driver(side: str) -> dict[str, Any]:
        # a build of an experiment's `builds:` sits beside the others as <binary>+<label>
        return {"type": "file", "dir": bin_dir, "pattern": rf"s2n-netbench-driver-{side}-[a-z0-9-]+(\+[a-z0-9_-]+)?"}

    return {
        "netbench-server": {
            "kind": "service",
            "argv": ["{driver}"],
            "env": {"PORT": "{port}", "SERVER_ID": "{index}", "SCENARIO": "{scenario}", "TRACE": "{trace}"},
            "params": {"driver": driver("server"), **common,
                       "port": {"type": "int", "min": 1, "max": 65535, "default": 4433},
                       "transport": {"type": "choice", "values": ["tcp", "udp"], "default": None}},
            "listen": "{transport}:{port}",
        },
        "netbench-client": {
            "kind": "job",
            "argv": ["{driver}"],
            "env": {"CLIENT_ID": "{index}", "SCENARIO": "{scenario}", "TRACE": "{trace}"},
            "env_each": {"SERVER_": "servers"},
            "params": {"driver": driver("client"), **common,
                       "servers": {"type": "hostports", "max_items": 256}},
        },
    }


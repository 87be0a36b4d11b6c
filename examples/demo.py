"""The main job, end to end on this machine (`make demo`): deploy, install, bench, report, destroy.

1. `enosnet deploy` the local environment of examples/netbench-env.yaml (1 server, 1 client,
   each a set of Linux namespaces with its own sshd) into a fresh folder .enosnet/netbench-<UTC time>.
   It builds s2n-netbench's drivers (tcp, s2n-tls, s2n-quic) from crates.io on this machine the
   first time (minutes, with progress) and reuses that build afterwards, then installs them, iperf3
   and the agent on both hosts with Ansible;
2. make sure every host runs the enosnet agent (the deploy step installs it; when it did not,
   the agents are started over plain SSH);
3. `enosnet bench examples/netbench.yaml`: environment checks, then 18 runs comparing the three
   drivers on a request/response scenario with and without a 20 ms delay each way, shuffled,
   with a progress bar; then the HTML report (throughput per driver with confidence intervals) and
   s2n-netbench's own report-tree;
4. `enosnet destroy`, also when something failed. The results stay in the folder.

The iperf3 incast of examples/incast.yaml runs the same way on examples/incast-env.yaml.

Delays are emulated with tc netem, or, on kernels built without it (some VM kernels), in userspace
by impaird (enosnet.emulation) — the bench picks the backend by itself.

Run as root: `sudo .venv/bin/python examples/demo.py`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENOSNET = [str(Path(sys.executable).parent / "enosnet")]  # the console script of this virtualenv


def sh(*args: str) -> None:
    """Run an enosnet command, showing its output; stop the demo when it fails."""
    print(f"\n$ enosnet {' '.join(args)}", flush=True)
    done = subprocess.run([*ENOSNET, *args])
    if done.returncode != 0:
        raise SystemExit(done.returncode)


def ensure_agents(env_dir: Path) -> None:
    """Agents answer on every host, else start them over SSH (what the deploy step does with Ansible)."""
    from enosnet.bench.drivers import default_actions
    from enosnet.bench.runner import agent_access, environment_roles
    from enosnet.coordinator import SyncCoordinator, Timeouts, workers_from_roles
    from enosnet.environment import Environment
    from enosnet.errors import CoordinatorError
    from enosnet.testing import start_agents_over_ssh

    env = Environment(env_dir)
    roles, access = environment_roles(env), agent_access(env)
    workers = workers_from_roles(roles, port=access.port)
    with SyncCoordinator(workers, env_id=access.env_id, secret=access.secret,
                         timeouts=Timeouts(request=2.0)) as coordinator:
        try:
            coordinator.ready()
            print("agents: running on every host")
            return
        except CoordinatorError:
            pass
    started = time.monotonic()
    start_agents_over_ssh(roles, env_id=access.env_id, secret=access.secret, actions=default_actions(),
                          port=access.port)
    print(f"agents: started over SSH on {len(roles.all())} hosts in {time.monotonic() - started:.1f} s")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("the local provider builds namespaces: run the demo as root (sudo)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    env_dir = Path(".enosnet") / f"netbench-{stamp}"
    sh("deploy", "-c", str(HERE / "netbench-env.yaml"), "--env", str(env_dir))
    try:
        ensure_agents(env_dir)
        sh("bench", str(HERE / "netbench.yaml"), "--env", str(env_dir))
    finally:
        sh("destroy", "--env", str(env_dir))
    print(f"\nEverything of this demo is in {env_dir.resolve()} (results.db, runs/, report/).")


if __name__ == "__main__":
    main()

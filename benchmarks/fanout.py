"""Fan-out speed: `uname -r` and a 10 MB push on 50 local hosts, enosnet vs parallel-ssh / Ansible / parallel-scp.

Brings up 50 local namespace hosts, then runs several rounds in which every
contender runs once (the order rotates per round), and prints each median and
the ratios. Needs root and the Debian package pssh. Hosts are destroyed at the
end, also on failure.

    sudo .venv/bin/python benchmarks/fanout.py [--hosts 50] [--rounds 3]

Two phases: with the hosts' login shell as it is (it inherits this machine's
/root/.bashrc, whose `pyenv init` costs every contender ~0.4 s of CPU per
command and host), then with that file emptied on the hosts, which shows the
cost of the SSH layer itself.

Contenders:
  enosnet run (cold)    the CLI with no master connection open (all closed before)
  enosnet run (warm)    the CLI reusing the master connections of an earlier run
  parallel-ssh          pssh -p N, plain OpenSSH (no connection sharing)
  ansible ad-hoc        `ansible all -m shell -a "uname -r"` with Ansible's default settings
  run_command (cold/warm)  the Python API in this process
  push (cold/warm) vs parallel-scp   one 10 MB file to every host
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("ENOSNET_LOCAL_PREFIX", "bfan")

from enosnet.config import parse_config
from enosnet.environment import Environment
from enosnet.model import Host, Roles
from enosnet.providers.local import LocalProvider
from enosnet.remote import close_connections, run_command

BIN = Path(sys.executable).parent


def timed(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> float:
    """Wall time of one command; raises if it failed (a failed run is not a measurement)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


class Bench:
    def __init__(self, env: Environment, roles: Roles, work: Path) -> None:
        self.env, self.roles, self.work = env, roles, work
        self.hosts: list[Host] = list(roles.all())
        self.hosts_file = work / "hosts.txt"
        self.hosts_file.write_text("".join(f"{h.address}\n" for h in self.hosts))
        self.ssh_x = f"-i {env.key_file} -o UserKnownHostsFile={env.known_hosts} -o StrictHostKeyChecking=yes " \
                     "-o LogLevel=ERROR"
        self.blob = work / "blob.bin"
        self.blob.write_bytes(os.urandom(10 * 1024 * 1024))
        self.n = len(self.hosts)
        # Ansible with its defaults: no ANSIBLE_* variables, no ansible.cfg in the working directory
        self.plain_env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}

    def clean_shell(self) -> None:
        """Empty root's ~/.bashrc on every host (each host's / is a copy-on-write overlay: this machine is untouched).

        The hosts inherit this machine's /root/.bashrc; sshd runs every command through bash, which sources it.
        Here it runs `pyenv init`, ~0.4 s of CPU per command and host, the same for every contender.
        """
        run_command("findmnt -n -o FSTYPE / | grep -qx overlay && : > /root/.bashrc", roles=self.roles, strict=True,
                    timeout=120)

    def cold(self) -> None:
        close_connections(self.hosts)

    def warm(self) -> None:
        run_command("true", roles=self.roles, timeout=120)

    def cli(self, *args: str) -> float:
        return timed([str(BIN / "enosnet"), *args], cwd=self.work)

    def enosnet_run(self) -> float:
        return self.cli("run", "--env", str(self.env.root), "-p", str(self.n), "--", "uname", "-r")

    def pssh(self) -> float:
        return timed(["parallel-ssh", "-p", str(self.n), "-h", str(self.hosts_file), "-l", "root", "-t", "120",
                      "-x", self.ssh_x, "uname", "-r"], cwd=self.work)

    def ansible(self) -> float:
        return timed([str(BIN / "ansible"), "all", "-i", str(self.env.inventory_file), "-m", "shell",
                      "-a", "uname -r"], cwd=self.work, env=self.plain_env)

    def api(self) -> float:
        start = time.perf_counter()
        results = run_command("uname -r", roles=self.roles, concurrency=self.n, timeout=120)
        elapsed = time.perf_counter() - start
        if results.failed:
            raise RuntimeError(f"run_command failed on {len(results.failed)} hosts")
        return elapsed

    def push(self) -> float:
        return self.cli("push", "--env", str(self.env.root), "-p", str(self.n), "-t", "300", "-d", "/tmp/bench-push",
                        "--", str(self.blob))

    def pscp(self) -> float:
        subprocess.run(["parallel-ssh", "-p", str(self.n), "-h", str(self.hosts_file), "-l", "root", "-x", self.ssh_x,
                        "mkdir -p /tmp/bench-pscp"], capture_output=True, timeout=300, check=True)
        return timed(["parallel-scp", "-p", str(self.n), "-h", str(self.hosts_file), "-l", "root", "-t", "300",
                      "-x", self.ssh_x, str(self.blob), "/tmp/bench-pscp/"], cwd=self.work)


def contenders(b: Bench) -> dict[str, tuple[Callable[[], None] | None, Callable[[], float]]]:
    """name → (untimed preparation, timed run)."""
    return {
        "enosnet run (cold)": (b.cold, b.enosnet_run),
        "enosnet run (warm)": (b.warm, b.enosnet_run),
        "parallel-ssh": (None, b.pssh),
        "ansible ad-hoc (defaults)": (None, b.ansible),
        "run_command API (cold)": (b.cold, b.api),
        "run_command API (warm)": (b.warm, b.api),
        "enosnet push 10 MB (cold)": (b.cold, b.push),
        "enosnet push 10 MB (warm)": (b.warm, b.push),
        "parallel-scp 10 MB": (None, b.pscp),
    }


def measure(b: Bench, rounds: int) -> dict[str, list[float]]:
    runs = contenders(b)
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            prepare, run = runs[name]
            if prepare:
                prepare()
            times[name].append(run())
            print(f"  round {r + 1}: {name:28s} {times[name][-1]:7.2f} s", flush=True)
    return times


def report(times: dict[str, list[float]], hosts: int, shell: str) -> None:
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n[{shell} shell] medians over {len(next(iter(times.values())))} rounds, {hosts} hosts:")
    for name, value in med.items():
        print(f"  {name:28s} {value:7.2f} s   (runs: {', '.join(f'{v:.2f}' for v in times[name])})")
    ratios = [
        ("enosnet run cold / parallel-ssh", "enosnet run (cold)", "parallel-ssh", 1.0),
        ("enosnet run warm / parallel-ssh", "enosnet run (warm)", "parallel-ssh", 0.6),
        ("run_command cold / ansible ad-hoc", "run_command API (cold)", "ansible ad-hoc (defaults)", 0.5),
        ("run_command warm / ansible ad-hoc", "run_command API (warm)", "ansible ad-hoc (defaults)", 0.5),
        ("push cold / parallel-scp", "enosnet push 10 MB (cold)", "parallel-scp 10 MB", None),
        ("push warm / parallel-scp", "enosnet push 10 MB (warm)", "parallel-scp 10 MB", None),
    ]
    print(f"\n[{shell} shell] ratios (target):")
    for label, a, b, target in ratios:
        ratio = med[a] / med[b]
        verdict = "" if target is None else f"  (target ≤ {target:.1f}: {'met' if ratio <= target else 'MISSED'})"
        print(f"  {label:36s} {ratio:5.2f}×{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shell", choices=["stock", "clean", "both"], default="both",
                        help="stock: hosts keep root's ~/.bashrc; clean: emptied first (see Bench.clean_shell)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bfan-") as tmp:
        work = Path(tmp)
        env = Environment(work / "env")
        config = parse_config(f"name: bfan\nprovider: {{kind: local}}\nroles: {{node: {args.hosts}}}\n")
        provider = LocalProvider(config, env)
        hosts: list[Host] = []
        try:
            start = time.perf_counter()
            roles, _ = provider.init()
            hosts = list(roles.all())
            print(f"{len(roles.all())} local hosts up in {time.perf_counter() - start:.1f} s", flush=True)
            bench = Bench(env, roles, work)
            for shell in ("stock", "clean"):
                if args.shell not in (shell, "both"):
                    continue
                if shell == "clean":
                    bench.clean_shell()
                print(f"\n== {shell} shell ==", flush=True)
                report(measure(bench, args.rounds), len(roles.all()), shell)
        finally:
            close_connections(hosts)
            provider.destroy()


if __name__ == "__main__":
    main()

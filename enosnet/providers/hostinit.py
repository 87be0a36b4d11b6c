"""PID 1 of one local host. Stdlib only; run as ``python3 -I -S hostinit.py SPEC_JSON``.

Started by the local provider inside the host's network namespace under
``unshare --mount --uts --pid --fork``. It builds the host's root (a
copy-on-write overlay of the machine's ``/`` whose upper layer lives on a
tmpfs private to this mount namespace, so nothing is left on the machine),
sets the hostname, configures ``lo`` and ``eth0``, starts sshd, and then reaps
every orphan until it is killed. When it dies the kernel kills everything in
the host's PID namespace and the mounts vanish with the namespace.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

SSHD_DIR = "/etc/enosnet-sshd"


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True)


def build_root(scratch: str) -> None:
    """Mount the overlay root and pivot into it."""
    sh("mount", "--make-rprivate", "/")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "enosnet-host", scratch)
    upper, work, merged = (os.path.join(scratch, d) for d in ("upper", "work", "merged"))
    for folder in (upper, work, merged):
        os.mkdir(folder)
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", merged)
    os.chdir(merged)
    sh("mount", "-t", "proc", "proc", "proc")
    sh("mount", "-t", "sysfs", "sysfs", "sys")
    sh("mount", "--rbind", "/dev", "dev")
    sh("mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", "dev/pts")
    sh("mount", "--bind", "dev/pts/ptmx", "dev/ptmx")
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "run", "run")
    os.makedirs("old", exist_ok=True)
    sh("pivot_root", ".", "old")
    os.chdir("/")
    sh("umount", "-l", "/old")
    os.rmdir("/old")


def configure_network(spec: dict[str, str]) -> None:
    batch = f"link set lo up\naddr add {spec['address']}/{spec['prefixlen']} dev eth0\nlink set eth0 up\n"
    sh("ip", "-batch", "-", stdin=batch)


def write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as out:
        out.write(text)
    os.chmod(path, mode)


def start_sshd(spec: dict[str, str]) -> None:
    os.makedirs(SSHD_DIR, exist_ok=True)
    os.makedirs("/run/sshd", exist_ok=True)
    write(f"{SSHD_DIR}/host_key", spec["host_key"], 0o600)
    write(f"{SSHD_DIR}/authorized_keys", spec["authorized_key"] + "\n", 0o600)
    write(f"{SSHD_DIR}/sshd_config", "\n".join([
        "Port 22",
        f"HostKey {SSHD_DIR}/host_key",
        f"AuthorizedKeysFile {SSHD_DIR}/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "UseDNS no",
        "PidFile /run/sshd.pid",
        "MaxStartups 1000:30:2000",
        "MaxSessions 200",
        "Subsystem sftp internal-sftp",
        "AcceptEnv LANG LC_*",
        "",
    ]))
    sh("/usr/sbin/sshd", "-f", f"{SSHD_DIR}/sshd_config", "-E", "/var/log/enosnet-sshd.log")


def reap_forever() -> None:
    """Reap orphans; exit (killing the whole host) on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    while True:
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(1.0)


def main() -> None:
    spec = json.loads(sys.argv[1])
    outer_pid = os.readlink("/proc/self")  # the machine's /proc is still mounted here
    build_root(spec.get("scratch", "/mnt"))
    socket.sethostname(spec["hostname"])
    write("/etc/hostname", spec["hostname"] + "\n")
    write("/etc/hosts", spec["etc_hosts"])
    configure_network(spec)
    start_sshd(spec)
    os.environ.update(PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME="/root")
    print(f"enosnet host {spec['hostname']} up, pid {outer_pid}", flush=True)
    reap_forever()


if __name__ == "__main__":
    main()

"""PID 1 of one local host. Stdlib only; run as ``python3 -I -S hostinit.py SPEC_FILE NETNS``.

Started by the local provider inside the host's network namespace under
``unshare --mount --uts --pid --fork``, with an empty environment. It builds
the host's root (a copy-on-write overlay of the machine's ``/`` whose upper
layer lives on a tmpfs private to this mount namespace, so nothing is left on
the machine), sets the hostname, configures ``lo`` and ``eth0``, gives root
the distribution's default shell start-up files (the machine's own, e.g. a
version manager's hooks, would run on every SSH command), starts sshd, and
then reaps every orphan until it is killed. The spec file (it holds the host's
private key) is read before the root changes, and stays on the controller; its
path and the namespace name are the only arguments, so no secret shows in
``ps``. When it dies the kernel kills everything in
the host's PID namespace and the mounts vanish with the namespace.

The host is a box, not the machine:

- the folders the spec lists under ``hide`` (the machine's ``/root``,
  ``/home``, ``/tmp``, every enosnet environment) are empty in the host: they
  are opaque folders of the overlay's upper layer, which no one in the host
  can unmount or see through;
- ``/dev`` holds only null, zero, full, random, urandom, tty, a private
  devpts and ``/dev/shm``: no disk;
- ``/proc/sys`` is read-only except ``/proc/sys/net`` (the host's own
  network namespace), ``/sys`` is read-only and lists no block device;
- sshd, and so every session, starts with the capabilities of ``drop_caps``
  removed from its bounding set, and this PID 1 gives up all of its own
  once sshd runs (a host's root could otherwise ptrace it to regain them);
- ``share`` folders of the machine are mounted read-only at the same path;
- it joins the host's control groups (``cgroups``: mount name → folder)
  before it starts anything, so that every process of the host is counted
  and limited there, and binds them read-only at ``/sys/fs/cgroup/<name>``
  (v1) or ``/sys/fs/cgroup`` (v2, ``unified``), where the host sees its own
  CPU time and limits as in a container.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

SSHD_DIR = "/etc/enosnet-sshd"


MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE, MNT_DETACH = 0x20, 0x1000, 0x4000, 0x40000, 2
SYS_PIVOT_ROOT = 155  # x86_64; other architectures fall back to pivot_root(8)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc = ctypes.CDLL(None, use_errno=True)


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, input=stdin, text=True, check=True)


def mount(source: str, target: str, fstype: str | None = None, flags: int = 0, data: str | None = None) -> None:
    """mount(2) directly: a forked mount(8) per call made booting many hosts slow."""
    enc = [None if v is None else v.encode() for v in (source, target, fstype, data)]
    if libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype}): {os.strerror(err)}")


def pivot_root(new: str, old: str) -> None:
    if os.uname().machine != "x86_64":
        sh("pivot_root", new, old)
    elif libc.syscall(SYS_PIVOT_ROOT, new.encode(), old.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"pivot_root: {os.strerror(err)}")


def read_only(target: str, flags: int = 0) -> None:
    """Bind ``target`` onto itself read-only (a bind mount takes MS_RDONLY only on remount), if it exists."""
    if not os.path.exists(target):
        return
    mount(target, target, None, MS_BIND | MS_REC)
    mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)


def hide(upper: str, paths: list[str]) -> None:
    """Make each folder of ``paths`` empty in the merged root: an opaque folder of the upper layer."""
    done: list[str] = []
    for path in sorted(paths):
        if any(path == d or path.startswith(d.rstrip("/") + "/") for d in done):
            continue  # inside a folder already emptied
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not os.path.isdir(path):
            continue
        done.append(path)
        folder = os.path.join(upper, path.lstrip("/"))
        os.makedirs(folder, exist_ok=True)
        os.chmod(folder, st.st_mode & 0o7777)
        os.chown(folder, st.st_uid, st.st_gid)
        os.setxattr(folder, "trusted.overlay.opaque", b"y")


def minimal_dev() -> None:
    """A fresh ``/dev`` (relative to the merged root, the current folder) with only harmless devices."""
    mount("enosnet-dev", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name in DEVICES:
        open(f"dev/{name}", "w").close()
        mount(f"/dev/{name}", f"dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
        os.symlink(target, f"dev/{name}")
    os.mkdir("dev/pts")
    mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.mkdir("dev/shm")
    mount("shm", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")


def join_cgroups(groups: dict[str, str]) -> None:
    """Move this process into the host's groups (``0``: the writer) before it forks anything."""
    for folder in groups.values():
        with open(os.path.join(folder, "cgroup.procs"), "w") as procs:
            procs.write("0")


def own_cgroups(groups: dict[str, str]) -> None:
    """The host's own groups, read-only, where cgroup tools look (relative to the merged root)."""
    if not groups:
        return
    if "unified" in groups:
        mount(groups["unified"], "sys/fs/cgroup", None, MS_BIND)
        mount("none", "sys/fs/cgroup", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    mount("enosnet-cgroup", "sys/fs/cgroup", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
    for name, folder in sorted(groups.items()):
        target = f"sys/fs/cgroup/{name}"
        os.mkdir(target)
        mount(folder, target, None, MS_BIND)
        mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("none", "sys/fs/cgroup", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)


def build_root(scratch: str, hidden: list[str], shared: list[str], groups: dict[str, str]) -> None:
    """Mount the overlay root and pivot into it."""
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    mount("enosnet-host", scratch, "tmpfs", 0, "mode=0755")
    upper, work, merged = (os.path.join(scratch, d) for d in ("upper", "work", "merged"))
    for folder in (upper, work, merged):
        os.mkdir(folder)
    hide(upper, hidden)
    mount("overlay", merged, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={work}")
    os.chdir(merged)
    for path in shared:
        target = path.lstrip("/")
        os.makedirs(target, exist_ok=True)
        mount(path, target, None, MS_BIND | MS_REC)
        mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount("proc/sys/net", "proc/sys/net", None, MS_BIND)  # the host's own network namespace: stays writable
    read_only("proc/sys")
    read_only("proc/sysrq-trigger")
    mount("sysfs", "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for listing in ("sys/block", "sys/class/block", "sys/dev/block"):  # the machine's disks, by name
        if os.path.isdir(listing):
            mount("enosnet-none", listing, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0555")
    own_cgroups(groups)
    minimal_dev()
    mount("run", "run", "tmpfs", 0, "mode=0755")
    os.makedirs("old", exist_ok=True)
    pivot_root(".", "old")
    os.chdir("/")
    if libc.umount2(b"/old", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount /old")
    os.rmdir("/old")


def configure_network(spec: dict[str, Any]) -> None:
    batch = f"link set lo up\naddr add {spec['address']}/{spec['prefixlen']} dev eth0\nlink set eth0 up\n"
    sh("ip", "-batch", "-", stdin=batch)


def write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as out:
        out.write(text)
    os.chmod(path, mode)


def fresh_root_home() -> None:
    """Root's shell start-up files as on a freshly installed machine (in this host's layer only)."""
    for name in (".bashrc", ".profile"):
        skeleton = os.path.join("/etc/skel", name)
        if os.path.exists(skeleton):
            with open(skeleton) as src:
                write(os.path.join("/root", name), src.read())


def drop_own_capabilities() -> None:
    """Give up every capability of this process (the sessions never had more than their bounding set)."""
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable × two 32-bit words: all empty
    if libc.capset(header, data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def start_sshd(spec: dict[str, Any]) -> None:
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
    drop = ",".join(f"-{cap}" for cap in spec.get("drop_caps", []))
    bounded = ["setpriv", f"--bounding-set={drop}", "--"] if drop else []
    sh(*bounded, "/usr/sbin/sshd", "-f", f"{SSHD_DIR}/sshd_config", "-E", "/var/log/enosnet-sshd.log")


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
    with open(sys.argv[1]) as spec_file:
        spec = json.load(spec_file)
    outer_pid = os.readlink("/proc/self")  # the machine's /proc is still mounted here
    join_cgroups(spec.get("cgroups", {}))
    build_root(spec.get("scratch", "/mnt"), spec.get("hide", []), spec.get("share", []), spec.get("cgroups", {}))
    socket.sethostname(spec["hostname"])
    write("/etc/hostname", spec["hostname"] + "\n")
    write("/etc/hosts", spec["etc_hosts"])
    configure_network(spec)
    if spec.get("fresh_home", True):
        fresh_root_home()
    start_sshd(spec)
    os.environ.update(PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", HOME="/root")
    drop_own_capabilities()
    print(f"enosnet host {spec['hostname']} up, pid {outer_pid}", flush=True)
    reap_forever()


if __name__ == "__main__":
    main()

"""One SSH connection setup shared by the fan-out and Ansible.

Both paths run OpenSSH with the same options, so a master connection opened by
one (``ControlMaster=auto`` + ``ControlPersist``) is reused by the other and by
later ``enosnet`` commands. Control sockets live in a short directory (Unix
socket paths must stay under 108 bytes): ``/run/enosnet-ssh`` for root, else
``$XDG_RUNTIME_DIR/enosnet-ssh`` or ``/tmp/enosnet-ssh-<uid>``; each is used
only when it is a folder of this user that nobody else can enter
(``private_dir``), so another local user cannot plant or read sockets there.

>>> from enosnet.model import Host
>>> opts = SshOptions(control_dir=Path("/run/enosnet-ssh"))
>>> argv = ssh_options(Host("198.18.0.2", keyfile="/k"), opts)
>>> argv[:2], "BatchMode=yes" in argv
(['-o', 'ControlMaster=auto'], True)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import stat
import subprocess
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from enosnet.errors import RemoteError
from enosnet.model import Host

SOCKET_LIMIT = 107  # sun_path is 108 bytes including the final NUL


def default_control_dir() -> Path:
    """Where control sockets go: short, private to this user."""
    if os.geteuid() == 0:
        return Path("/run/enosnet-ssh")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and len(runtime) < 40:
        return Path(runtime) / "enosnet-ssh"
    return Path(f"/tmp/enosnet-ssh-{os.geteuid()}")


@dataclass(frozen=True)
class SshOptions:
    """How enosnet connects to hosts.

    ``control_persist`` is how long (seconds) an idle master connection stays
    up for reuse; 0 disables connection sharing. ``host_key_checking`` is the
    ``StrictHostKeyChecking`` used when a host's own SSH arguments do not set
    one. ``server_alive`` bounds how long a master survives a vanished host.
    """

    connect_timeout: float = 10.0
    control_persist: int = 300
    control_dir: Path = field(default_factory=default_control_dir)
    host_key_checking: str = "accept-new"
    server_alive: int = 3
    cipher_first: str = "aes128-gcm@openssh.com"


def control_path(host: Host, options: SshOptions) -> Path:
    """The control socket of ``host``: a hash of everything that identifies the connection.

    The key file and the host's SSH arguments are part of the hash, so two
    environments that reuse an address never share a (possibly stale) master.
    """
    ident = "\0".join([host.user, host.address, str(host.port), host.keyfile or "",
                       str(host.extra.get("ansible_ssh_common_args", ""))])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:24]
    path = options.control_dir / digest
    # ssh appends a 17-character random suffix while it sets a master up
    if len(str(path)) + 17 > SOCKET_LIMIT:
        raise ValueError(f"control socket path {path} is too long for a Unix socket; choose a shorter control_dir")
    return path


def ensure_control_dir(options: SshOptions) -> None:
    if options.control_persist > 0:
        private_dir(options.control_dir)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only this user can enter: made with mode 0700, or checked when it exists.

    A folder in a shared place such as ``/tmp`` may have been made in advance
    by someone else (to read or plant control sockets): a symlink, another
    owner or a folder others may enter is refused, never used.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise RemoteError(f"{path}: not a private folder of this user (owner uid {info.st_uid}, "
                          f"mode {stat.filemode(info.st_mode)}); remove it or choose another folder")
    return path


def host_ssh_args(host: Host) -> list[str]:
    """The host's own SSH arguments (``ansible_ssh_common_args``), split like a shell would."""
    return shlex.split(str(host.extra.get("ansible_ssh_common_args", "") or ""))


def ssh_options(host: Host, options: SshOptions) -> list[str]:
    """``-o``/``-i`` arguments for ssh, scp and sftp (no destination, no port, no user).

    The host's own arguments come first: for each option OpenSSH keeps the first
    value it sees, so a host's ``StrictHostKeyChecking=yes`` beats our default.
    """
    argv: list[str] = []
    if options.control_persist > 0:
        argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={control_path(host, options)}",
                 "-o", f"ControlPersist={options.control_persist}"]
    argv += host_ssh_args(host)
    if host.keyfile:
        argv += ["-i", host.keyfile, "-o", "IdentitiesOnly=yes"]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(options.connect_timeout))}",
             "-o", f"StrictHostKeyChecking={options.host_key_checking}",
             "-o", f"ServerAliveInterval={options.server_alive}", "-o", "ServerAliveCountMax=3",
             "-o", f"Ciphers=^{options.cipher_first}", "-o", "LogLevel=ERROR", "-o", f"User={host.user}"]
    return argv


def ssh_argv(host: Host, options: SshOptions, command: str) -> list[str]:
    """A complete ``ssh`` command line running ``command`` on ``host``."""
    return ["ssh", *ssh_options(host, options), "-p", str(host.port), "-T", host.address, command]


def sftp_argv(host: Host, options: SshOptions) -> list[str]:
    """An ``sftp`` command line reading a batch from stdin."""
    return ["sftp", *ssh_options(host, options), "-P", str(host.port), "-b", "-", "-q", _bracket(host.address)]


def ansible_ssh_args(host: Host, options: SshOptions) -> str:
    """The value of ``ansible_ssh_args`` that makes Ansible connect exactly like the fan-out."""
    argv = ssh_options(host, options)
    return shlex.join(argv)


def close_connections(hosts: Iterable[Host], options: SshOptions | None = None) -> None:
    """Stop the master connections of ``hosts`` (``ssh -O exit``); hosts without one are skipped.

    Call it before hosts vanish (e.g. when destroying them) so no master lingers.
    """
    options = options or SshOptions()
    live = [h for h in hosts if options.control_persist > 0 and control_path(h, options).exists()]

    def stop(host: Host) -> None:
        argv = ["ssh", "-o", f"ControlPath={control_path(host, options)}", "-O", "exit", host.address]
        subprocess.run(argv, capture_output=True, timeout=10, check=False)

    with ThreadPoolExecutor(max_workers=min(32, max(1, len(live)))) as pool:
        list(pool.map(stop, live))


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address

"""Host keys of EC2 instances, read from their console output and pinned before the first SSH contact.

cloud-init prints every host key of a fresh instance to its serial console,
between ``-----BEGIN SSH HOST KEY KEYS-----`` and ``-----END SSH HOST KEY
KEYS-----``; EC2 hands that console out through an authenticated API call, so
a key read there is the instance's own, not that of whoever answers on its
address. A pinned host is reached with ``StrictHostKeyChecking=yes``; one
whose console shows no keys yet (the console lags the boot by minutes on some
instance types) is reached on first use (``accept-new``), and deploy says so.

>>> text = "boot\\n-----BEGIN SSH HOST KEY KEYS-----\\nssh-ed25519 AAAAC3Nz root@ip-10-0-0-5\\n"
>>> host_keys(text + "-----END SSH HOST KEY KEYS-----\\n")
['ssh-ed25519 AAAAC3Nz']
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path

from enosnet.errors import ProviderError
from enosnet.providers.ec2_aws import Aws

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521)) ([A-Za-z0-9+/]+={0,3})", re.ASCII)


def host_keys(console: str) -> list[str]:
    """``type base64`` of every host key between the markers of ``console`` (the last block wins)."""
    start = console.rfind(BEGIN)
    end = console.find(END, start)
    if start < 0 or end < 0:
        return []
    keys = []
    for line in console[start + len(BEGIN):end].splitlines():
        match = _KEY.match(line.strip())
        if match and _decodes(match[2]):
            keys.append(f"{match[1]} {match[2]}")
    return keys


def _decodes(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def console_keys(aws: Aws, instance_id: str) -> list[str]:
    """The host keys an instance printed to its console so far (none yet: an empty list)."""
    try:
        answer = aws.call("get_console_output", InstanceId=instance_id)
    except ProviderError:
        return []  # the console is not ready (or not readable): the host stays unpinned
    output = answer.get("Output") or ""
    try:
        text = base64.b64decode(output).decode(errors="replace")
    except (binascii.Error, ValueError):
        text = output
    return host_keys(text)


def pin(known_hosts: Path, address: str, keys: list[str]) -> None:
    """Make ``keys`` the only known keys of ``address`` in ``known_hosts`` (an old entry of a reused address goes)."""
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    names = {address, f"[{address}]:22"}
    lines = known_hosts.read_text().splitlines() if known_hosts.exists() else []
    kept = [line for line in lines if line.split(" ", 1)[0] not in names]
    known_hosts.write_text("".join(f"{line}\n" for line in [*kept, *(f"{address} {key}" for key in keys)]))

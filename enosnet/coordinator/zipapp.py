"""Building the agent zipapp: one file, stdlib-only, byte-for-byte reproducible."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

AGENT_DIR = Path(__file__).with_name("agent")
PACKAGE = "enosnet_agent"
SHEBANG = b"#!/usr/bin/env python3\n"
MAIN = b"import sys\nfrom enosnet_agent.__main__ import main\nsys.exit(main())\n"
EPOCH = (1980, 1, 1, 0, 0, 0)


def agent_zipapp_bytes() -> bytes:
    """The .pyz content: the agent package plus a ``__main__.py``, fixed dates and order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        entries = [("__main__.py", MAIN)]
        entries += [(f"{PACKAGE}/{p.name}", p.read_bytes()) for p in sorted(AGENT_DIR.glob("*.py"))]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return SHEBANG + buffer.getvalue()


def build_agent_zipapp(dest: Path) -> Path:
    """Write the agent zipapp to ``dest`` (a file, or a folder to hold ``agent.pyz``).

    The same sources always give the same bytes, and an unchanged file is not
    rewritten, so copying it with Ansible is idempotent.

    >>> import tempfile
    >>> path = build_agent_zipapp(Path(tempfile.mkdtemp()))
    >>> path.name, path.read_bytes() == agent_zipapp_bytes()
    ('agent.pyz', True)
    """
    dest = Path(dest)
    target = dest / "agent.pyz" if dest.is_dir() else dest
    data = agent_zipapp_bytes()
    if not target.exists() or target.read_bytes() != data:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(0o755)
        tmp.replace(target)
    return target

"""Backups of an environment's results: never overwritten, incremental, checkable.

``make_backup`` writes ``backup/<UTC timestamp>/`` inside the environment:

    results.db          consistent copy through SQLite's online backup API (safe while a bench runs)
    runs/ logs/         the run folders and logs
    config.yaml  state.json  inventory.yaml  *.yaml   config files of the environment
    experiments/        the experiment files the database names, when unchanged since they ran
    hosts/<host>/       logs and agent state fetched from every host (a pluggable step, see HostCollector)
    BACKUP.json         when, from where, what was skipped and why
    MANIFEST.sha256     ``sha256sum -c`` compatible checksums of every other file

The SSH key and the agents' secret are never copied. A backup is built in a
hidden staging folder and renamed into place when complete, so a folder with a
``MANIFEST.sha256`` is always a whole backup. Incremental: a file whose
checksum equals the previous backup's copy at the same path becomes a hard
link to it (made read-only, since the links share their content), so a second
backup costs only what changed while every backup stays a complete, plain
folder tree that can be browsed, copied or restored on its own.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     env = Environment(tmp).create()
...     _ = env.config_file.write_text("name: demo\\n")
...     first = make_backup(env)
...     print(sorted(read_manifest(first.path)), verify_backup(first.path).ok)
['BACKUP.json', 'config.yaml'] True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from enosnet.coordinator.agent.wire import worker_key
from enosnet.environment import Environment
from enosnet.errors import ResultsError
from enosnet.remote.ansible import bundled

DEFAULT_PLAYBOOK = bundled("backup.yml")
MANIFEST = "MANIFEST.sha256"
INFO = "BACKUP.json"
BACKUP_DIR = "backup"
_CHUNK = 1 << 20
_TOP_FILES = ("config.yaml", "state.json", "inventory.yaml")
_TREES = ("runs", "logs", "experiments")
_NEVER = {"ssh", "secret", BACKUP_DIR, "report", "results.db", "results.db-wal", "results.db-shm",
          "results.db-journal"}


@dataclass(frozen=True)
class HostCollection:
    """What the host step did: ``ok`` False with a ``note`` when it was skipped or failed."""

    ok: bool
    note: str


HostCollector = Callable[[Path], HostCollection]
"""Fetches every host's logs and agent state into the given folder (one sub-folder per host)."""


@dataclass(frozen=True)
class BackupResult:
    """One backup made: where, how many files, how many were new, what was skipped."""

    path: Path
    files: int
    new_files: int
    linked_files: int
    new_bytes: int
    previous: Path | None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a check: files that differ from the manifest, are missing, or are not in it."""

    path: Path
    checked: int
    differing: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    where: str = "local"

    @property
    def ok(self) -> bool:
        return not (self.differing or self.missing)

    def describe(self) -> str:
        """``local: all 12 files match the manifest`` or the names of what is wrong."""
        if self.ok:
            extra = f" ({len(self.extra)} not in it: {', '.join(self.extra)})" if self.extra else ""
            return f"{self.where}: all {self.checked} files match the manifest{extra}"
        parts = [f"{label}: {', '.join(names)}" for label, names in
                 (("differ", self.differing), ("missing", self.missing)) if names]
        return f"{self.where}: {len(self.differing) + len(self.missing)} of {self.checked} files bad; " + \
            "; ".join(parts)


# ── making a backup ───────────────────────────────────────────────────────────


def backups(env: Environment) -> list[Path]:
    """Complete backups of the environment, oldest first."""
    root = env.root / BACKUP_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


def make_backup(env: Environment, *, collect_hosts: HostCollector | None = None,
                now: datetime | None = None) -> BackupResult:
    """Back up the environment into a new ``backup/<UTC timestamp>/`` (see the module docstring)."""
    if not env.root.is_dir():
        raise ResultsError(f"{env.root}: no such environment directory")
    found = backups(env)
    previous = found[-1] if found else None
    final = _claim(env.root / BACKUP_DIR, now or datetime.now(UTC))
    staging = final.parent / f".staging-{final.name}-{os.getpid()}"
    try:
        staging.mkdir()
        result = _fill(env, staging, final, previous, collect_hosts)
        os.replace(staging, final)  # onto the empty folder that claimed the name: atomic, never overwrites data
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        final.rmdir()
        raise
    return result


def _claim(root: Path, now: datetime) -> Path:
    """An empty folder with a fresh timestamp name (mkdir is atomic: no two backups share a name)."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ["", *(f"-{i}" for i in range(1, 1000))]:
        try:
            (root / f"{stamp}{suffix}").mkdir()
            return root / f"{stamp}{suffix}"
        except FileExistsError:
            continue
    raise ResultsError(f"{root}: cannot find a free name for a backup at {stamp}")


def _fill(env: Environment, staging: Path, final: Path, previous: Path | None,
          collect_hosts: HostCollector | None) -> BackupResult:
    old = read_manifest(previous) if previous else {}
    writer = _Writer(staging, previous, old)
    notes: list[str] = []
    if env.db_file.exists():
        _copy_database(env.db_file, staging / "results.db")
        writer.adopt("results.db")
    else:
        notes.append("no results database yet")
    for rel, source in _sources(env):
        writer.add(rel, source)
    for rel, found, note in _experiment_files(staging / "results.db"):
        if found is not None:
            writer.add(rel, found)
        if note:
            notes.append(note)
    notes.append(_hosts_step(staging / "hosts", collect_hosts))
    for path in sorted((staging / "hosts").rglob("*")) if (staging / "hosts").is_dir() else []:
        if path.is_file() and not path.is_symlink():
            writer.adopt(path.relative_to(staging).as_posix())
    info = {"created": datetime.now(UTC).isoformat(), "environment": str(env.root),
            "previous": previous.name if previous else None, "notes": notes}
    (staging / INFO).write_text(json.dumps(info, indent=2) + "\n")
    writer.adopt(INFO)
    writer.write_manifest()
    return BackupResult(final, len(writer.entries), writer.new_files, writer.linked, writer.new_bytes, previous, notes)


def _copy_database(source: Path, dest: Path) -> None:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        try:
            target = sqlite3.connect(str(dest))
            try:
                src.backup(target)
            finally:
                target.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise ResultsError(f"{source}: cannot copy the results database: {exc}") from None


def _sources(env: Environment) -> Iterator[tuple[str, Path]]:
    """(path in the backup, file) for every file to copy, secrets and derived data left out."""
    for path in sorted(env.root.iterdir()):
        if path.name in _NEVER or path.name.startswith(".") or path.is_symlink():
            continue
        if path.is_file() and (path.name in _TOP_FILES or path.suffix in (".yaml", ".yml", ".json", ".toml")):
            yield path.name, path
        elif path.is_dir() and path.name in _TREES:
            for child in sorted(path.rglob("*")):
                if child.is_file() and not child.is_symlink():
                    yield child.relative_to(env.root).as_posix(), child


def _experiment_files(db: Path) -> Iterator[tuple[str, Path | None, str | None]]:
    """The experiment files the database names, as ``experiments/<name>-<hash>.<ext>``, when still unchanged.

    Read from the backup's own copy of the database. A file that changed since
    its experiment ran is left out with a note (the spec as run is in the database).
    """
    if not db.exists():
        return
    # immutable: reading must not touch the copy (already checksummed), not even to make WAL files
    conn = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True)
    try:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(experiments)")}
        recorded = "e.file_path" if "file_path" in columns else "NULL"  # schema 1 had no such column
        rows = conn.execute(_EXPERIMENT_FILES.format(recorded=recorded)).fetchall()
    except sqlite3.Error:  # no experiments table: nothing was ever run
        rows = []
    finally:
        conn.close()
    for name, digest, file_path in rows:
        path = Path(file_path)
        rel = f"experiments/{name}-{digest[:12]}{path.suffix}"
        if not path.is_file():
            yield rel, None, f"experiment file {path} (experiment {name}) no longer exists"
        elif digest not in _text_hashes(path):
            yield rel, None, f"experiment file {path} changed since experiment {name} ran: not copied"
        else:
            yield rel, path, None


# The file's path as the experiment recorded it, else as host metadata ``experiment.file`` says.
_EXPERIMENT_FILES = """
SELECT name, file_hash, path FROM (
    SELECT e.id, e.name, e.file_hash, coalesce({recorded}, (
        SELECT m.value FROM host_metadata m WHERE m.experiment_id = e.id AND m.key = 'experiment.file'
        AND m.value != '' LIMIT 1)) AS path
    FROM experiments e)
WHERE path IS NOT NULL AND file_hash IS NOT NULL ORDER BY id
"""


def _text_hashes(path: Path) -> set[str]:
    """SHA-256 of the file's bytes, and of its text as read in Python (newlines normalised)."""
    raw = path.read_bytes()
    hashes = {hashlib.sha256(raw).hexdigest()}
    with contextlib.suppress(UnicodeDecodeError):
        hashes.add(hashlib.sha256(path.read_text().encode()).hexdigest())
    return hashes


def _hosts_step(dest: Path, collect: HostCollector | None) -> str:
    if collect is None:
        return "host logs and agent state: skipped (no host collector given)"
    dest.mkdir()
    try:
        outcome = collect(dest)
    except Exception as exc:  # the rest of the backup is still worth keeping
        return f"host logs and agent state: FAILED: {exc}"
    return f"host logs and agent state: {'collected' if outcome.ok else 'skipped'}: {outcome.note}"


class _Writer:
    """Puts files into the staging folder, linking unchanged ones to the previous backup."""

    def __init__(self, staging: Path, previous: Path | None, old: dict[str, str]) -> None:
        self.staging, self.previous, self.old = staging, previous, old
        self.entries: dict[str, str] = {}
        self.new_files = self.linked = self.new_bytes = 0

    def add(self, rel: str, source: Path) -> None:
        dest = self.staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        digest = sha256_file(source)
        if not self._link(rel, digest, dest):
            digest = _copy_hashing(source, dest)
            self._count_new(dest)
        self._seal(rel, digest, dest)

    def adopt(self, rel: str) -> None:
        """A file already written into staging: keep it, or swap it for a link when unchanged."""
        dest = self.staging / rel
        digest = sha256_file(dest)
        if self._link(rel, digest, dest, replace=True):
            self._seal(rel, digest, dest)
            return
        self._count_new(dest)
        self._seal(rel, digest, dest)

    def _link(self, rel: str, digest: str, dest: Path, *, replace: bool = False) -> bool:
        if self.previous is None or self.old.get(rel) != digest:
            return False
        prior = self.previous / rel
        try:
            if sha256_file(prior) != digest:  # the old copy was damaged: do not spread it
                return False
            if replace:
                dest.unlink()
            os.link(prior, dest)
        except OSError:
            return False
        self.linked += 1
        return True

    def _count_new(self, dest: Path) -> None:
        self.new_files += 1
        self.new_bytes += dest.stat().st_size

    def _seal(self, rel: str, digest: str, dest: Path) -> None:
        dest.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        self.entries[rel] = digest

    def write_manifest(self) -> None:
        lines = [f"{digest}  {rel}\n" for rel, digest in sorted(self.entries.items())]
        (self.staging / MANIFEST).write_text("".join(lines))
        (self.staging / MANIFEST).chmod(0o444)


def agent_keys(env: Environment) -> list[bytes]:
    """What no backup may hold: the environment's secret and the key of each of its agents."""
    if not env.secret_file.exists():
        return []
    secret = env.secret()
    hosts = env.state().roles.all()
    return [secret.encode(), *(worker_key(secret, host.name).encode() for host in hosts)]


def files_holding(root: Path, needles: Sequence[bytes]) -> list[str]:
    """The files under ``root`` (relative paths) that contain any of ``needles``, read in chunks."""
    needles = [n for n in needles if n]
    if not needles:
        return []
    overlap = max(len(n) for n in needles) - 1
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        tail = b""
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                window = tail + chunk
                if any(n in window for n in needles):
                    found.append(path.relative_to(root).as_posix())
                    break
                tail = window[-overlap:] if overlap else b""
    return found


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(source: Path, dest: Path) -> str:
    """Copy and hash in one pass, so the checksum is that of the bytes actually copied."""
    digest = hashlib.sha256()
    with source.open("rb") as src, dest.open("wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    shutil.copystat(source, dest)
    return digest.hexdigest()


# ── checking a backup ─────────────────────────────────────────────────────────


def read_manifest(path: Path) -> dict[str, str]:
    """Relative path → hex SHA-256, from ``path/MANIFEST.sha256``."""
    manifest = path / MANIFEST
    try:
        text = manifest.read_text()
    except FileNotFoundError:
        raise ResultsError(f"{path}: not a complete backup (no {MANIFEST})") from None
    entries = {}
    for number, line in enumerate(text.splitlines(), start=1):
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ResultsError(f"{manifest}:{number}: malformed line {line!r}")
        entries[rel] = digest
    return entries


def verify_backup(path: Path) -> VerifyResult:
    """Re-hash every file of the backup and compare with its manifest."""
    entries = read_manifest(path)
    differing, missing = [], []
    for rel, digest in sorted(entries.items()):
        file = path / rel
        if not file.is_file():
            missing.append(rel)
        elif sha256_file(file) != digest:
            differing.append(rel)
    present = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    extra = sorted(present - set(entries) - {MANIFEST})
    return VerifyResult(path, len(entries), differing, missing, extra)


def find_backup(env: Environment, name: str | None = None) -> Path:
    """The backup called ``name`` (a folder name under ``backup/``), else the latest one."""
    found = backups(env)
    if name is not None:
        found = [p for p in found if p.name == name]
    if not found:
        what = f"no backup {name!r}" if name else "no backup yet"
        raise ResultsError(f"{env.root / BACKUP_DIR}: {what}; make one with `enosnet backup`")
    return found[-1]


def playbook_collector(env: Environment, playbook: Path) -> HostCollector:
    """A :data:`HostCollector` running ``playbook`` (``playbooks/backup.yml``) on the environment's hosts.

    The playbook gets the extra variable ``backup_dir`` and fetches each
    host's logs and agent state into ``{{ backup_dir }}/{{ inventory_hostname }}/``.
    Skipped (with a note) when the playbook does not exist or no hosts are
    deployed; hosts that fail are named in the note, the others are kept.
    """

    def collect(dest: Path) -> HostCollection:
        if not playbook.is_file():
            return HostCollection(False, f"no playbook {playbook}")
        deployed = env.state().deployed
        if deployed is None:
            return HostCollection(False, "no hosts deployed")
        from enosnet.remote.ansible import run_playbook
        from enosnet.remote.results import failure_summary

        results = run_playbook(playbook, roles=deployed, env=env,
                               extra_vars={"backup_dir": str(dest)}, strict=False)
        fetched = sorted(p.name for p in dest.iterdir() if p.is_dir())
        note = f"{len(fetched)} hosts ({', '.join(fetched)})"
        if results.failed:
            return HostCollection(False, f"{note}; {failure_summary(results.failed)}")
        return HostCollection(True, note)

    return collect

"""The results database: one SQLite file per environment, never losing a finished run.

What ran (experiments, runs with parameters, repetition, order, seed), where
(hosts, host metadata), when (scheduled and actual start of every process) and
what was measured (metrics, time-series samples). Writes are grouped so that a
run and everything measured during it commit together or not at all, and
recording a run twice (a resumed experiment) never duplicates a row.

>>> store = ResultsStore.open(":memory:")
>>> exp = store.begin_experiment(ExperimentRecord(name="incast", file_hash="ab12", seed=7))
>>> store.add_hosts(exp, [HostRecord("client-0", address="198.18.0.3", role="client")])
>>> run = RunRecord(key=run_key({"cc": "reno"}, 0), params={"cc": "reno"}, repetition=0, position=0,
...                 metrics=[Metric("client-0", "throughput", 9.4e9, "bit/s")])
>>> store.record_run(exp, run).inserted, store.record_run(exp, run).inserted
(True, False)
>>> [(m.params["cc"], m.name, m.value) for m in store.metrics()]
[('reno', 'throughput', 9400000000.0)]
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from enosnet.errors import ConfigError, ResultsError

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE experiments (
    id              INTEGER PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,          -- name + file hash + seed: a resumed experiment reuses its row
    name            TEXT NOT NULL,
    file_hash       TEXT,                          -- sha256 of the experiment file
    file_path       TEXT,                          -- where it was read from (backups copy it when unchanged)
    seed            INTEGER,
    run_order       TEXT,                          -- 'shuffled' | 'as-written'
    started         REAL,                          -- Unix time, seconds (UTC)
    ended           REAL,
    checks          TEXT NOT NULL DEFAULT '[]',    -- JSON list of environment-check results
    forced          INTEGER NOT NULL DEFAULT 0,    -- 1 once any check was overridden with --force
    enosnet_version TEXT,
    spec            TEXT                           -- JSON: the experiment file as loaded
);
CREATE TABLE hosts (
    id              INTEGER PRIMARY KEY,
    experiment_id   INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    address         TEXT,
    role            TEXT,                          -- comma-separated when a host has several roles
    provider        TEXT,
    instance_type   TEXT,
    az              TEXT,
    UNIQUE (experiment_id, name)
);
CREATE TABLE runs (
    id              INTEGER PRIMARY KEY,
    experiment_id   INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    key             TEXT NOT NULL,                 -- stable across resumes: see run_key()
    params          TEXT NOT NULL,                 -- JSON object
    repetition      INTEGER NOT NULL,
    position        INTEGER NOT NULL,              -- index in the (shuffled) run order
    seed            INTEGER,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    reason          TEXT,
    scheduled_start REAL,
    started         REAL,
    ended           REAL,
    start_skew      REAL,                          -- seconds: latest minus earliest actual start
    committed       REAL NOT NULL,
    fidelity        TEXT NOT NULL DEFAULT '[]',    -- JSON list: why the testbed may not have kept up
    UNIQUE (experiment_id, key)
);
CREATE TABLE host_metadata (
    id              INTEGER PRIMARY KEY,
    experiment_id   INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    host_id         INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    run_id          INTEGER REFERENCES runs(id) ON DELETE CASCADE,   -- NULL: collected once per experiment
    key             TEXT NOT NULL,
    value           TEXT NOT NULL,
    source          TEXT
);
CREATE UNIQUE INDEX host_metadata_unique ON host_metadata (host_id, ifnull(run_id, 0), key);
CREATE TABLE processes (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    host_id         INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    role            TEXT,
    action          TEXT NOT NULL,
    scheduled_start REAL,
    started         REAL,
    ended           REAL,
    exit_code       INTEGER
);
CREATE TABLE metrics (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    host_id         INTEGER REFERENCES hosts(id) ON DELETE CASCADE,  -- NULL: a run-level value
    name            TEXT NOT NULL,
    value           REAL NOT NULL,
    unit            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX metrics_run ON metrics (run_id, name);
CREATE TABLE samples (
    id              INTEGER PRIMARY KEY,
    run_id          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    host_id         INTEGER REFERENCES hosts(id) ON DELETE CASCADE,
    series          TEXT NOT NULL,
    t               REAL NOT NULL,                 -- seconds since the run's start
    value           REAL NOT NULL,
    unit            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX samples_run ON samples (run_id, series);
"""

# Statements taking a database from version N to N + 1 (new files get _SCHEMA directly).
_MIGRATIONS: dict[int, list[str]] = {
    1: ["ALTER TABLE experiments ADD COLUMN file_path TEXT"],
    2: ["ALTER TABLE runs ADD COLUMN fidelity TEXT NOT NULL DEFAULT '[]'"],
}

TABLES = ("experiments", "hosts", "runs", "host_metadata", "processes", "metrics", "samples")

Status = Literal["ok", "failed"]


# ── what the bench layer writes ───────────────────────────────────────────────


@dataclass(frozen=True)
class CheckResult:
    """One environment check made before measuring (``detail`` says what was seen)."""

    name: str
    ok: bool
    detail: str = ""
    host: str | None = None
    forced: bool = False


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment: an experiment file run with a seed. Times are Unix seconds."""

    name: str
    file_hash: str | None = None
    seed: int | None = None
    order: str | None = None
    started: float | None = None
    checks: Sequence[CheckResult] = ()
    file_path: str | None = None
    forced: bool = False
    enosnet_version: str | None = None
    spec: Mapping[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"{self.name}:{self.file_hash or '-'}:{self.seed if self.seed is not None else '-'}"


@dataclass(frozen=True)
class HostRecord:
    """A host taking part in an experiment."""

    name: str
    address: str | None = None
    role: str | None = None
    provider: str | None = None
    instance_type: str | None = None
    az: str | None = None


@dataclass(frozen=True)
class HostMeta:
    """One fact about a host (``kernel``, ``nic.offload.tso``, ``iperf3.version``) and where it came from."""

    host: str
    key: str
    value: str
    source: str | None = None


@dataclass(frozen=True)
class ProcessRecord:
    """One process of a run on one host; times are Unix seconds."""

    host: str
    action: str
    role: str | None = None
    scheduled_start: float | None = None
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class Metric:
    """One value measured in a run; ``host=None`` for a run-level value (e.g. an aggregate)."""

    host: str | None
    name: str
    value: float
    unit: str = ""


@dataclass(frozen=True)
class Sample:
    """One point of a time series; ``t`` in seconds since the run's start."""

    host: str | None
    series: str
    t: float
    value: float
    unit: str = ""


@dataclass(frozen=True)
class RunRecord:
    """Everything about one run, committed at once by :meth:`ResultsStore.record_run`."""

    key: str
    params: Mapping[str, Any]
    repetition: int
    position: int
    seed: int | None = None
    status: Status = "ok"
    reason: str | None = None
    scheduled_start: float | None = None
    started: float | None = None
    ended: float | None = None
    start_skew: float | None = None
    processes: Sequence[ProcessRecord] = ()
    metrics: Sequence[Metric] = ()
    samples: Sequence[Sample] = ()
    metadata: Sequence[HostMeta] = ()
    fidelity: Sequence[str] = ()  # see enosnet.bench.fidelity: empty when the testbed kept up


@dataclass(frozen=True)
class Recorded:
    """What :meth:`ResultsStore.record_run` did: the run's id and whether rows were written."""

    run_id: int
    inserted: bool


def run_key(params: Mapping[str, Any], repetition: int) -> str:
    """A run's identity, stable across resumes: a hash of its parameters and repetition.

    >>> run_key({"cc": "reno", "delay": "20ms"}, 1) == run_key({"delay": "20ms", "cc": "reno"}, 1)
    True
    """
    text = json.dumps({"params": params, "repetition": repetition}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ── what queries return ───────────────────────────────────────────────────────


@dataclass(frozen=True)
class ExperimentRow:
    id: int
    name: str
    file_hash: str | None
    file_path: str | None
    seed: int | None
    order: str | None
    started: float | None
    ended: float | None
    checks: list[dict[str, Any]]
    forced: bool
    enosnet_version: str | None
    spec: dict[str, Any] = field(default_factory=dict)  # the experiment file as loaded


@dataclass(frozen=True)
class RunRow:
    id: int
    experiment_id: int
    key: str
    params: dict[str, Any]
    repetition: int
    position: int
    seed: int | None
    status: str
    reason: str | None
    scheduled_start: float | None
    started: float | None
    ended: float | None
    start_skew: float | None
    fidelity: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostRow:
    id: int
    experiment_id: int
    name: str
    address: str | None
    role: str | None
    provider: str | None
    instance_type: str | None
    az: str | None


@dataclass(frozen=True)
class MetadataRow:
    experiment_id: int
    host: str
    run_id: int | None
    key: str
    value: str
    source: str | None


@dataclass(frozen=True)
class ProcessRow:
    run_id: int
    host: str
    role: str | None
    action: str
    scheduled_start: float | None
    started: float | None
    ended: float | None
    exit_code: int | None


@dataclass(frozen=True)
class MetricRow:
    run_id: int
    params: dict[str, Any]
    repetition: int
    status: str
    host: str | None
    role: str | None
    name: str
    value: float
    unit: str


@dataclass(frozen=True)
class SampleRow:
    run_id: int
    params: dict[str, Any]
    repetition: int
    host: str | None
    role: str | None
    series: str
    t: float
    value: float
    unit: str


# ── the store ─────────────────────────────────────────────────────────────────


class ResultsStore:
    """The results database of one environment (``Environment.db_file``).

    Open with :meth:`open` (creates the file and schema on first use, WAL
    mode); use as a context manager or call :meth:`close`.
    """

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, path: str | Path, *, create: bool = True) -> ResultsStore:
        """Open (and with ``create``, make) the database at ``path``; ``":memory:"`` for a scratch one."""
        name = str(path)
        if name != ":memory:" and not create and not Path(name).exists():
            raise ResultsError(f"{name}: no results database here; run `enosnet bench` first")
        if name != ":memory:":
            Path(name).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(name, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # setting it writes: not when reading
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")
            store = cls(conn, name)
            store._migrate()
        except sqlite3.DatabaseError as exc:
            raise ResultsError(f"{name}: cannot open the results database: {exc}") from None
        return store

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({self.path})"

    def _migrate(self) -> None:
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise ResultsError(f"{self.path}: schema version {version} is newer than this enosnet "
                               f"understands ({SCHEMA_VERSION}); upgrade enosnet")
        with self.transaction():
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version == SCHEMA_VERSION:
                return  # another process made or upgraded the schema while we waited for the lock
            statements = [s for s in _SCHEMA.split(";") if s.strip()] if version == 0 else [
                s for v in range(version, SCHEMA_VERSION) for s in _MIGRATIONS[v]]
            for statement in statements:
                self._conn.execute(statement)
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write: everything inside commits together or not at all."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        try:
            self._conn.execute("COMMIT")
        except BaseException:  # a deferred constraint, a full disk: never leave the transaction open
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    # ── writing ──────────────────────────────────────────────────────────────

    def begin_experiment(self, record: ExperimentRecord) -> int:
        """The experiment's id; a resumed experiment (same name, file hash, seed) gets its old row back.

        On resume the new check results are appended and ``forced`` sticks once set.
        """
        checks = [dataclasses.asdict(c) | {"at": record.started or time.time()} for c in record.checks]
        with self.transaction() as db:
            row = db.execute("SELECT id, checks FROM experiments WHERE key = ?", (record.key,)).fetchone()
            if row is not None:
                db.execute("UPDATE experiments SET checks = ?, forced = max(forced, ?), ended = NULL,"
                           " file_path = ifnull(?, file_path) WHERE id = ?",
                           (json.dumps(json.loads(row["checks"]) + checks), int(record.forced), record.file_path,
                            row["id"]))
                return int(row["id"])
            cursor = db.execute(
                "INSERT INTO experiments (key, name, file_hash, file_path, seed, run_order, started, checks, forced,"
                " enosnet_version, spec) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.key, record.name, record.file_hash, record.file_path, record.seed, record.order,
                 record.started if record.started is not None else time.time(), json.dumps(checks),
                 int(record.forced), record.enosnet_version,
                 None if record.spec is None else json.dumps(record.spec, default=str)))
            return int(cursor.lastrowid or 0)

    def add_checks(self, experiment_id: int, checks: Iterable[CheckResult], *, forced: bool = False,
                   at: float | None = None) -> None:
        """Append environment-check results to an experiment; ``forced`` sticks once set."""
        stamp = at if at is not None else time.time()
        with self.transaction() as db:
            row = db.execute("SELECT checks FROM experiments WHERE id = ?", (experiment_id,)).fetchone()
            if row is None:
                raise ResultsError(f"{self.path}: no experiment with id {experiment_id}")
            merged = json.loads(row["checks"]) + [dataclasses.asdict(c) | {"at": stamp} for c in checks]
            db.execute("UPDATE experiments SET checks = ?, forced = max(forced, ?) WHERE id = ?",
                       (json.dumps(merged), int(forced), experiment_id))

    def end_experiment(self, experiment_id: int, *, ended: float | None = None) -> None:
        """Mark the experiment finished (``ended`` defaults to now)."""
        with self.transaction() as db:
            db.execute("UPDATE experiments SET ended = ? WHERE id = ?",
                       (ended if ended is not None else time.time(), experiment_id))

    def add_hosts(self, experiment_id: int, hosts: Iterable[HostRecord]) -> None:
        """Insert or update the experiment's hosts (by name)."""
        with self.transaction() as db:
            for host in hosts:
                db.execute(
                    "INSERT INTO hosts (experiment_id, name, address, role, provider, instance_type, az)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (experiment_id, name) DO UPDATE SET"
                    " address = excluded.address, role = excluded.role, provider = excluded.provider,"
                    " instance_type = excluded.instance_type, az = excluded.az",
                    (experiment_id, host.name, host.address, host.role, host.provider, host.instance_type, host.az))

    def add_metadata(self, experiment_id: int, items: Iterable[HostMeta]) -> None:
        """Record experiment-wide host metadata (collected once); a key seen again is updated."""
        with self.transaction() as db:
            self._insert_metadata(db, experiment_id, None, items)

    def record_run(self, experiment_id: int, run: RunRecord, *, replace: bool = False) -> Recorded:
        """Commit one run and everything measured in it, atomically.

        A run whose key is already committed is left alone (``inserted=False``),
        so a resumed experiment may call this again safely; with ``replace``
        the old run and its rows are deleted and the new one written, in the
        same transaction (e.g. retrying a failed run).
        """
        _check_run(run)
        try:
            with self.transaction() as db:
                old = db.execute("SELECT id FROM runs WHERE experiment_id = ? AND key = ?",
                                 (experiment_id, run.key)).fetchone()
                if old is not None and not replace:
                    return Recorded(int(old["id"]), inserted=False)
                if old is not None:
                    db.execute("DELETE FROM runs WHERE id = ?", (old["id"],))
                run_id = self._insert_run(db, experiment_id, run)
                self._insert_run_rows(db, experiment_id, run_id, run)
                return Recorded(run_id, inserted=True)
        except sqlite3.Error as exc:
            raise ResultsError(f"{self.path}: run {run.key} not stored (nothing of it was written): {exc}") from None

    def committed_runs(self, experiment_id: int, *, status: Status | None = None) -> set[str]:
        """Keys of the experiment's committed runs (what ``--resume`` skips)."""
        sql = "SELECT key FROM runs WHERE experiment_id = ?" + (" AND status = ?" if status else "")
        args: tuple[Any, ...] = (experiment_id, status) if status else (experiment_id,)
        return {row["key"] for row in self._conn.execute(sql, args)}

    def _insert_run(self, db: sqlite3.Connection, experiment_id: int, run: RunRecord) -> int:
        cursor = db.execute(
            "INSERT INTO runs (experiment_id, key, params, repetition, position, seed, status, reason,"
            " scheduled_start, started, ended, start_skew, committed, fidelity)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (experiment_id, run.key, json.dumps(dict(run.params), default=str), run.repetition, run.position,
             run.seed, run.status, run.reason, run.scheduled_start, run.started, run.ended, run.start_skew,
             time.time(), json.dumps(list(run.fidelity))))
        return int(cursor.lastrowid or 0)

    def _insert_run_rows(self, db: sqlite3.Connection, experiment_id: int, run_id: int, run: RunRecord) -> None:
        host_ids = _HostIds(db, experiment_id)
        db.executemany(
            "INSERT INTO processes (run_id, host_id, role, action, scheduled_start, started, ended, exit_code)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(run_id, host_ids[p.host], p.role, p.action, p.scheduled_start, p.started, p.ended, p.exit_code)
             for p in run.processes])
        db.executemany("INSERT INTO metrics (run_id, host_id, name, value, unit) VALUES (?, ?, ?, ?, ?)",
                       [(run_id, host_ids.get(m.host), m.name, float(m.value), m.unit) for m in run.metrics])
        db.executemany("INSERT INTO samples (run_id, host_id, series, t, value, unit) VALUES (?, ?, ?, ?, ?, ?)",
                       [(run_id, host_ids.get(s.host), s.series, float(s.t), float(s.value), s.unit)
                        for s in run.samples])
        self._insert_metadata(db, experiment_id, run_id, run.metadata)

    def _insert_metadata(self, db: sqlite3.Connection, experiment_id: int, run_id: int | None,
                         items: Iterable[HostMeta]) -> None:
        host_ids = _HostIds(db, experiment_id)
        for item in items:
            db.execute(
                "INSERT INTO host_metadata (experiment_id, host_id, run_id, key, value, source)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host_id, ifnull(run_id, 0), key) DO UPDATE SET"
                " value = excluded.value, source = excluded.source",
                (experiment_id, host_ids[item.host], run_id, item.key, str(item.value), item.source))

    # ── reading ──────────────────────────────────────────────────────────────

    def experiments(self) -> list[ExperimentRow]:
        """Every experiment, oldest first."""
        rows = self._conn.execute("SELECT * FROM experiments ORDER BY started, id")
        return [ExperimentRow(r["id"], r["name"], r["file_hash"], r["file_path"], r["seed"], r["run_order"],
                              r["started"], r["ended"], json.loads(r["checks"]), bool(r["forced"]),
                              r["enosnet_version"], json.loads(r["spec"] or "{}")) for r in rows]

    def experiment(self, which: int | str | None = None) -> ExperimentRow:
        """One experiment by id or name (the latest of that name); ``None``: the latest one."""
        candidates = self.experiments()
        if which is not None:
            candidates = [e for e in candidates if e.id == which or e.name == str(which) or str(e.id) == str(which)]
        if not candidates:
            known = ", ".join(sorted({e.name for e in self.experiments()})) or "none"
            what = "no experiment in the database" if which is None else f"no experiment {which!r}"
            raise ResultsError(f"{self.path}: {what} (experiments: {known})")
        return candidates[-1]

    def runs(self, *, experiment: int | None = None, status: Status | None = None) -> list[RunRow]:
        """Runs in execution order (position)."""
        where, args = _filters(("experiment_id", experiment), ("status", status))
        rows = self._conn.execute(f"SELECT * FROM runs {where} ORDER BY experiment_id, position, id", args)
        return [RunRow(r["id"], r["experiment_id"], r["key"], json.loads(r["params"]), r["repetition"],
                       r["position"], r["seed"], r["status"], r["reason"], r["scheduled_start"], r["started"],
                       r["ended"], r["start_skew"], tuple(json.loads(r["fidelity"] or "[]"))) for r in rows]

    def hosts(self, *, experiment: int | None = None) -> list[HostRow]:
        where, args = _filters(("experiment_id", experiment))
        rows = self._conn.execute(f"SELECT * FROM hosts {where} ORDER BY experiment_id, name", args)
        return [HostRow(r["id"], r["experiment_id"], r["name"], r["address"], r["role"], r["provider"],
                        r["instance_type"], r["az"]) for r in rows]

    def host_metadata(self, *, experiment: int | None = None, per_run: bool = False) -> list[MetadataRow]:
        """Host metadata collected once per experiment (or, with ``per_run``, also per run)."""
        where, args = _filters(("m.experiment_id", experiment))
        if not per_run:
            where += (" AND" if where else "WHERE") + " m.run_id IS NULL"
        rows = self._conn.execute(
            "SELECT m.experiment_id, h.name AS host, m.run_id, m.key, m.value, m.source FROM host_metadata m"
            f" JOIN hosts h ON h.id = m.host_id {where} ORDER BY h.name, m.key, m.run_id", args)
        return [MetadataRow(r["experiment_id"], r["host"], r["run_id"], r["key"], r["value"], r["source"])
                for r in rows]

    def processes(self, *, experiment: int | None = None) -> list[ProcessRow]:
        where, args = _filters(("r.experiment_id", experiment))
        rows = self._conn.execute(
            "SELECT p.*, h.name AS host FROM processes p JOIN runs r ON r.id = p.run_id"
            f" JOIN hosts h ON h.id = p.host_id {where} ORDER BY r.position, h.name, p.id", args)
        return [ProcessRow(r["run_id"], r["host"], r["role"], r["action"], r["scheduled_start"], r["started"],
                           r["ended"], r["exit_code"]) for r in rows]

    def metrics(self, *, experiment: int | None = None, name: str | None = None,
                include_failed: bool = False) -> list[MetricRow]:
        """Metrics joined with their run's parameters; failed runs are left out unless asked for."""
        where, args = _filters(("r.experiment_id", experiment), ("m.name", name),
                               ("r.status", None if include_failed else "ok"))
        rows = self._conn.execute(
            "SELECT m.run_id, r.params, r.repetition, r.status, h.name AS host, h.role, m.name, m.value, m.unit"
            f" FROM metrics m JOIN runs r ON r.id = m.run_id LEFT JOIN hosts h ON h.id = m.host_id {where}"
            " ORDER BY r.position, m.name, h.name", args)
        params = _ParamsCache()
        return [MetricRow(r["run_id"], params(r["run_id"], r["params"]), r["repetition"], r["status"], r["host"],
                          r["role"], r["name"], r["value"], r["unit"]) for r in rows]

    def samples(self, *, experiment: int | None = None, series: str | None = None,
                include_failed: bool = False) -> list[SampleRow]:
        """Time-series samples joined with their run's parameters, in time order."""
        where, args = _filters(("r.experiment_id", experiment), ("s.series", series),
                               ("r.status", None if include_failed else "ok"))
        rows = self._conn.execute(
            "SELECT s.run_id, r.params, r.repetition, h.name AS host, h.role, s.series, s.t, s.value, s.unit"
            f" FROM samples s JOIN runs r ON r.id = s.run_id LEFT JOIN hosts h ON h.id = s.host_id {where}"
            " ORDER BY r.position, s.series, h.name, s.t", args)
        params = _ParamsCache()
        return [SampleRow(r["run_id"], params(r["run_id"], r["params"]), r["repetition"], r["host"], r["role"],
                          r["series"], r["t"], r["value"], r["unit"]) for r in rows]

    def series_names(self, *, experiment: int | None = None) -> list[tuple[str, str]]:
        """Distinct ``(series, unit)`` pairs of the samples."""
        where, args = _filters(("r.experiment_id", experiment))
        rows = self._conn.execute(f"SELECT DISTINCT s.series, s.unit FROM samples s JOIN runs r ON r.id = s.run_id"
                                  f" {where} ORDER BY s.series", args)
        return [(r["series"], r["unit"]) for r in rows]

    def table(self, name: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and raw rows of one table (for export)."""
        if name not in TABLES:
            raise ConfigError(f"unknown table {name!r}; tables: {', '.join(TABLES)}")
        cursor = self._conn.execute(f"SELECT * FROM {name} ORDER BY id")
        return [d[0] for d in cursor.description], [tuple(r) for r in cursor.fetchall()]

    def backup_to(self, dest: Path) -> None:
        """A consistent copy of the database at ``dest`` (SQLite's online backup API; safe during writes)."""
        target = sqlite3.connect(str(dest))
        try:
            self._conn.backup(target)
        finally:
            target.close()


def _check_run(run: RunRecord) -> None:
    """Refuse what SQLite would store wrongly: an unknown status, values that are not finite numbers."""
    if run.status not in ("ok", "failed"):
        raise ConfigError(f"run {run.key}: status must be 'ok' or 'failed', not {run.status!r}")
    problems = [(f"run {run.key} metric {m.name}", f"{m.value!r} on {m.host or 'the run'} is not a finite number")
                for m in run.metrics if not _finite(m.value)]
    problems += [(f"run {run.key} series {s.series}", f"t={s.t!r} value={s.value!r} on {s.host or 'the run'} is not "
                  "finite") for s in run.samples if not (_finite(s.t) and _finite(s.value))]
    if problems:
        raise ConfigError(f"run {run.key}: {len(problems)} values cannot be stored (leave them out)", problems[:10])


def _finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


class _ParamsCache:
    """Parses each run's parameters once, however many rows of that run a query returns (rows share the dict)."""

    def __init__(self) -> None:
        self._parsed: dict[int, dict[str, Any]] = {}

    def __call__(self, run_id: int, text: str) -> dict[str, Any]:
        if run_id not in self._parsed:
            self._parsed[run_id] = json.loads(text)
        return self._parsed[run_id]


class _HostIds:
    """Host name → id within one experiment; unknown hosts are added with their name only."""

    def __init__(self, db: sqlite3.Connection, experiment_id: int) -> None:
        self._db = db
        self._experiment = experiment_id
        self._ids = {r["name"]: int(r["id"]) for r in
                     db.execute("SELECT id, name FROM hosts WHERE experiment_id = ?", (experiment_id,))}

    def __getitem__(self, name: str) -> int:
        if name not in self._ids:
            cursor = self._db.execute("INSERT INTO hosts (experiment_id, name) VALUES (?, ?)", (self._experiment, name))
            self._ids[name] = int(cursor.lastrowid or 0)
        return self._ids[name]

    def get(self, name: str | None) -> int | None:
        return None if name is None else self[name]


def _filters(*pairs: tuple[str, Any]) -> tuple[str, tuple[Any, ...]]:
    used = [(column, value) for column, value in pairs if value is not None]
    if not used:
        return "", ()
    return "WHERE " + " AND ".join(f"{column} = ?" for column, _ in used), tuple(v for _, v in used)


# ── DataFrames and export ─────────────────────────────────────────────────────


def to_frame(rows: Sequence[Any]) -> Any:
    """A pandas DataFrame of query rows, ``params`` spread into one column per parameter.

    Raises ``ResultsError`` when pandas is not installed (``pip install 'enosnet[data]'``).
    """
    pandas = _optional("pandas", "DataFrames")
    records = [_flat(row) for row in rows]
    return pandas.DataFrame.from_records(records)


def _flat(row: Any) -> dict[str, Any]:
    record = dataclasses.asdict(row)
    params = record.pop("params", None)
    if isinstance(params, dict):
        record.update({f"param.{k}": v for k, v in params.items()})
    for key, value in record.items():
        if isinstance(value, list | dict):
            record[key] = json.dumps(value, default=str)
    return record


def _optional(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ResultsError(f"{what} need the Python package {module!r}, which is not installed: "
                           "pip install 'enosnet[data]'") from None


ExportFormat = Literal["csv", "parquet"]


def export(store: ResultsStore, out_dir: Path, *, fmt: ExportFormat = "csv") -> list[Path]:
    """Write every table, plus ``results`` (metrics with one column per parameter), to ``out_dir``.

    CSV needs nothing; parquet needs pyarrow (``ResultsError`` otherwise).
    Returns the files written.
    """
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"export format must be csv or parquet, not {fmt!r}")
    writer = _write_csv if fmt == "csv" else _write_parquet
    if fmt == "parquet":
        _optional("pyarrow", "parquet exports")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        columns, rows = store.table(name)
        written.append(writer(out_dir / f"{name}.{fmt}", columns, rows))
    columns, rows = _results_table(store)
    written.append(writer(out_dir / f"results.{fmt}", columns, rows))
    return written


def _results_table(store: ResultsStore) -> tuple[list[str], list[tuple[Any, ...]]]:
    metrics = store.metrics(include_failed=True)
    names = sorted({k for m in metrics for k in m.params})
    columns = ["run_id", *names, "repetition", "status", "host", "role", "metric", "value", "unit"]
    rows = [(m.run_id, *(m.params.get(n) for n in names), m.repetition, m.status, m.host, m.role, m.name, m.value,
             m.unit) for m in metrics]
    return columns, rows


def _write_csv(path: Path, columns: list[str], rows: list[tuple[Any, ...]]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def _write_parquet(path: Path, columns: list[str], rows: list[tuple[Any, ...]]) -> Path:
    pyarrow = _optional("pyarrow", "parquet exports")
    parquet = importlib.import_module("pyarrow.parquet")
    data = {c: [_scalar(r[i]) for r in rows] for i, c in enumerate(columns)}
    parquet.write_table(pyarrow.table(data), str(path))
    return path


def _scalar(value: Any) -> Any:
    return value if value is None or isinstance(value, int | float | str) else json.dumps(value, default=str)

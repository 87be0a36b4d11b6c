"""The results database: schema, idempotent per-run commits, queries, export."""

from __future__ import annotations

import csv
import importlib.util
import multiprocessing
import sqlite3
from pathlib import Path

import pytest

from enosnet.errors import ConfigError, ResultsError
from enosnet.results.store import (
    SCHEMA_VERSION,
    CheckResult,
    ExperimentRecord,
    HostMeta,
    HostRecord,
    Metric,
    ProcessRecord,
    ResultsStore,
    RunRecord,
    Sample,
    export,
    run_key,
    to_frame,
)
from enosnet.results.synthetic import fill_synthetic


def _run(rep: int = 0, *, cc: str = "reno", status: str = "ok", value: float = 1.0) -> RunRecord:
    params = {"cc": cc, "delay": "20ms"}
    return RunRecord(
        key=run_key(params, rep), params=params, repetition=rep, position=rep, seed=rep, status=status,  # type: ignore[arg-type]
        reason=None if status == "ok" else "client lost", scheduled_start=100.0, started=100.001, ended=110.0,
        start_skew=0.0007,
        processes=[ProcessRecord("client-0", "iperf3-client", "client", 100.0, 100.001, 110.0, 0)],
        metrics=[Metric("client-0", "throughput", value, "bit/s"), Metric(None, "total", value, "bit/s")],
        samples=[Sample("client-0", "throughput", float(t), value, "bit/s") for t in range(3)],
        metadata=[HostMeta("client-0", "qdisc", "netem delay 20ms", "tc")])


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    s = ResultsStore.open(tmp_path / "results.db")
    yield s  # type: ignore[misc]
    s.close()


@pytest.fixture
def exp(store: ResultsStore) -> int:
    exp_id = store.begin_experiment(ExperimentRecord(
        name="incast", file_hash="abc", seed=7, order="shuffled", enosnet_version="0.1.0",
        checks=[CheckResult("reachable", True, "2 of 2")]))
    store.add_hosts(exp_id, [HostRecord("client-0", "198.18.0.3", "client", "local"),
                             HostRecord("server-0", "198.18.0.2", "server", "local")])
    return exp_id


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_new_database_is_wal_and_versioned(store: ResultsStore, tmp_path: Path) -> None:
    assert store.schema_version == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "results.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"experiments", "runs", "hosts", "host_metadata", "processes", "metrics", "samples"} <= tables


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    ResultsStore.open(tmp_path / "r.db").close()
    with sqlite3.connect(tmp_path / "r.db") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ResultsError, match="newer"):
        ResultsStore.open(tmp_path / "r.db")


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="enosnet bench"):
        ResultsStore.open(tmp_path / "none.db", create=False)


def test_record_run_twice_writes_rows_once(store: ResultsStore, exp: int, tmp_path: Path) -> None:
    first = store.record_run(exp, _run())
    again = store.record_run(exp, _run())
    assert first.inserted and not again.inserted and first.run_id == again.run_id
    db = tmp_path / "results.db"
    assert [_count(db, t) for t in ("runs", "metrics", "samples", "processes")] == [1, 2, 3, 1]
    assert store.committed_runs(exp) == {_run().key}


def test_replace_swaps_a_failed_run_for_its_retry(store: ResultsStore, exp: int, tmp_path: Path) -> None:
    store.record_run(exp, _run(status="failed"))
    store.record_run(exp, _run(value=5.0), replace=True)
    runs = store.runs(experiment=exp)
    assert [(r.status, r.reason) for r in runs] == [("ok", None)]
    assert [m.value for m in store.metrics(name="throughput")] == [5.0]
    assert _count(tmp_path / "results.db", "samples") == 3


def test_a_run_that_fails_to_commit_leaves_nothing(store: ResultsStore, exp: int, tmp_path: Path) -> None:
    # the run row, its metrics and samples go in first; the process row then breaks a NOT NULL constraint
    bad = RunRecord(key="k", params={}, repetition=0, position=0, metrics=[Metric("client-0", "x", 1.0)],
                    samples=[Sample("client-0", "s", 0.0, 1.0)],
                    processes=[ProcessRecord("client-0", None)])  # type: ignore[arg-type]
    with pytest.raises(ResultsError, match="run k not stored"):
        store.record_run(exp, bad)
    db = tmp_path / "results.db"
    assert [_count(db, t) for t in ("runs", "metrics", "samples", "processes")] == [0, 0, 0, 0]
    assert store.record_run(exp, _run()).inserted


def test_a_commit_that_fails_is_rolled_back_and_the_store_stays_usable(store: ResultsStore, exp: int,
                                                                         tmp_path: Path) -> None:
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as conn:
        conn.execute("PRAGMA defer_foreign_keys=ON")  # the foreign key is checked only by COMMIT, which then fails
        conn.execute("INSERT INTO runs (experiment_id, key, params, repetition, position, status, committed)"
                     " VALUES (999, 'x', '{}', 0, 0, 'ok', 0)")
    assert store.record_run(exp, _run()).inserted
    assert _count(tmp_path / "results.db", "runs") == 1


def test_values_sqlite_cannot_hold_are_refused_with_their_names(store: ResultsStore, exp: int) -> None:
    bad = RunRecord(key="k", params={}, repetition=0, position=0,
                    metrics=[Metric("client-0", "rtt", float("nan"), "ms"), Metric(None, "ok", 1.0)],
                    samples=[Sample("client-0", "cpu", 1.0, float("inf"), "%")])
    with pytest.raises(ConfigError, match="2 values") as raised:
        store.record_run(exp, bad)
    assert "metric rtt" in str(raised.value) and "series cpu" in str(raised.value)
    assert store.committed_runs(exp) == set()


def test_bad_status_is_a_config_error(store: ResultsStore, exp: int) -> None:
    with pytest.raises(ConfigError, match="status"):
        store.record_run(exp, _run(status="maybe"))


def test_resumed_experiment_keeps_its_row_and_sticky_force(store: ResultsStore, exp: int) -> None:
    again = store.begin_experiment(ExperimentRecord(name="incast", file_hash="abc", seed=7, forced=True,
                                                    checks=[CheckResult("netem", False, "no delay", forced=True)]))
    later = store.begin_experiment(ExperimentRecord(name="incast", file_hash="abc", seed=7))
    assert again == later == exp
    row = store.experiment(exp)
    assert row.forced and [c["name"] for c in row.checks] == ["reachable", "netem"]
    other = store.begin_experiment(ExperimentRecord(name="incast", file_hash="abd", seed=7))
    assert other != exp and store.experiment("incast").id == other


def test_queries_join_parameters_hosts_and_roles(store: ResultsStore, exp: int) -> None:
    store.record_run(exp, _run(0, value=1.0))
    store.record_run(exp, _run(1, value=2.0, status="failed"))
    store.add_metadata(exp, [HostMeta("client-0", "kernel", "6.1", "uname -r")])
    ok = store.metrics(experiment=exp, name="throughput")
    assert [(m.params["cc"], m.host, m.role, m.value, m.unit) for m in ok] == [("reno", "client-0", "client", 1.0,
                                                                                   "bit/s")]
    assert len(store.metrics(include_failed=True, name="throughput")) == 2
    assert [m.host for m in store.metrics(name="total")] == [None]
    assert [(s.t, s.host) for s in store.samples(series="throughput")] == [(0.0, "client-0"), (1.0, "client-0"),
                                                                           (2.0, "client-0")]
    assert [(p.host, p.action, p.exit_code) for p in store.processes(experiment=exp)] == [
        ("client-0", "iperf3-client", 0), ("client-0", "iperf3-client", 0)]
    assert [(m.key, m.value) for m in store.host_metadata(experiment=exp)] == [("kernel", "6.1")]
    assert {m.key for m in store.host_metadata(experiment=exp, per_run=True)} == {"kernel", "qdisc"}
    assert [h.name for h in store.hosts(experiment=exp)] == ["client-0", "server-0"]


def test_unknown_experiment_names_the_known_ones(store: ResultsStore, exp: int) -> None:
    with pytest.raises(ResultsError, match="incast"):
        store.experiment("nope")


def test_run_key_is_stable_and_distinguishes_repetitions() -> None:
    assert run_key({"a": 1, "b": "x"}, 0) == run_key({"b": "x", "a": 1}, 0)
    assert run_key({"a": 1}, 0) != run_key({"a": 1}, 1) != run_key({"a": 2}, 1)


def _writer(path: str, start: int) -> None:
    with ResultsStore.open(path) as s:
        exp = s.begin_experiment(ExperimentRecord(name="par", seed=1))
        for rep in range(start, start + 20):
            s.record_run(exp, _run(rep))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "results.db")
    procs = [multiprocessing.get_context("fork").Process(target=_writer, args=(path, n * 10)) for n in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert _count(tmp_path / "results.db", "runs") == 40  # reps 0..39 (overlaps deduplicated by key)


def test_export_csv_has_every_table_and_a_flat_results_table(store: ResultsStore, tmp_path: Path) -> None:
    fill_synthetic(store, repetitions=2)
    files = export(store, tmp_path / "out")
    assert sorted(f.name for f in files) == sorted(f"{t}.csv" for t in (
        "experiments", "hosts", "runs", "host_metadata", "processes", "metrics", "samples", "results"))
    with (tmp_path / "out" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {"cc", "delay", "repetition", "metric", "value", "unit", "host"} <= set(rows[0])
    assert {r["cc"] for r in rows} == {"cubic", "reno"}


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_export_parquet_round_trips(store: ResultsStore, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    fill_synthetic(store, repetitions=2)
    export(store, tmp_path / "pq", fmt="parquet")
    table = pq.read_table(tmp_path / "pq" / "results.parquet")
    assert table.num_rows == len(store.metrics(include_failed=True))
    assert "cc" in table.column_names


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas not installed")
def test_dataframe_spreads_parameters(store: ResultsStore) -> None:
    fill_synthetic(store, repetitions=2)
    frame = to_frame(store.metrics(name="throughput"))
    assert {"param.cc", "param.delay", "value"} <= set(frame.columns)
    assert len(frame) == 2 * 2 * 2 * 4


def test_missing_optional_package_is_a_clear_error(store: ResultsStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed
    with pytest.raises(ResultsError, match="pip install"):
        export(store, tmp_path / "x", fmt="parquet")


def test_checks_can_be_added_later(store: ResultsStore, exp: int) -> None:
    store.add_checks(exp, [CheckResult("mtu", False, "1500 vs 9000", host="client-0", forced=True)], forced=True,
                     at=5.0)
    row = store.experiment(exp)
    assert row.forced and row.checks[-1] == {"name": "mtu", "ok": False, "detail": "1500 vs 9000", "host": "client-0",
                                             "forced": True, "at": 5.0}
    with pytest.raises(ResultsError, match="no experiment"):
        store.add_checks(999, [])


def test_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with ResultsStore.open(path) as s:
        s.begin_experiment(ExperimentRecord(name="old", seed=1))
    with sqlite3.connect(path) as db:  # make it what version 1 wrote
        db.execute("ALTER TABLE experiments DROP COLUMN file_path")
        db.execute("ALTER TABLE runs DROP COLUMN fidelity")
        db.execute("PRAGMA user_version = 1")
    with ResultsStore.open(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 3
        assert [(e.name, e.file_path) for e in s.experiments()] == [("old", None)]
        again = s.begin_experiment(ExperimentRecord(name="old", seed=1, file_path="/x/old.yaml"))
        assert s.experiment(again).file_path == "/x/old.yaml"


def test_fidelity_flags_are_kept_with_their_run(store: ResultsStore, exp: int) -> None:
    flags = ("the machine's CPUs were saturated (99 % busy, seen from client-0)",)
    store.record_run(exp, RunRecord(key="f", params={}, repetition=0, position=7, fidelity=flags))
    assert [r.fidelity for r in store.runs(experiment=exp) if r.key == "f"] == [flags]

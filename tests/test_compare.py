"""`enosnet compare`: known answers on synthetic databases, directions per metric, pairing, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from enosnet.results.compare import compare
from enosnet.results.store import ExperimentRecord, HostMeta, HostRecord, Metric, ResultsStore, RunRecord, run_key
from enosnet.results.synthetic import fill_synthetic

ENOSNET = [sys.executable, "-c", "from enosnet.cli import main; main()"]


def synthetic(path: Path, **options: object) -> Path:
    with ResultsStore.open(path) as store:
        fill_synthetic(store, **options)  # type: ignore[arg-type]
    return path


def enosnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENOSNET, *args], capture_output=True, text=True, timeout=120)


def test_a_ten_percent_regression_on_one_combination_is_named_and_exits_1(tmp_path: Path) -> None:
    base = synthetic(tmp_path / "base.db", effect=0.0, seed=1)
    cand = synthetic(tmp_path / "cand.db", effect=0.10, seed=2)  # reno at 20 ms loses 10 %
    out = enosnet("compare", str(base), str(cand))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "regression: throughput at cc=reno, delay=20ms: worse by" in " ".join(out.stderr.split())
    assert out.stdout.count("✗ worse") == 1 and out.stdout.count("  =") == 3
    result = compare(base, cand)
    [worse] = result.regressions
    assert dict(worse.combo) == {"cc": "reno", "delay": "20ms"} and -0.13 < worse.comparison.rel_diff < -0.07
    assert worse.comparison.ci.high < 0


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_without_a_difference_it_exits_0(tmp_path: Path, seed: int) -> None:
    base = synthetic(tmp_path / "base.db", effect=0.10, seed=seed)
    cand = synthetic(tmp_path / "cand.db", effect=0.10, seed=seed + 100)
    out = enosnet("compare", str(base), str(cand), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["regressions"] == [] and len(data["rows"]) == 4
    assert {r["verdict"] for r in data["rows"]} == {"no practically significant difference"}


def two_sided(path: Path, *, throughput: float, rtt: float, kernel: str, delays: tuple[str, ...]) -> Path:
    with ResultsStore.open(path) as store:
        exp = store.begin_experiment(ExperimentRecord(name="x", seed=1))
        store.add_hosts(exp, [HostRecord("client-0", "198.18.0.3", "client", "local")])
        store.add_metadata(exp, [HostMeta("client-0", "kernel", kernel, "probe")])
        for position, (delay, rep) in enumerate((d, r) for d in delays for r in range(5)):
            wobble = 1 + (rep - 2) * 0.002
            store.record_run(exp, RunRecord(key=run_key({"delay": delay}, rep), params={"delay": delay},
                                            repetition=rep, position=position,
                                            metrics=[Metric("client-0", "throughput", throughput * wobble, "bit/s"),
                                                     Metric("client-0", "rtt_min", rtt * wobble, "ms")]))
    return path


def test_which_way_is_worse_comes_from_the_metric_and_pairing_is_by_parameters(tmp_path: Path) -> None:
    base = two_sided(tmp_path / "a.db", throughput=1e9, rtt=10.0, kernel="6.1", delays=("0ms", "20ms"))
    cand = two_sided(tmp_path / "b.db", throughput=1.2e9, rtt=12.0, kernel="6.5", delays=("0ms", "50ms"))
    result = compare(base, cand, metrics=["throughput", "rtt_min"])
    verdicts = {(r.metric, dict(r.combo)["delay"]): r.verdict for r in result.rows}
    assert verdicts == {("throughput", "0ms"): "better", ("rtt_min", "0ms"): "worse"}  # 20 % more of each
    assert sorted(result.unpaired) == ["rtt_min at delay=20ms: only in " + str(base),
                                       "rtt_min at delay=50ms: only in " + str(cand),
                                       "throughput at delay=20ms: only in " + str(base),
                                       "throughput at delay=50ms: only in " + str(cand)]
    assert any("kernel is 6.1 in" in w and "but 6.5 in" in w for w in result.warnings), result.warnings
    md, html = result.markdown(), result.html()
    assert "**regression**: rtt_min at delay=0ms: worse by 20.0 %" in md and "class=bad" in html


def test_a_side_that_is_nothing_is_a_usage_error(tmp_path: Path) -> None:
    base = synthetic(tmp_path / "base.db", seed=1)
    out = enosnet("compare", str(base), str(tmp_path / "nothing"))
    assert out.returncode == 2 and "nothing: no environment folder, results database or DB:EXPERIMENT" in out.stderr
    out = enosnet("compare", f"{base}:incast", str(base), "--metric", "goodput")
    assert out.returncode != 0 and "metric 'goodput' is not measured on both sides" in out.stderr


def two_builds(path: Path, *, slower: float) -> Path:
    """One experiment with builds base and mine interleaved; mine is ``slower`` (a fraction) at 20 ms."""
    with ResultsStore.open(path) as store:
        exp = store.begin_experiment(ExperimentRecord(name="nb", seed=1))
        store.add_hosts(exp, [HostRecord("client-0", "198.18.0.3", "client", "local")])
        position = 0
        for rep in range(6):
            for delay in ("0ms", "20ms"):
                for build in ("base", "mine"):
                    params = {"delay": delay, "build": build}
                    wobble = 1 + (rep - 2.5) * 0.002
                    value = 1e9 * wobble * (1 - slower if (build, delay) == ("mine", "20ms") else 1)
                    store.record_run(exp, RunRecord(key=run_key(params, rep), params=params, repetition=rep,
                                                    position=position,
                                                    metrics=[Metric("client-0", "throughput", value, "bit/s")]))
                    position += 1
    return path


def test_two_builds_of_one_experiment_are_paired_by_their_other_parameters(tmp_path: Path) -> None:
    db = two_builds(tmp_path / "nb.db", slower=0.10)
    page, md = tmp_path / "cmp.html", tmp_path / "cmp.md"
    out = enosnet("compare", str(db), "--builds", "base,mine", "--html", str(page), "--md", str(md))
    assert out.returncode == 1, out.stdout + out.stderr
    # the written comparison carries its plot: embedded in the page, beside the Markdown
    assert page.read_text().count('src="data:image/png;base64,') == 1 and "mine against base" in page.read_text()
    assert "![throughput, mine against base](cmp-plots/compare-throughput.png)" in md.read_text()
    assert (tmp_path / "cmp-plots" / "compare-throughput.png").stat().st_size > 5000
    assert "regression: throughput at delay=20ms: worse by" in " ".join(out.stderr.split())
    assert out.stdout.startswith("mine against base (2 comparisons")
    result = compare(db, builds=("base", "mine"))
    assert [(dict(r.combo), r.verdict) for r in result.rows] == [
        ({"delay": "0ms"}, "no practically significant difference"), ({"delay": "20ms"}, "worse")]
    assert result.warnings == []  # one experiment: the same testbed on both sides
    same = two_builds(tmp_path / "same.db", slower=0.0)
    assert enosnet("compare", str(same), "--builds", "base,mine").returncode == 0
    for args, said in ((("--builds", "base,other"), "has no build 'other' (its builds: base, mine)"),
                       (("--builds", "base"), "give two different build labels"),
                       ((str(same), "--builds", "base,mine"), "give a candidate, or two builds")):
        bad = enosnet("compare", str(db), *args)
        assert bad.returncode == 2 and said in " ".join(bad.stderr.split()), bad.stderr

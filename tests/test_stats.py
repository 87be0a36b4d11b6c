"""Statistics checked against known answers."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enosnet.results.stats import (
    Comparison,
    StatsOptions,
    _cross_check_warnings,
    analyze,
    bootstrap_ci,
    compare_levels,
    holm,
    run_values,
    student_t_sf,
    summarize,
    welch_t_test,
)
from enosnet.results.store import ExperimentRecord, Metric, ResultsStore, RunRecord, run_key
from enosnet.results.synthetic import fill_synthetic

# R: sleep data, t.test(extra ~ group, data = sleep) → t = -1.8608, df = 17.776, p-value = 0.07939
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def _cc_at(comparisons: list[Comparison], metric: str, delay: str) -> Comparison:
    [found] = [c for c in comparisons if c.metric == metric and c.parameter == "cc" and dict(c.at) == {"delay": delay}]
    return found


def test_welch_matches_r() -> None:
    assert welch_t_test(SLEEP_1, SLEEP_2) == pytest.approx(0.07939, abs=5e-5)
    assert welch_t_test([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.07099, abs=5e-5)


def test_welch_edge_cases() -> None:
    assert welch_t_test([1.0, 1.0], [1.0, 1.0]) == 1.0
    assert welch_t_test([1.0, 1.0], [2.0, 2.0]) == 0.0
    assert math.isnan(welch_t_test([1.0], [2.0, 3.0]))


@pytest.mark.parametrize(("t", "df", "two_sided"), [(2.228139, 10, 0.05), (12.7062, 1, 0.05), (2.575829, 1e7, 0.01),
                                                    (0.0, 5, 1.0), (3.169273, 10, 0.01)])
def test_t_distribution_tail_matches_tables(t: float, df: float, two_sided: float) -> None:
    assert 2 * student_t_sf(t, df) == pytest.approx(two_sided, abs=2e-6)


def test_holm_on_known_families() -> None:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    with_nan = holm([0.5, math.nan, 0.01])  # NaN (no test possible) is not part of the family
    assert with_nan[0] == 0.5 and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.02)
    assert holm([0.04, 0.3]) == pytest.approx([0.08, 0.3])
    assert holm([0.021, 0.02]) == pytest.approx([0.04, 0.04])  # never below a smaller p's adjustment
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1


def test_summary_statistics() -> None:
    s = summarize("x", "ms", (), [1.0, 2.0, 3.0, 4.0, 100.0])
    assert (s.n, s.mean, s.median, s.min, s.max) == (5, 22.0, 3.0, 1.0, 100.0)
    assert s.std == pytest.approx(float(np.std([1, 2, 3, 4, 100], ddof=1)))
    assert s.p5 == pytest.approx(1.2) and s.p95 == pytest.approx(80.8)
    assert s.mean_ci.low <= s.mean <= s.mean_ci.high
    assert s.median_ci.low <= s.median <= s.median_ci.high


def test_bootstrap_is_seeded_and_covers_the_mean() -> None:
    data = list(np.random.default_rng(3).normal(50, 5, 30))
    one = bootstrap_ci(data, lambda x: x.mean(axis=1), rng=np.random.default_rng(9))
    two = bootstrap_ci(data, lambda x: x.mean(axis=1), rng=np.random.default_rng(9))
    other = bootstrap_ci(data, lambda x: x.mean(axis=1), rng=np.random.default_rng(10))
    assert one == two and one != other
    assert one.low < float(np.mean(data)) < one.high
    # standard error of the mean is 5/sqrt(30) ≈ 0.91: a 95 % interval is about ±1.8
    assert 2.5 < one.high - one.low < 4.5


def test_built_in_ten_percent_difference_is_found() -> None:
    store = ResultsStore.open(":memory:")
    fill_synthetic(store, effect=0.10, repetitions=8, seed=4)
    analysis = analyze(store)
    slower = _cc_at(analysis.comparisons, "throughput", "20ms")
    assert slower.practically_significant
    assert slower.rel_diff == pytest.approx(-0.10, abs=0.02)
    assert slower.ci.low < -0.05 and slower.ci.high < 0
    assert re.fullmatch(r"throughput: reno is \d+ % lower than cubic at delay=20ms \(95 % CI [\d.]+–[\d.]+ %, "
                        r"Holm p [^)]+\), practically significant", slower.sentence), slower.sentence
    same = _cc_at(analysis.comparisons, "throughput", "0ms")
    assert not same.practically_significant
    assert same.sentence.startswith("throughput: no practically significant difference between reno and cubic")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_no_difference_is_not_flagged(seed: int) -> None:
    store = ResultsStore.open(":memory:")
    fill_synthetic(store, effect=0.0, repetitions=5, seed=seed)
    analysis = analyze(store, metrics=["throughput"])
    assert not [c.sentence for c in analysis.comparisons if c.parameter == "cc" and c.practically_significant]


def test_small_but_certain_difference_is_below_the_threshold() -> None:
    rng = np.random.default_rng(0)
    a, b = 100 + rng.normal(0, 0.2, 20), 103 + rng.normal(0, 0.2, 20)
    from dataclasses import replace

    c = compare_levels(a, b, options=StatsOptions(), seed_key="k", metric="m", levels=("x", "y"))
    c = replace(c, p_adjusted=c.p_value)
    assert c.ci.excludes_zero() and not c.practically_significant
    assert "below the 5 % threshold" in c.sentence
    lower = compare_levels(a, b, options=StatsOptions(threshold=0.02), seed_key="k", metric="m", levels=("x", "y"))
    assert replace(lower, p_adjusted=lower.p_value).practically_significant


def test_holm_is_applied_within_each_metric() -> None:
    store = ResultsStore.open(":memory:")
    fill_synthetic(store, repetitions=4)
    analysis = analyze(store)
    assert len(analysis.comparisons) == 3 * 4  # 3 metrics × (2 cc comparisons + 2 delay comparisons)
    for metric in analysis.metrics:  # each metric is its own family: the others do not dilute it
        family = [c for c in analysis.comparisons if c.metric == metric]
        assert [c.p_adjusted for c in family] == holm([c.p_value for c in family])
        assert {c.family for c in family} == {4}
    assert all(c.p_adjusted >= c.p_value for c in analysis.comparisons)
    only = analyze(store, metrics=["throughput"])
    assert len(only.comparisons) == 4 and only.metrics == ["throughput"]


def test_report_is_reproducible() -> None:
    def run() -> list[tuple[float, float]]:
        store = ResultsStore.open(":memory:")
        fill_synthetic(store, repetitions=4)
        return [(c.ci.low, c.ci.high) for c in analyze(store).comparisons]

    assert run() == run()


def test_hosts_are_summed_for_rates_and_averaged_otherwise() -> None:
    store = ResultsStore.open(":memory:")
    exp = store.begin_experiment(ExperimentRecord(name="e"))
    store.record_run(exp, RunRecord(run_key({}, 0), {}, 0, 0, metrics=[
        Metric("a", "tput", 1.0, "bit/s"), Metric("b", "tput", 2.0, "bit/s"),
        Metric("a", "rtt", 10.0, "ms"), Metric("b", "rtt", 20.0, "ms"),
        Metric("a", "agg", 1.0, "bit/s"), Metric(None, "agg", 7.0, "bit/s")]))
    values = run_values(store.metrics())
    assert {name: v for (name, _), by_run in values.items() for _, v in by_run.values()} == {
        "tput": 3.0, "rtt": 15.0, "agg": 7.0}


def test_warnings_say_why_the_data_cannot_conclude() -> None:
    store = ResultsStore.open(":memory:")
    exp = fill_synthetic(store, repetitions=3, failed_runs=2, forced=True, noise=0.4)
    store.record_run(exp, RunRecord(run_key({"cc": "cubic", "delay": "0ms"}, 99), {"cc": "cubic", "delay": "0ms"},
                                    99, 99, start_skew=0.25, metrics=[Metric(None, "throughput", 9e9, "bit/s")]))
    kinds = {w.kind: w.message for w in analyze(store).warnings}
    assert set(kinds) == {"few repetitions", "failed runs excluded", "high variation", "large start skew",
                          "forced environment check"}
    assert "2 of 13 runs failed" in kinds["failed runs excluded"] and "unable to connect" in kinds[
        "failed runs excluded"]
    assert "250.0 ms" in kinds["large start skew"]
    assert "netem applied" in kinds["forced environment check"]


def test_clean_data_has_no_warnings() -> None:
    store = ResultsStore.open(":memory:")
    fill_synthetic(store, repetitions=5, noise=0.01)
    assert analyze(store, metrics=["throughput"]).warnings == []


def test_too_few_runs_to_compare_says_so() -> None:
    c = compare_levels([1.0], [2.0, 3.0], options=StatsOptions(), seed_key="x", metric="m", levels=("a", "b"))
    assert not c.practically_significant and "not enough data" in c.sentence


def test_constant_and_list_parameters() -> None:
    store = ResultsStore.open(":memory:")
    exp = store.begin_experiment(ExperimentRecord(name="e"))
    for rep in range(3):
        for loss, value in ((0, 100.0), (0.01, 80.0)):
            params = {"loss": loss, "sizes": [1, 2], "driver": "tcp"}
            store.record_run(exp, RunRecord(run_key(params, rep), params, rep, rep * 2 + (loss > 0), metrics=[
                Metric(None, "goodput", value + rep, "bit/s")]))
    analysis = analyze(store)
    assert analysis.parameters == ("loss",) and analysis.constants == {"sizes": [1, 2], "driver": "tcp"}
    [c] = analysis.comparisons
    assert c.sentence.startswith("goodput: loss=0.01 is 20 % lower than loss=0 (95 % CI")


@given(st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=30))
def test_holm_properties(p_values: list[float]) -> None:
    adjusted = holm(p_values)
    assert all(p <= a <= 1.0 for p, a in zip(p_values, adjusted, strict=True))
    ranked = sorted(zip(p_values, adjusted, strict=True))
    assert all(a1 <= a2 for (_, a1), (_, a2) in pairwise(ranked))  # order kept
    assert min(adjusted) == pytest.approx(min(1.0, min(p_values) * len(p_values)))


def test_relative_difference_keeps_its_direction_for_negative_values() -> None:
    c = compare_levels([-10.0, -10.2, -9.8], [-5.0, -5.1, -4.9], options=StatsOptions(), seed_key="neg",
                       metric="offset", levels=("a", "b"))
    assert c.rel_diff == pytest.approx(0.5) and c.ci.low > 0  # -5 is higher than -10, by half its magnitude


def test_the_reason_given_when_nothing_is_concluded() -> None:
    from dataclasses import replace

    rng = np.random.default_rng(5)
    base = compare_levels(100 + rng.normal(0, 1, 8), 120 + rng.normal(0, 1, 8), options=StatsOptions(),
                          seed_key="r", metric="m", parameter="cc", levels=("x", "y"))
    assert base.ci.excludes_zero() and base.rel_diff > 0.05
    weak = replace(base, p_value=0.06, p_adjusted=0.06)
    assert "not statistically significant (p = 0.060 before correction)" in weak.sentence
    corrected = replace(base, p_value=0.01, p_adjusted=0.2, family=20)
    assert "once corrected for the 20 comparisons of m made (Holm)" in corrected.sentence
    assert replace(base, p_adjusted=0.01).practically_significant


def test_runs_whose_interface_bytes_disagree_with_the_tool_are_warned_about() -> None:
    assert _cross_check_warnings({1: ((), 1.04), 2: ((), 0.97)}) == []
    [warning] = _cross_check_warnings({1: ((), 1.04), 2: ((), 1.31), 3: ((), 0.5)})
    assert warning.kind == "throughput cross-check"
    assert warning.message.startswith("in 2 of 3 runs the hosts' interfaces received 0.50x to 1.31x the bytes")


def test_a_big_headline_effect_stays_significant_beside_many_other_metrics() -> None:
    # an 83 % drop over three noisy repetitions, next to 60 other metrics that do not move: corrected over
    # every comparison, Holm would multiply its p by 61 and call it "not significant"; per metric it stands
    store = ResultsStore.open(":memory:")
    exp = store.begin_experiment(ExperimentRecord(name="drop", seed=1))
    rng = np.random.default_rng(3)
    levels = {"0ms": [10.0, 12.0, 8.0], "20ms": [1.6, 2.6, 1.0]}
    for position, (delay, rep) in enumerate((d, r) for d in levels for r in range(3)):
        others = [Metric("client-0", f"other{i}", float(rng.normal(50, 5)), "%") for i in range(60)]
        store.record_run(exp, RunRecord(key=run_key({"delay": delay}, rep), params={"delay": delay}, repetition=rep,
                                        position=position, metrics=[Metric("client-0", "throughput",
                                                                           levels[delay][rep] * 1e9, "bit/s"),
                                                                    *others]))
    analysis = analyze(store)
    [drop] = [c for c in analysis.comparisons if c.metric == "throughput"]
    assert drop.family == 1 and drop.practically_significant, drop
    assert drop.ci.high < -0.5  # the CI excludes zero by far
    everything = holm([c.p_value for c in analysis.comparisons])
    assert everything[analysis.comparisons.index(drop)] > 0.05  # what one family over all metrics would say


def test_levels_are_compared_with_the_declared_baseline_not_every_pair() -> None:
    store = ResultsStore.open(":memory:")
    exp = store.begin_experiment(ExperimentRecord(name="levels", seed=1, spec={"baseline": {"delay": "20ms"}}))
    for position, (delay, rep) in enumerate((d, r) for d in ("0ms", "20ms", "50ms") for r in range(3)):
        store.record_run(exp, RunRecord(key=run_key({"delay": delay}, rep), params={"delay": delay}, repetition=rep,
                                        position=position, metrics=[Metric("c", "throughput", 1e9 + rep, "bit/s")]))
    pairs = [(c.baseline, c.other) for c in analyze(store).comparisons]
    assert pairs == [("20ms", "0ms"), ("20ms", "50ms")]

"""Statistics that do not fool you: summaries, comparisons, and when not to conclude.

Per parameter combination and metric: n, mean, median, standard deviation,
min/max, p5/p95 and seeded 95 % bootstrap confidence intervals of the mean and
the median. Between the levels of each parameter, at each combination of the
other parameters: the relative difference of the means with a bootstrap
confidence interval and a two-sided Welch t-test p-value, Holm-corrected over
every comparison made (the family shown in the report).

A difference is called *practically significant* only when all three hold:
its confidence interval excludes zero, its size exceeds the threshold (5 % by
default), and its Holm-corrected p-value is below ``alpha``.

>>> import numpy as np
>>> rng = np.random.default_rng(1)
>>> a, b = list(100 + rng.normal(0, 1, 10)), list(110 + rng.normal(0, 1, 10))
>>> c = compare_levels(a, b, options=StatsOptions(), seed_key="doc")
>>> round(c.rel_diff, 2), c.ci.low > 0
(0.1, True)
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from enosnet.results.store import ExperimentRow, MetricRow, ResultsStore, RunRow

Combo = tuple[tuple[str, Any], ...]
HEADLINE = ("throughput", "goodput")  # the metrics a report and a comparison lead with, in this order
Array = npt.NDArray[np.float64]
Values = Sequence[float] | npt.NDArray[Any]


@dataclass(frozen=True)
class StatsOptions:
    """Knobs of the analysis; the defaults suit a few to a few hundred repetitions.

    ``threshold`` is the smallest relative difference worth calling practical
    (0.05 = 5 %); ``max_cv`` the coefficient of variation above which a
    combination is flagged as too noisy; ``max_start_skew`` in seconds.
    """

    threshold: float = 0.05
    confidence: float = 0.95
    alpha: float = 0.05
    resamples: int = 2000
    seed: int = 0
    min_repetitions: int = 5
    max_cv: float = 0.10
    max_start_skew: float = 0.05


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class Summary:
    """Descriptive statistics of one metric at one parameter combination (values: one per run)."""

    metric: str
    unit: str
    combo: Combo
    n: int
    mean: float
    median: float
    std: float
    min: float
    max: float
    p5: float
    p95: float
    mean_ci: Interval
    median_ci: Interval

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / |mean|); NaN when undefined."""
        return self.std / abs(self.mean) if self.n > 1 and self.mean != 0 else math.nan


@dataclass(frozen=True)
class Comparison:
    """Level ``other`` against level ``baseline`` of ``parameter``, at the fixed values ``at`` of the others.

    ``rel_diff`` is (mean(other) - mean(baseline)) / |mean(baseline)|; ``p_value`` is Welch's
    two-sided t-test, ``p_adjusted`` its Holm correction over the family.
    """

    metric: str
    unit: str
    parameter: str
    baseline: Any
    other: Any
    at: Combo
    n_baseline: int
    n_other: int
    mean_baseline: float
    mean_other: float
    rel_diff: float
    ci: Interval
    p_value: float
    p_adjusted: float = math.nan
    threshold: float = 0.05
    alpha: float = 0.05
    family: int = 1

    @property
    def practically_significant(self) -> bool:
        return (self.ci.excludes_zero() and abs(self.rel_diff) > self.threshold
                and self.p_adjusted < self.alpha)

    @property
    def sentence(self) -> str:
        """The finding in one plain-language line."""
        return describe(self)


@dataclass(frozen=True)
class StatWarning:
    """Why (part of) the data cannot carry a conclusion."""

    kind: str
    message: str


@dataclass(frozen=True)
class Analysis:
    """Everything the report says about one experiment."""

    experiment: ExperimentRow
    parameters: tuple[str, ...]
    summaries: list[Summary]
    comparisons: list[Comparison]
    warnings: list[StatWarning]
    options: StatsOptions
    runs: list[RunRow] = field(default_factory=list)
    values: dict[tuple[str, Combo], list[float]] = field(default_factory=dict)
    constants: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(s.metric for s in self.summaries))


# ── descriptive statistics ────────────────────────────────────────────────────


def rng_for(options: StatsOptions, key: str) -> np.random.Generator:
    """A generator seeded by the options' seed and ``key``, so results do not depend on call order."""
    return np.random.default_rng([options.seed, zlib.crc32(key.encode())])


def bootstrap_ci(values: Values, statistic: Callable[[Array], Array], *, rng: np.random.Generator,
                 resamples: int = 2000, confidence: float = 0.95) -> Interval:
    """Percentile bootstrap interval of ``statistic`` (applied along axis 1 of the resample matrix).

    >>> rng = np.random.default_rng(0)
    >>> ci = bootstrap_ci([1.0, 2.0, 3.0, 4.0], lambda x: x.mean(axis=1), rng=rng)
    >>> 1.0 <= ci.low < 2.5 < ci.high <= 4.0
    True
    """
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        value = float(data[0]) if data.size else math.nan
        return Interval(value, value)
    stats = statistic(data[rng.integers(0, data.size, (resamples, data.size))])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(float(low), float(high))


def summarize(metric: str, unit: str, combo: Combo, values: Sequence[float], *,
              options: StatsOptions = StatsOptions()) -> Summary:
    """Descriptive statistics and bootstrap intervals of ``values``.

    >>> s = summarize("rtt", "ms", (("cc", "reno"),), [10.0, 11.0, 12.0])
    >>> s.n, s.mean, s.median, s.min, s.max
    (3, 11.0, 11.0, 10.0, 12.0)
    """
    data = np.asarray(values, dtype=float)
    rng = rng_for(options, f"{metric}|{combo}")
    return Summary(
        metric=metric, unit=unit, combo=combo, n=int(data.size), mean=float(data.mean()),
        median=float(np.median(data)), std=float(data.std(ddof=1)) if data.size > 1 else math.nan,
        min=float(data.min()), max=float(data.max()),
        p5=float(np.percentile(data, 5)), p95=float(np.percentile(data, 95)),
        mean_ci=bootstrap_ci(data, lambda x: x.mean(axis=1), rng=rng, resamples=options.resamples,
                             confidence=options.confidence),
        median_ci=bootstrap_ci(data, lambda x: np.median(x, axis=1), rng=rng, resamples=options.resamples,
                               confidence=options.confidence))


# ── tests of differences ──────────────────────────────────────────────────────


def welch_t_test(a: Values, b: Values) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) for equal means.

    >>> round(welch_t_test([1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 5.0, 6.0]), 4)
    0.071
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return math.nan
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    diff = float(y.mean() - x.mean())
    if va + vb == 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / math.sqrt(float(va + vb))
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    return min(1.0, 2 * student_t_sf(abs(t), float(df)))


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom, t >= 0.

    >>> round(2 * student_t_sf(2.776445, 4), 4)  # the 97.5 % quantile for df=4
    0.05
    """
    return 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1 - math.exp(log_front) * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny, c, d = 1e-300, 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return result


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order (NaN stays NaN and does not count).

    >>> [round(p, 6) for p in holm([0.01, 0.04, 0.03, 0.005])]
    [0.03, 0.06, 0.06, 0.02]
    """
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (len(indexed) - rank) * p))
        adjusted[i] = running
    return adjusted


def compare_levels(baseline: Sequence[float], other: Sequence[float], *, options: StatsOptions, seed_key: str,
                   metric: str = "", unit: str = "", parameter: str = "", levels: tuple[Any, Any] = ("a", "b"),
                   at: Combo = ()) -> Comparison:
    """Relative difference of the means of ``other`` vs ``baseline`` with its bootstrap CI and Welch p-value."""
    a, b = np.asarray(baseline, dtype=float), np.asarray(other, dtype=float)
    rng = rng_for(options, seed_key)
    # relative to |baseline|, so "higher" means higher also for negative values (offsets, deltas)
    rel = float((b.mean() - a.mean()) / abs(a.mean())) if a.mean() != 0 else math.nan
    ci = Interval(math.nan, math.nan)
    if a.size >= 2 and b.size >= 2 and a.mean() != 0:
        means_a = a[rng.integers(0, a.size, (options.resamples, a.size))].mean(axis=1)
        means_b = b[rng.integers(0, b.size, (options.resamples, b.size))].mean(axis=1)
        ratios = (means_b - means_a) / np.abs(np.where(means_a == 0, np.nan, means_a))
        tail = (1 - options.confidence) / 2 * 100
        low, high = np.nanpercentile(ratios, [tail, 100 - tail])
        ci = Interval(float(low), float(high))
    return Comparison(metric=metric, unit=unit, parameter=parameter, baseline=levels[0], other=levels[1], at=at,
                      n_baseline=int(a.size), n_other=int(b.size), mean_baseline=float(a.mean()),
                      mean_other=float(b.mean()), rel_diff=rel, ci=ci, p_value=welch_t_test(a, b),
                      threshold=options.threshold, alpha=options.alpha)


# ── plain language ────────────────────────────────────────────────────────────


def combo_text(combo: Combo) -> str:
    """``cc=reno, delay=20ms``."""
    return ", ".join(f"{k}={v}" for k, v in combo)


def _pct(x: float) -> str:
    return f"{abs(x) * 100:.{0 if abs(x) >= 0.095 else 1}f}"


def _signed(x: float) -> str:
    return ("+" if x > 0 else "−" if x < 0 else "") + _pct(x)


def ci_text(ci: Interval) -> str:
    """``8–16 %`` when the interval is on one side of zero, ``−4 to +2 %`` when it spans it."""
    if math.isnan(ci.low):
        return "not available"
    if ci.excludes_zero():
        low, high = sorted((abs(ci.low), abs(ci.high)))
        return f"{_pct(low)}–{_pct(high)} %"
    return f"{_signed(ci.low)} to {_signed(ci.high)} %"


def level_name(parameter: str, value: Any) -> str:
    """``reno`` for a word, ``loss=0.01`` or ``delay=20ms`` for anything that needs its parameter's name.

    >>> level_name("cc", "reno"), level_name("loss", 0.01), level_name("delay", "20ms")
    ('reno', 'loss=0.01', 'delay=20ms')
    """
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z][\w.+-]*", value):
        return value
    return f"{parameter}={value}"


def describe(c: Comparison) -> str:
    """One line: what differs, by how much, how sure, and whether it matters."""
    where = f" at {combo_text(c.at)}" if c.at else ""
    other, baseline = level_name(c.parameter, c.other), level_name(c.parameter, c.baseline)
    if math.isnan(c.rel_diff) or math.isnan(c.p_value):
        return (f"{c.metric}: {other} vs {baseline}{where}: not enough data to compare "
                f"(n = {c.n_baseline} and {c.n_other}; 2 successful runs each needed)")
    if c.rel_diff >= 1:
        size, than = f"{c.rel_diff + 1:.3g}× as high", "as"
    else:
        size, than = f"{_pct(c.rel_diff)} % {'higher' if c.rel_diff > 0 else 'lower'}", "than"
    stats = f"95 % CI {ci_text(c.ci)}, Holm p {_p(c.p_adjusted)}"
    if c.practically_significant:
        return f"{c.metric}: {other} is {size} {than} {baseline}{where} ({stats}), practically significant"
    return (f"{c.metric}: no practically significant difference between {other} and {baseline}{where} "
            f"({other} {size}, {stats}; {_why_not(c)})")


def _why_not(c: Comparison) -> str:
    if not c.ci.excludes_zero():
        return "not distinguishable from noise"
    if abs(c.rel_diff) <= c.threshold:
        return f"below the {c.threshold * 100:g} % threshold"
    if c.p_value >= c.alpha:
        return f"not statistically significant (p = {c.p_value:.3f} before correction): more repetitions would tell"
    return (f"not significant once corrected for the {c.family} comparisons of {c.metric} made (Holm): more "
            "repetitions, or fewer levels compared, would tell")


def _p(p: float) -> str:
    if math.isnan(p):
        return "= n/a"
    return "< 0.001" if p < 0.001 else f"= {p:.3f}"


# ── from the database to an analysis ─────────────────────────────────────────

_RATE = re.compile(r"(/s|ps)$", re.IGNORECASE)
_COUNTS = {"count", "packets", "bytes", "bits", "retransmits", "segments"}


def aggregation(unit: str) -> str:
    """How host values of one run combine into the run's value: ``sum`` for rates and counts, else ``mean``.

    >>> aggregation("bit/s"), aggregation("packets"), aggregation("ms")
    ('sum', 'sum', 'mean')
    """
    return "sum" if _RATE.search(unit) or unit.lower() in _COUNTS else "mean"


def run_values(rows: Iterable[MetricRow]) -> dict[tuple[str, str], dict[int, tuple[Combo, float]]]:
    """(metric, unit) → run id → (combo, value): one value per run.

    A run-level metric (no host) is used as is; otherwise the hosts' values
    are combined with :func:`aggregation`.
    """
    per_run: dict[tuple[str, str, int], dict[str | None, list[float]]] = defaultdict(lambda: defaultdict(list))
    combos: dict[int, Combo] = {}
    for row in rows:
        per_run[(row.name, row.unit, row.run_id)][row.host].append(row.value)
        combos[row.run_id] = tuple((k, hashable(v)) for k, v in row.params.items())
    result: dict[tuple[str, str], dict[int, tuple[Combo, float]]] = defaultdict(dict)
    for (name, unit, run_id), by_host in per_run.items():
        if None in by_host:
            value = float(np.mean(by_host[None]))
        else:
            host_values = [float(np.mean(v)) for v in by_host.values()]
            value = float(np.sum(host_values) if aggregation(unit) == "sum" else np.mean(host_values))
        result[(name, unit)][run_id] = (combos[run_id], value)
    return result


def hashable(value: Any) -> Any:
    """Parameter values become dictionary keys: lists and mappings are spelled as JSON."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, list | dict) else value


def level_key(value: Any) -> tuple[int, float, str]:
    """Sort key putting ``2ms`` before ``10ms`` and numbers before words.

    >>> sorted(["20ms", "100ms", "5ms"], key=level_key)
    ['5ms', '20ms', '100ms']
    """
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)", str(value))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (0, float(value), "")
    if match:
        return (0, float(match.group(1)), str(value))
    return (1, 0.0, str(value))


def analyze(store: ResultsStore, *, experiment: int | str | None = None, metrics: Sequence[str] = (),
            options: StatsOptions = StatsOptions()) -> Analysis:
    """Summaries, Holm-corrected comparisons and warnings for one experiment (default: the latest)."""
    exp = store.experiment(experiment)
    runs = store.runs(experiment=exp.id)
    values = run_values(store.metrics(experiment=exp.id))
    cross_checked = values.get(("iface_rx_ratio", "ratio"), {})
    if metrics:
        values = {k: v for k, v in values.items() if k[0] in metrics}
    parameters, constants = split_parameters(runs)
    summaries: list[Summary] = []
    comparisons: list[Comparison] = []
    cells: dict[tuple[str, Combo], list[float]] = {}
    for (name, unit), by_run in sorted(values.items()):
        groups = _groups(by_run, parameters)
        cells.update({(name, combo): vals for combo, vals in groups.items()})
        summaries += [summarize(name, unit, combo, vals, options=options) for combo, vals in groups.items()]
        comparisons += _compare_all(name, unit, groups, parameters, options, baseline=baseline_levels(exp))
    comparisons = correct_per_metric(comparisons)
    warnings = collect_warnings(exp, runs, summaries, options) + _cross_check_warnings(cross_checked)
    if metrics:
        missing = [m for m in metrics if m not in {s.metric for s in summaries}]
        warnings += [StatWarning("missing metric", f"no values of metric {m!r} in successful runs") for m in missing]
    return Analysis(exp, parameters, summaries, comparisons, warnings, options, runs, cells, constants)


def correct_per_metric(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Holm's correction within each metric's family of comparisons, in their order.

    A metric is its own family: a large, tight effect on the headline metric is not
    made "not significant" by the many CPU or RTT comparisons reported beside it.
    """
    by_metric: dict[str, list[int]] = defaultdict(list)
    for index, c in enumerate(comparisons):
        by_metric[c.metric].append(index)
    result = list(comparisons)
    for indexes in by_metric.values():
        adjusted = holm([comparisons[i].p_value for i in indexes])
        family = sum(not math.isnan(p) for p in adjusted)
        for i, p in zip(indexes, adjusted, strict=True):
            result[i] = replace(comparisons[i], p_adjusted=p, family=family)
    return result


def baseline_levels(exp: ExperimentRow) -> dict[str, Any]:
    """The experiment file's ``baseline`` (parameter → level every other level is compared against)."""
    declared = exp.spec.get("baseline") if isinstance(exp.spec, dict) else None
    return {str(k): hashable(v) for k, v in declared.items()} if isinstance(declared, dict) else {}


def headline_metric(names: Sequence[str]) -> list[str]:
    """The metric a reader looks at first: throughput (or goodput) when measured, else the first one."""
    return [m for m in HEADLINE if m in names][:1] or list(names[:1])


def split_parameters(runs: Sequence[RunRow]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parameters that vary between runs (in file order), and the constant ones with their value.

    Constants are no dimension of the analysis: they would only clutter every combination's name.
    """
    names = list(dict.fromkeys(k for run in runs for k in run.params))
    levels = {n: {hashable(run.params.get(n)) for run in runs} for n in names}
    varying = tuple(n for n in names if len(levels[n]) > 1)
    return varying, {n: runs[0].params.get(n) for n in names if n not in varying}


def _groups(by_run: Mapping[int, tuple[Combo, float]], parameters: Sequence[str]) -> dict[Combo, list[float]]:
    groups: dict[Combo, list[float]] = defaultdict(list)
    for combo, value in by_run.values():
        params = dict(combo)
        groups[tuple((p, params.get(p)) for p in parameters)].append(value)
    return dict(sorted(groups.items(), key=lambda item: [level_key(v) for _, v in item[0]]))


def _compare_all(metric: str, unit: str, groups: Mapping[Combo, list[float]], parameters: Sequence[str],
                 options: StatsOptions, *, baseline: Mapping[str, Any] | None = None) -> list[Comparison]:
    """Each level of each parameter against its baseline level (declared, else the first), the others fixed."""
    result = []
    for index, parameter in enumerate(parameters):
        by_rest: dict[Combo, dict[Any, list[float]]] = defaultdict(dict)
        for combo, vals in groups.items():
            rest = combo[:index] + combo[index + 1:]
            by_rest[rest][combo[index][1]] = vals
        for rest, levels in by_rest.items():
            ordered = sorted(levels, key=level_key)
            declared = (baseline or {}).get(parameter)
            base = next((v for v in ordered if hashable(v) == declared), ordered[0])
            for low, high in ((base, v) for v in ordered if v != base):
                key = f"{metric}|{parameter}|{low}|{high}|{rest}"
                result.append(compare_levels(levels[low], levels[high], options=options, seed_key=key, metric=metric,
                                             unit=unit, parameter=parameter, levels=(low, high), at=rest))
    return result


def collect_warnings(exp: ExperimentRow, runs: Sequence[RunRow], summaries: Sequence[Summary],
                     options: StatsOptions) -> list[StatWarning]:
    """Everything that weakens the conclusions: few repetitions, noise, failures, skew, forced checks."""
    warnings = (_forced_warnings(exp) + _failure_warnings(runs) + _fidelity_warnings(runs)
                + _skew_warnings(runs, options))
    counts = sorted({s.n for s in summaries})
    if counts and counts[0] < options.min_repetitions:
        low = [s for s in summaries if s.n < options.min_repetitions]
        warnings.append(StatWarning("few repetitions", (
            f"only {counts[0]}{'' if counts[0] == counts[-1] else f' to {counts[-1]}'} successful repetitions per "
            f"combination in {len(low)} of {len(summaries)} metric/combination cells (at least "
            f"{options.min_repetitions} recommended): confidence intervals are rough and small effects go unseen")))
    noisy: dict[str, list[Summary]] = defaultdict(list)
    for s in summaries:
        if not math.isnan(s.cv) and s.cv > options.max_cv:
            noisy[s.metric].append(s)
    for metric, cells in noisy.items():  # one line per metric: which cells, how noisy at worst
        worst = max(cells, key=lambda s: s.cv)
        where = "; ".join(combo_text(s.combo) or "all runs" for s in cells[:4]) + ("; …" if len(cells) > 4 else "")
        warnings.append(StatWarning("high variation", (
            f"{metric} varies a lot in {len(cells)} of {sum(s.metric == metric for s in summaries)} combinations "
            f"(coefficient of variation up to {worst.cv * 100:.0f} %, bound {options.max_cv * 100:g} %): {where}")))
    return warnings


def _forced_warnings(exp: ExperimentRow) -> list[StatWarning]:
    failed = [c for c in exp.checks if not c.get("ok", True)]
    if not exp.forced and not failed:
        return []
    names = ", ".join(f"{c.get('name')}{' on ' + str(c['host']) if c.get('host') else ''}: {c.get('detail', '')}"
                      for c in failed) or "see the environment checks"
    return [StatWarning("forced environment check",
                        f"environment checks failed and the experiment ran anyway (--force): {names}")]


def _failure_warnings(runs: Sequence[RunRow]) -> list[StatWarning]:
    failed = [r for r in runs if r.status != "ok"]
    if not failed:
        return []
    reasons: dict[str, int] = defaultdict(int)
    for run in failed:
        reasons[run.reason or "no reason recorded"] += 1
    listed = "; ".join(f"{reason} (×{n})" for reason, n in sorted(reasons.items(), key=lambda x: -x[1]))
    return [StatWarning("failed runs excluded",
                        f"{len(failed)} of {len(runs)} runs failed and are excluded from the statistics: {listed}")]


def _fidelity_warnings(runs: Sequence[RunRow]) -> list[StatWarning]:
    """Successful runs measured while the testbed did not keep up (see ``enosnet.bench.fidelity``)."""
    flagged = [r for r in runs if r.status == "ok" and r.fidelity]
    if not flagged:
        return []
    kinds: dict[str, int] = defaultdict(int)
    for run in flagged:
        for flag in {f.split(" (", 1)[0] for f in run.fidelity}:
            kinds[flag] += 1
    listed = "; ".join(f"{kind} (×{n})" for kind, n in sorted(kinds.items(), key=lambda x: -x[1]))
    return [StatWarning("testbed did not keep up", (
        f"{len(flagged)} of {len(runs)} runs were measured while the testbed was the bottleneck and are marked in "
        f"the tables (their numbers may be the machine's, not the network's): {listed}"))]


def _cross_check_warnings(ratios: Mapping[int, tuple[Combo, float]], tolerance: float = 0.10) -> list[StatWarning]:
    """Runs whose interface counters disagree with the tool's bytes by more than ``tolerance``."""
    off = sorted(v for _, v in ratios.values() if abs(v - 1) > tolerance)
    if not off:
        return []
    return [StatWarning("throughput cross-check", (
        f"in {len(off)} of {len(ratios)} runs the hosts' interfaces received {off[0]:.2f}x to {off[-1]:.2f}x the "
        f"bytes the clients report (more than {tolerance:.0%} apart): other traffic shared the interface, or the "
        "tool did not move what it claims; see each run's netbench.cross_check metadata"))]


def _skew_warnings(runs: Sequence[RunRow], options: StatsOptions) -> list[StatWarning]:
    skewed = [r for r in runs if r.start_skew is not None and r.start_skew > options.max_start_skew]
    if not skewed:
        return []
    worst = max(r.start_skew or 0 for r in skewed)
    return [StatWarning("large start skew", (
        f"{len(skewed)} of {len(runs)} runs started with a skew above {options.max_start_skew * 1000:g} ms "
        f"(worst {worst * 1000:.1f} ms): processes did not start together"))]

"""Is the candidate better or worse than the baseline, and by how much? Two experiments compared run for run.

Each side is an environment folder, a results database (its latest
experiment), or ``DB:EXPERIMENT``. Runs are paired by their parameters: for
every combination both sides measured, and every metric (default: the
headline one), the two medians, the relative difference of the means with its
bootstrap CI, Welch's test (Holm-corrected within each metric) and a verdict
in plain words. Which direction is worse comes from the metric: lower
throughput, higher latency, retransmits or CPU. A verdict of "worse" is a
regression, what a CI job gates on (``enosnet compare`` exits 1).

>>> direction("throughput", "bit/s"), direction("rtt_min", "ms"), direction("cpu_cgroup", "CPUs")
('higher', 'lower', 'lower')
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from enosnet.environment import Environment
from enosnet.errors import ResultsError, UsageError
from enosnet.results.render import esc, html_figure, html_page, html_table, md_esc, md_table, scale, with_unit
from enosnet.results.stats import (
    HEADLINE,
    Combo,
    Comparison,
    StatsOptions,
    combo_text,
    compare_levels,
    correct_per_metric,
    headline_metric,
    run_values,
)
from enosnet.results.store import ExperimentRow, ResultsStore

if TYPE_CHECKING:
    from enosnet.results.plots import Plot

Verdict = Literal["better", "worse", "no practically significant difference", "different"]
LOWER_IS_BETTER = ("rtt", "latency", "delay", "retrans", "loss", "cpu", "skew", "duration", "time", "jitter")
COMPARED_METADATA = ("kernel", "os", "cpu.model", "cpu.count", "limits.cpus", "limits.memory_mib",
                     "version.iperf3", "version.s2n-netbench-collector")


def direction(metric: str, unit: str) -> Literal["higher", "lower"] | None:
    """Which way is better for a metric (None: the name does not say)."""
    name = metric.lower()
    if any(word in name for word in LOWER_IS_BETTER):
        return "lower"
    if any(word in name for word in HEADLINE) or unit.endswith("/s"):
        return "higher"
    return None


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a database and one of its experiments (with ``build``: that build's runs)."""

    label: str
    db: Path
    experiment: ExperimentRow
    build: str | None = None


@dataclass(frozen=True)
class Row:
    """One metric at one parameter combination, baseline vs candidate."""

    metric: str
    unit: str
    combo: Combo
    baseline_values: tuple[float, ...]
    candidate_values: tuple[float, ...]
    comparison: Comparison
    verdict: Verdict

    @property
    def median_baseline(self) -> float:
        return float(np.median(self.baseline_values))

    @property
    def median_candidate(self) -> float:
        return float(np.median(self.candidate_values))

    @property
    def sentence(self) -> str:
        c = self.comparison
        at = combo_text(self.combo) or "all runs"
        ci = f"95 % CI {c.ci.low * 100:+.1f} to {c.ci.high * 100:+.1f} %"
        change = f"{c.rel_diff * 100:+.1f} %"
        if self.verdict in ("better", "worse"):
            return f"{self.metric} at {at}: {self.verdict} by {abs(c.rel_diff) * 100:.1f} % ({ci}, Holm p = " \
                   f"{c.p_adjusted:.3g}, n = {c.n_baseline}/{c.n_other})"
        return f"{self.metric} at {at}: {self.verdict} ({change}, {ci}, Holm p = {c.p_adjusted:.3g}, " \
               f"n = {c.n_baseline}/{c.n_other})"


@dataclass(frozen=True)
class CompareResult:
    """Every row, the combinations only one side measured, and what differs between the two testbeds."""

    baseline: Side
    candidate: Side
    rows: list[Row]
    unpaired: list[str]
    warnings: list[str]
    threshold: float

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "worse"]

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline": {"label": self.baseline.label, "experiment": self.baseline.experiment.name},
            "candidate": {"label": self.candidate.label, "experiment": self.candidate.experiment.name},
            "threshold": self.threshold,
            "rows": [{"metric": r.metric, "unit": r.unit, "combination": dict(r.combo),
                      "median_baseline": r.median_baseline, "median_candidate": r.median_candidate,
                      "relative_difference": r.comparison.rel_diff,
                      "ci": [r.comparison.ci.low, r.comparison.ci.high], "p": r.comparison.p_value,
                      "p_holm": r.comparison.p_adjusted, "n": [r.comparison.n_baseline, r.comparison.n_other],
                      "verdict": r.verdict} for r in self.rows],
            "regressions": [r.sentence for r in self.regressions],
            "unpaired": self.unpaired,
            "warnings": self.warnings,
        }

    HEAD = ("metric", "combination", "baseline median", "candidate median", "difference", "95 % CI", "Holm p",
            "verdict")

    def table_rows(self) -> list[list[str]]:
        return [[r.metric, combo_text(r.combo) or "all runs",
                 *(with_unit(m, r.unit, *scale([r.median_baseline, r.median_candidate], r.unit))
                   for m in (r.median_baseline, r.median_candidate)),
                 f"{r.comparison.rel_diff * 100:+.1f} %",
                 f"{r.comparison.ci.low * 100:+.1f} to {r.comparison.ci.high * 100:+.1f} %",
                 f"{r.comparison.p_adjusted:.3g}", r.verdict] for r in self.rows]

    def markdown(self, plots: Sequence[tuple[str, Plot]] = ()) -> str:
        """The comparison in Markdown; ``plots``: (link to the PNG, plot) to show after the table."""
        lines = [f"# {self.candidate.label} against {self.baseline.label}", ""]
        lines += [f"- **{'regression' if r.verdict == 'worse' else r.verdict}**: {md_esc(r.sentence)}"
                  for r in self.rows]
        lines += [""] + [f"- warning: {md_esc(w)}" for w in self.warnings]
        figures = [f"![{p.title}]({link})\n\n{p.caption}\n" for link, p in plots]
        return "\n".join([*lines, "", *md_table(self.HEAD, self.table_rows()), "", *figures]) + "\n"

    def html(self, plots: Sequence[Plot] = ()) -> str:
        """The comparison as a self-contained page; ``plots`` are embedded after the table."""
        title = f"{self.candidate.label} against {self.baseline.label}"
        warnings = "".join(f"<li>{esc(w)}</li>" for w in self.warnings)
        body = [f"<h1>{esc(title)}</h1>",
                html_table(self.HEAD, self.table_rows(), row_classes=["bad" if r.verdict == "worse" else ""
                                                                       for r in self.rows])]
        body += [html_figure(p.name, p.title, p.caption, p.path.read_bytes()) for p in plots]
        body += [f'<div class="warn-box"><h3>Warnings</h3><ul>{warnings}</ul></div>'] if warnings else []
        return html_page(title, "\n".join(body))

    def plots(self, out_dir: Path) -> list[Plot]:
        """One PNG per metric in ``out_dir``: both sides' runs per combination (draws with matplotlib)."""
        from enosnet.results.plots import comparison_plot

        by_metric: dict[tuple[str, str], list[Row]] = defaultdict(list)
        for row in self.rows:
            by_metric[(row.metric, row.unit)].append(row)
        labels = (self.baseline.label, self.candidate.label)
        drawn = [comparison_plot(metric, unit, [(r.combo, r.baseline_values, r.candidate_values) for r in rows],
                                 labels, out_dir) for (metric, unit), rows in by_metric.items()]
        return [p for p in drawn if p is not None]

    def write_html(self, path: Path) -> None:
        """The page with its plots embedded: one file that stands alone."""
        with tempfile.TemporaryDirectory(prefix="enosnet-compare-") as tmp:
            path.write_text(self.html(self.plots(Path(tmp))))

    def write_markdown(self, path: Path) -> None:
        """The Markdown, its plots in ``<name>-plots/`` beside it (linked relatively)."""
        folder = path.parent / f"{path.stem}-plots"
        path.write_text(self.markdown([(f"{folder.name}/{p.path.name}", p) for p in self.plots(folder)]))


def resolve(spec: str | Path, *, build: str | None = None) -> Side:
    """An environment folder, a database file, or ``DB:EXPERIMENT`` (an environment folder works there too).

    With ``build``, the side is that build's runs of the experiment (its ``builds:`` label).
    """
    text = str(spec)
    path, experiment = Path(text), None
    if not path.exists() and ":" in text:
        head, _, experiment = text.rpartition(":")
        path = Path(head)
    if path.is_dir():
        path = Environment(path).db_file
    if not path.is_file():
        raise UsageError(f"{spec}: no environment folder, results database or DB:EXPERIMENT there")
    with ResultsStore.open(path, create=False) as store:
        found = store.experiment(experiment)
        if build is None:
            return Side(str(spec), path, found)
        labels = sorted({str(r.params["build"]) for r in store.runs(experiment=found.id) if "build" in r.params})
    if build not in labels:
        raise UsageError(f"{spec}: experiment {found.name} has no build {build!r} "
                         f"(its builds: {', '.join(labels) or 'none, it has no builds: section'})")
    return Side(build, path, found, build)


def resolve_builds(spec: str | Path, builds: str | Sequence[str]) -> tuple[Side, Side]:
    """``base,mine`` (or ``("base", "mine")``): two builds of one experiment, the first the baseline."""
    labels = [b.strip() for b in (builds.split(",") if isinstance(builds, str) else builds)]
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise UsageError(f"--builds {','.join(labels)!r}: give two different build labels, e.g. --builds base,mine")
    return resolve(spec, build=labels[0]), resolve(spec, build=labels[1])


def compare(baseline: str | Path | Side, candidate: str | Path | Side | None = None, *,
            builds: str | Sequence[str] | None = None, metrics: Sequence[str] = (),
            options: StatsOptions | None = None) -> CompareResult:
    """Pair the two sides' runs by parameters and compare each metric at each combination both measured.

    With ``builds`` (two labels of its ``builds:``), the sides are those two
    builds of ``baseline``'s experiment, paired by their other parameters.
    """
    options = options or StatsOptions()
    if (candidate is None) == (builds is None):
        raise UsageError("give a candidate, or two builds of the baseline's experiment (--builds A,B)")
    if builds is not None:
        where = f"{baseline.db}:{baseline.experiment.name}" if isinstance(baseline, Side) else baseline
        sides = list(resolve_builds(where, builds))
    else:
        assert candidate is not None
        sides = [s if isinstance(s, Side) else resolve(s) for s in (baseline, candidate)]
    values = [_values(side) for side in sides]
    common = sorted(set(values[0]) & set(values[1]))
    chosen = list(metrics) or headline_metric([m for m, _ in common])
    missing = [m for m in chosen if m not in {name for name, _ in common}]
    if missing:
        raise ResultsError(f"metric {missing[0]!r} is not measured on both sides (both have: "
                           f"{', '.join(sorted({m for m, _ in common})) or 'nothing in common'})")
    comparisons: list[tuple[str, str, Combo, list[float], list[float], Comparison]] = []
    unpaired: list[str] = []
    for metric, unit in common:
        if metric not in chosen:
            continue
        base, cand = values[0][(metric, unit)], values[1][(metric, unit)]
        unpaired += [f"{metric} at {combo_text(c) or 'all runs'}: only in {sides[i].label}"
                     for i, only in enumerate((set(base) - set(cand), set(cand) - set(base)))
                     for c in sorted(only, key=str)]
        for combo in sorted(set(base) & set(cand), key=str):
            c = compare_levels(base[combo], cand[combo], options=options, seed_key=f"compare|{metric}|{combo}",
                               metric=metric, unit=unit, parameter="side", levels=("baseline", "candidate"),
                               at=combo)
            comparisons.append((metric, unit, combo, base[combo], cand[combo], c))
    corrected = correct_per_metric([c for *_, c in comparisons])
    rows = [Row(metric, unit, combo, tuple(a), tuple(b), c, _verdict(c))
            for (metric, unit, combo, a, b, _), c in zip(comparisons, corrected, strict=True)]
    return CompareResult(sides[0], sides[1], rows, unpaired, _testbed_differences(sides), options.threshold)


def _values(side: Side) -> dict[tuple[str, str], dict[Combo, list[float]]]:
    """(metric, unit) → combination (parameters, sorted) → one value per successful run."""
    with ResultsStore.open(side.db, create=False) as store:
        by_run = run_values(store.metrics(experiment=side.experiment.id))
    out: dict[tuple[str, str], dict[Combo, list[float]]] = defaultdict(lambda: defaultdict(list))
    for key, runs in by_run.items():
        for combo, value in runs.values():
            if side.build is not None:  # that build's runs, paired by their other parameters
                if dict(combo).get("build") != side.build:
                    continue
                combo = tuple(item for item in combo if item[0] != "build")
            out[key][tuple(sorted(combo))].append(value)
    return out


def _verdict(c: Comparison) -> Verdict:
    if not c.practically_significant:
        return "no practically significant difference"
    better = direction(c.metric, c.unit)
    if better is None:
        return "different"
    return "better" if (c.rel_diff > 0) == (better == "higher") else "worse"


def _testbed_differences(sides: Sequence[Side]) -> list[str]:
    """What differs between the hosts the two sides ran on (kernel, CPU, instance type, limits, tools)."""
    seen: list[dict[str, set[str]]] = []
    for side in sides:
        with ResultsStore.open(side.db, create=False) as store:
            keys: dict[str, set[str]] = defaultdict(set)
            for m in store.host_metadata(experiment=side.experiment.id):
                if m.key in COMPARED_METADATA:
                    keys[m.key].add(m.value)
            for h in store.hosts(experiment=side.experiment.id):
                keys["instance type"].add(h.instance_type or "—")
                keys["provider"].add(h.provider or "—")
        seen.append(keys)
    return [f"the two sides ran on different testbeds: {key} is {', '.join(sorted(seen[0][key]))} in "
            f"{sides[0].label} but {', '.join(sorted(seen[1][key]))} in {sides[1].label}"
            for key in sorted(set(seen[0]) | set(seen[1])) if seen[0].get(key, set()) != seen[1].get(key, set())]


def dumps(result: CompareResult) -> str:
    return json.dumps(result.to_json(), indent=1, default=str)

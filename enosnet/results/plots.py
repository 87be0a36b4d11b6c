"""Plots of one experiment, as PNG files: readable at a glance, axes labelled with units.

Every function draws from the results database (through an
:class:`~enosnet.results.stats.Analysis` and the store) into its own
``matplotlib.figure.Figure`` (no pyplot, no global state) and returns a
:class:`Plot`, or ``None`` when there is nothing to draw.

Sample series are recognised by name: ``throughput*`` and ``goodput*`` are
throughput, ``cpu*`` is CPU use.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from enosnet.results.render import scale
from enosnet.results.stats import Analysis, Combo, combo_text, hashable, level_key
from enosnet.results.store import ResultsStore, SampleRow

DPI = 110
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
          "#bcbd22"]
MAX_PANELS = 8
MEDIAN_FROM = 5


@dataclass(frozen=True)
class Plot:
    """One PNG written to ``path``; ``title`` and ``caption`` say what it shows."""

    name: str
    title: str
    caption: str
    path: Path


def _axis_label(name: str, unit: str) -> str:
    return f"{name} ({unit})" if unit else name


def _figure(width: float = 9.0, height: float = 4.8) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _save(fig: Figure, out_dir: Path, name: str, title: str, caption: str) -> Plot:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, format="png", dpi=DPI)
    return Plot(name, title, caption, path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# ── headline metric per combination ───────────────────────────────────────────


def metric_boxplot(analysis: Analysis, metric: str, out_dir: Path) -> Plot | None:
    """Box plot of one metric per parameter combination, every run drawn as a point."""
    cells = [s for s in analysis.summaries if s.metric == metric]
    values = _cell_values(analysis, metric)
    if not cells:
        return None
    unit = cells[0].unit
    factor, label = scale([v for vals in values.values() for v in vals], unit)
    fig = _figure(min(12.0, max(6.0, 1.3 * len(cells) + 2)), 4.8 if len(cells) <= 10 else 6.0)
    ax = fig.add_subplot()
    data = [np.asarray(values[s.combo]) / factor for s in cells]
    ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "black", "linewidth": 2})
    jitter = np.random.default_rng(0)
    for i, vals in enumerate(data, start=1):
        ax.scatter(i + jitter.uniform(-0.12, 0.12, len(vals)), vals, s=22, alpha=0.75, color=COLORS[0], zorder=3)
    many = len(cells) > 10  # then one rotated line per label, or they would overlap
    ax.set_xticks(range(1, len(cells) + 1), [(", " if many else "\n").join(f"{k}={v}" for k, v in s.combo)
                                             or "all runs" for s in cells], rotation=60 if many else 0,
                  ha="right" if many else "center", fontsize=8 if many else 10)
    ax.set_ylabel(_axis_label(metric, label))
    ax.set_xlabel("parameter combination")
    ax.set_title(f"{metric} per combination (each point is one run)")
    ax.grid(axis="y", alpha=0.3)
    caption = (f"{metric} of every successful run, grouped by parameter combination; boxes show the quartiles, "
               "the black line the median.")
    return _save(fig, out_dir, f"metric-{_safe(metric)}", f"{metric} per combination", caption)


def comparison_plot(metric: str, unit: str, cells: Sequence[tuple[Combo, Sequence[float], Sequence[float]]],
                    labels: tuple[str, str], out_dir: Path) -> Plot | None:
    """Baseline and candidate side by side per combination: a box each, every run a point."""
    if not cells:
        return None
    factor, label = scale([v for _, a, b in cells for v in (*a, *b)], unit)
    fig = _figure(min(12.0, max(6.0, 1.6 * len(cells) + 2)), 4.8)
    ax = fig.add_subplot()
    jitter = np.random.default_rng(0)
    for side, offset in ((0, -0.2), (1, 0.2)):
        data = [np.asarray(cell[1 + side], dtype=float) / factor for cell in cells]
        where = [i + 1 + offset for i in range(len(cells))]
        ax.boxplot(data, positions=where, widths=0.32, showfliers=False,
                   medianprops={"color": "black", "linewidth": 2})
        for x, values in zip(where, data, strict=True):
            ax.scatter(x + jitter.uniform(-0.06, 0.06, len(values)), values, s=20, alpha=0.8, color=COLORS[side],
                       zorder=3, label=labels[side] if x == where[0] else None)
    ax.set_xticks(range(1, len(cells) + 1), ["\n".join(f"{k}={v}" for k, v in combo) or "all runs"
                                             for combo, _, _ in cells])
    ax.set_ylabel(_axis_label(metric, label))
    ax.set_title(f"{metric}: {labels[1]} against {labels[0]} (each point is one run)")
    ax.legend(loc="best")
    ax.grid(axis="y", alpha=0.3)
    caption = (f"{metric} of every successful run of both sides, per combination they share; boxes show the "
               "quartiles, the black line the median.")
    return _save(fig, out_dir, f"compare-{_safe(metric)}", f"{metric}, {labels[1]} against {labels[0]}", caption)


def _cell_values(analysis: Analysis, metric: str) -> dict[Combo, list[float]]:
    """Per-run values of a metric by combination, recomputed from the summaries' source (kept on the analysis)."""
    return {combo: list(values) for (name, combo), values in analysis.values.items() if name == metric}


# ── time series ───────────────────────────────────────────────────────────────


def is_throughput(series: str, unit: str) -> bool:
    """Throughput or goodput as the tool measured it (interface counters such as ``net_rx`` are not)."""
    return series.lower().startswith(("throughput", "goodput"))


def is_cpu(series: str, unit: str) -> bool:
    return series.lower().startswith("cpu")


def timeseries(samples: Sequence[SampleRow], parameters: Sequence[str], out_dir: Path, *, name: str,
               what: str) -> Plot | None:
    """One panel per combination, one colour per host, one line per run of that host."""
    if not samples:
        return None
    by_combo = _by_combo(samples, parameters)
    shown = dict(list(by_combo.items())[:MAX_PANELS])
    factor, label = scale([s.value for s in samples], samples[0].unit)
    hosts = sorted({s.host or "run" for s in samples})
    colour = {h: COLORS[i % len(COLORS)] for i, h in enumerate(hosts)}
    cols = min(2, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = _figure(9.0, 2.6 * rows + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
    for ax, (combo, points) in zip(axes.flat, shown.items(), strict=False):
        _panel(ax, points, factor, colour)
        ax.set_title(combo_text(combo) or "all runs", fontsize=10)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    fig.supxlabel("time since the run started (s)")
    fig.supylabel(_axis_label(what, label))
    fig.legend(handles=[_line(colour[h], h) for h in hosts], loc="outside upper right", ncols=min(6, len(hosts)),
               fontsize=8, title="host")
    title = f"{what} over time per host"
    series = samples[0].series
    named = "" if series == what else f" (series {series})"
    more = f" Only the first {len(shown)} of {len(by_combo)} combinations are drawn." if len(by_combo) > len(
        shown) else ""
    caption = (f"{what}{named} sampled during each run; one line per host and run (a bold line: the host's median "
               f"over runs, when there are more than {MEDIAN_FROM}).{more}")
    return _save(fig, out_dir, name, title, caption)


def _panel(ax: Any, samples: Sequence[SampleRow], factor: float, colour: dict[str, str]) -> None:
    """One line per host and run; with many runs, also each host's median over time."""
    lines: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        lines[s.host or "run"][s.run_id].append((s.t, s.value / factor))
    count = sum(len(runs) for runs in lines.values())
    for host, runs in lines.items():  # one collection per host: thousands of runs stay fast to draw
        ax.add_collection(LineCollection(list(runs.values()), colors=colour[host], linewidths=1.2,
                                         alpha=max(0.08, min(0.6, 12 / count))))
        if len(runs) > MEDIAN_FROM:  # many runs blur into a band
            t, median = _median_line(runs.values())
            ax.plot(t, median, color=colour[host], linewidth=2.2)
    ax.autoscale_view()
    ax.grid(alpha=0.3)


def _median_line(runs: Iterable[list[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """Median over runs at each sampling time (times rounded to 1 ms so clocks' jitter does not split them)."""
    at: dict[float, list[float]] = defaultdict(list)
    for points in runs:
        for t, value in points:
            at[round(t, 3)].append(value)
    times = sorted(at)
    return times, [float(np.median(at[t])) for t in times]


def _line(color: str, label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([0], [0], color=color, label=label, linewidth=2)


def _by_combo(samples: Sequence[SampleRow], parameters: Sequence[str]) -> dict[Combo, list[SampleRow]]:
    groups: dict[Combo, list[SampleRow]] = defaultdict(list)
    combos: dict[int, Combo] = {}
    for s in samples:
        if s.run_id not in combos:
            combos[s.run_id] = tuple((p, hashable(s.params.get(p))) for p in parameters)
        groups[combos[s.run_id]].append(s)
    return dict(sorted(groups.items(), key=lambda item: [level_key(v) for _, v in item[0]]))


def cdf(samples: Sequence[SampleRow], parameters: Sequence[str], out_dir: Path, *, name: str,
        what: str) -> Plot | None:
    """Empirical CDF of the per-interval values, one line per combination."""
    if not samples:
        return None
    factor, label = scale([s.value for s in samples], samples[0].unit)
    fig = _figure(8.0, 4.6)
    ax = fig.add_subplot()
    for i, (combo, rows) in enumerate(_by_combo(samples, parameters).items()):
        values = np.sort(np.asarray([r.value / factor for r in rows]))
        ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", linewidth=1.8,
                color=COLORS[i % len(COLORS)], label=combo_text(combo) or "all runs")
    ax.set_xlabel(_axis_label(f"{what} per interval", label))
    ax.set_ylabel("fraction of intervals")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"CDF of per-interval {what}")
    caption = (f"Distribution of the per-interval {what} samples of every host and run: a line further right "
               "is faster; a steep line is steady.")
    return _save(fig, out_dir, name, f"CDF of per-interval {what}", caption)


# ── start skew ────────────────────────────────────────────────────────────────


def start_skew(analysis: Analysis, out_dir: Path) -> Plot | None:
    """Start skew of every run in execution order; failed runs marked."""
    runs = [r for r in analysis.runs if r.start_skew is not None]
    if not runs:
        return None
    fig = _figure(8.0, 4.0)
    ax = fig.add_subplot()
    for status, marker, color in (("ok", "o", COLORS[0]), ("failed", "x", COLORS[1])):
        chosen = [r for r in runs if r.status == status]
        if chosen:
            ax.scatter([r.position for r in chosen], [(r.start_skew or 0) * 1000 for r in chosen], marker=marker,
                       color=color, label=f"{status} ({len(chosen)})", s=30, zorder=3)
    bound = analysis.options.max_start_skew * 1000
    worst = max((r.start_skew or 0) * 1000 for r in runs)
    if worst > bound / 3:  # draw the bound only where it does not flatten the data
        ax.axhline(bound, color=COLORS[3], linestyle="--", linewidth=1, label=f"warning bound ({bound:g} ms)")
    ax.set_xlabel("run (position in execution order)")
    ax.set_ylabel("start skew (ms)")
    ax.set_ylim(0, max(worst, bound if worst > bound / 3 else 0) * 1.15 or 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Start skew per run (latest minus earliest process start; warning above {bound:g} ms)")
    return _save(fig, out_dir, "start-skew", "Start skew per run",
                 "How far apart the processes of each run actually started; lower is better.")


def all_plots(store: ResultsStore, analysis: Analysis, out_dir: Path, *, headline: Sequence[str] = ()) -> list[Plot]:
    """Every plot the report shows, in order: the headline metrics, throughput over time and its CDF,
    start skew, CPU use over time.

    ``headline`` names the metrics drawn as box plots (default: the first metric of the analysis).
    """
    chosen = list(headline) or analysis.metrics[:1]
    plots = [metric_boxplot(analysis, m, out_dir) for m in chosen]
    series = store.series_names(experiment=analysis.experiment.id)
    for kind, test, what in (("throughput", is_throughput, "throughput"), ("cpu", is_cpu, "CPU use")):
        for index, (name, unit) in enumerate(s for s in series if test(*s)):
            rows = [r for r in store.samples(experiment=analysis.experiment.id, series=name) if r.unit == unit]
            suffix = "" if index == 0 else f"-{_safe(name)}"
            plots.append(timeseries(rows, analysis.parameters, out_dir, name=f"{kind}-time{suffix}",
                                    what=what if index == 0 else f"{what} ({name})"))
            if kind == "throughput":
                plots.append(cdf(rows, analysis.parameters, out_dir, name=f"{kind}-cdf{suffix}", what=what))
        if kind == "throughput":
            plots.append(start_skew(analysis, out_dir))
    return [p for p in plots if p is not None]

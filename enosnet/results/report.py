"""The report of one experiment, computed from the results database only.

``report.html`` is self-contained (styles inline, plots embedded as base64
``data:`` URIs, no script, no CDN: it works offline and as a mail attachment);
``report.md`` says the same for terminals and pull requests, linking the PNGs
in ``plots/``. Rebuilding the report from the same database gives the same
numbers (the bootstrap is seeded).

>>> from enosnet.results.synthetic import fill_synthetic
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:
...     with ResultsStore.open(Path(tmp) / "results.db") as store:
...         _ = fill_synthetic(store, repetitions=3)
...     report = build_report(Path(tmp) / "results.db", Path(tmp) / "report")
...     print(report.html.name, report.markdown.name, report.plots[0].name)
report.html report.md metric-throughput
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from enosnet.environment import Environment, write_atomic
from enosnet.errors import ResultsError
from enosnet.results.netbench_report import NetbenchReport, netbench_report
from enosnet.results.plots import Plot, all_plots
from enosnet.results.render import esc, html_dl, html_figure, html_page, html_table, md_esc, md_table, num, scale
from enosnet.results.stats import (
    Analysis,
    Comparison,
    StatsOptions,
    analyze,
    baseline_levels,
    ci_text,
    combo_text,
    hashable,
    headline_metric,
    level_key,
)
from enosnet.results.store import HostRow, MetadataRow, ResultsStore

COLLAPSE = 6


@dataclass(frozen=True)
class Report:
    """The files of one report and the analysis they show."""

    html: Path
    markdown: Path
    plots: list[Plot]
    analysis: Analysis
    netbench: NetbenchReport | None = None


def build_report(source: Environment | str | Path, out_dir: str | Path | None = None, *,
                 experiment: int | str | None = None, metrics: Sequence[str] = (), threshold: float = 0.05,
                 options: StatsOptions | None = None) -> Report:
    """Analyse one experiment (default: the latest) and write ``report.html``, ``report.md`` and ``plots/``.

    ``source`` is an environment or the path of a results database;
    ``out_dir`` defaults to ``report/`` beside the database.
    """
    db = source.db_file if isinstance(source, Environment) else Path(source)
    out = Path(out_dir) if out_dir is not None else db.parent / "report"
    opts = options or StatsOptions(threshold=threshold)
    with ResultsStore.open(db, create=False) as store:
        analysis = analyze(store, experiment=experiment, metrics=metrics, options=opts)
        if not analysis.runs:
            raise ResultsError(f"{db}: experiment {analysis.experiment.name!r} has no runs yet")
        headline = [m for m in metrics if m in analysis.metrics] or headline_metric(analysis.metrics)
        plots = all_plots(store, analysis, out / "plots", headline=headline)
        hosts = store.hosts(experiment=analysis.experiment.id)
        metadata = store.host_metadata(experiment=analysis.experiment.id, per_run=True)
        others = [e.name for e in store.experiments() if e.id != analysis.experiment.id]
    netbench = netbench_report(db.parent / "runs", analysis.experiment.name, analysis.runs, out)
    page = Page(analysis, plots, hosts, metadata, others, metrics, netbench)
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "report.html", out / "report.md"
    write_atomic(html_path, page.html())
    write_atomic(md_path, page.markdown())
    return Report(html_path, md_path, plots, analysis, netbench)


def _skew_text(skews: Sequence[float]) -> str:
    """``median 1.2 ms, max 3.4 ms over 12 runs``: how well the processes of a run started together."""
    if not skews:
        return "not recorded"
    ordered = sorted(skews)
    return (f"median {ordered[len(ordered) // 2] * 1000:.2f} ms, max {ordered[-1] * 1000:.2f} ms "
            f"over {len(ordered)} runs")


def _time(t: float | None) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pval(p: float) -> str:
    return "—" if math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"


class Page:
    """The content of the report, rendered as HTML or Markdown."""

    def __init__(self, analysis: Analysis, plots: list[Plot], hosts: list[HostRow], metadata: list[MetadataRow],
                 other_experiments: list[str], chosen: Sequence[str], netbench: NetbenchReport | None = None) -> None:
        self.a = analysis
        self.netbench = netbench
        self.plots = plots
        self.hosts = hosts
        self.metadata = metadata
        self.others = other_experiments
        self.order = self._metric_order(chosen)

    def _metric_order(self, chosen: Sequence[str]) -> list[str]:
        names = self.a.metrics
        first = [m for m in chosen if m in names] or headline_metric(names)
        return first + [m for m in names if m not in first]

    # ── pieces shared by both renderings ─────────────────────────────────────

    def overview(self) -> list[tuple[str, str]]:
        e, runs = self.a.experiment, self.a.runs
        failed = sum(r.status != "ok" for r in runs)
        levels = {p: [str(v) for v in sorted({hashable(r.params.get(p)) for r in runs}, key=level_key)]
                  for p in self.a.parameters}
        reps = sorted({s.n for s in self.a.summaries}) or [0]
        return [
            ("experiment", f"{e.name} (id {e.id})"),
            ("ran", f"{_time(e.started)} → {_time(e.ended)}"),
            ("runs", f"{len(runs)} ({len(runs) - failed} ok, {failed} failed), order {e.order or '—'}, "
                     f"seed {e.seed if e.seed is not None else '—'}"),
            ("parameters", "; ".join(f"{p}: {', '.join(v)}" for p, v in levels.items()) or "—"),
            ("fixed in every run", ", ".join(f"{k}={v}" for k, v in self.a.constants.items()) or "—"),
            ("repetitions per combination", f"{reps[0]}" if reps[0] == reps[-1] else f"{reps[0]}–{reps[-1]}"),
            ("start skew", _skew_text([r.start_skew for r in runs if r.start_skew is not None])),
            ("experiment file", f"{e.file_path or ''} sha256 {e.file_hash or '—'}".strip()),
            ("enosnet", e.enosnet_version or "—"),
            ("method", (f"95 % bootstrap CIs ({self.a.options.resamples} resamples, seed {self.a.options.seed}); "
                        f"Welch t-test, Holm-corrected within each metric ({self._families()}); each level "
                        f"compared with its parameter's baseline level ({self._baselines()}); practically "
                        f"significant = CI excludes 0, |difference| > {self.a.options.threshold * 100:g} % "
                        f"and Holm p < {self.a.options.alpha:g}")),
        ] + ([("other experiments in this database", ", ".join(self.others))] if self.others else [])

    def _families(self) -> str:
        sizes = {c.metric: c.family for c in self.a.comparisons}
        return ", ".join(f"{m}: {sizes[m]}" for m in self.order if m in sizes) or "no comparisons"

    def _baselines(self) -> str:
        bases = {c.parameter: c.baseline for c in self.a.comparisons}
        declared = baseline_levels(self.a.experiment)
        return ", ".join(f"{p}={v}{'' if p in declared else ' (first)'}" for p, v in bases.items()) or "—"

    @property
    def headline(self) -> str | None:
        return self.order[0] if self.order else None

    def answer_rows(self) -> tuple[str, list[list[str]]]:
        """The headline metric per combination: median [95 % CI], n, failed runs, testbed flags."""
        metric = self.headline
        cells = [s for s in self.a.summaries if s.metric == metric]
        factor, unit = scale([s.median for s in cells], cells[0].unit if cells else "")
        rows = []
        for s in cells:
            matching = [r for r in self.a.runs if all(hashable(r.params.get(k)) == hashable(v) for k, v in s.combo)]
            ci = f"[{num(s.median_ci.low / factor)}, {num(s.median_ci.high / factor)}]" if s.n > 1 else "[—]"
            rows.append([combo_text(s.combo) or "all runs", num(s.median / factor), ci, str(s.n),
                         str(sum(r.status != "ok" for r in matching)), self._flagged(s.combo)])
        return unit, rows

    ANSWER_HEAD = ("combination", "median", "95 % CI", "n", "failed runs", "testbed flags")

    def headline_plot(self) -> Plot | None:
        return next((p for p in self.plots if p.path.stem == f"metric-{self.headline}"), None)

    def findings(self) -> list[tuple[str, list[Comparison]]]:
        """Comparisons by metric (headline first), practically significant ones first."""
        by_metric: dict[str, list[Comparison]] = defaultdict(list)
        for c in self.a.comparisons:
            by_metric[c.metric].append(c)
        return [(m, sorted(by_metric[m], key=lambda c: not c.practically_significant)) for m in self.order
                if m in by_metric]

    def summary_rows(self, metric: str) -> tuple[str, list[list[str]]]:
        cells = [s for s in self.a.summaries if s.metric == metric]
        factor, unit = scale([s.mean for s in cells] + [s.max for s in cells], cells[0].unit if cells else "")

        def v(x: float) -> str:
            return num(x / factor)

        def ci(x: float, low: float, high: float, n: int) -> str:
            return f"{v(x)} [{v(low)}, {v(high)}]" if n > 1 else f"{v(x)} [—]"

        rows = [[combo_text(s.combo) or "all runs", str(s.n), ci(s.mean, s.mean_ci.low, s.mean_ci.high, s.n),
                 ci(s.median, s.median_ci.low, s.median_ci.high, s.n), v(s.std),
                 "—" if math.isnan(s.cv) else f"{s.cv * 100:.1f} %", v(s.min), v(s.p5), v(s.p95), v(s.max),
                 self._flagged(s.combo)]
                for s in cells]
        return unit, rows

    def _flagged(self, combo: Sequence[tuple[str, object]]) -> str:
        """How many of a combination's successful runs were measured on a testbed that did not keep up."""
        runs = [r for r in self.a.runs if r.status == "ok"
                and all(hashable(r.params.get(k)) == hashable(v) for k, v in combo)]
        flagged = sum(bool(r.fidelity) for r in runs)
        return f"⚠ {flagged} of {len(runs)}" if flagged else "—"

    SUMMARY_HEAD = ("combination", "n", "mean [95 % CI]", "median [95 % CI]", "std", "CV", "min", "p5", "p95", "max",
                    "testbed flags")
    COMPARE_HEAD = ("metric", "parameter", "levels", "at", "difference", "95 % CI", "p", "Holm p", "verdict")

    def comparison_rows(self) -> list[list[str]]:
        return [[c.metric, c.parameter, f"{c.other} vs {c.baseline}", combo_text(c.at) or "—",
                 "—" if math.isnan(c.rel_diff) else f"{c.rel_diff * 100:+.1f} %", ci_text(c.ci), _pval(c.p_value),
                 _pval(c.p_adjusted), "practically significant" if c.practically_significant else "no"]
                for m in self.order for c in self.a.comparisons if c.metric == m]

    def check_rows(self) -> list[list[str]]:
        return [["ok" if c.get("ok") else ("FAILED (forced)" if c.get("forced") else "FAILED"), str(c.get("name")),
                 str(c.get("host") or "all"), str(c.get("detail", "")), _time(c.get("at"))]
                for c in self.a.experiment.checks]

    def host_rows(self) -> list[list[str]]:
        return [[h.name, h.address or "—", h.role or "—", h.provider or "—", h.instance_type or "—", h.az or "—"]
                for h in self.hosts]

    def metadata_table(self) -> tuple[list[str], list[list[str]]]:
        """One row per key: the value when every host agrees, else each value with its hosts.

        Facts collected per run appear once per host, as their value when it
        never changed, else as the distinct values with their run counts.
        """
        hosts = sorted({m.host for m in self.metadata})
        values: dict[str, dict[str, str]] = defaultdict(dict)
        for m in self.metadata:
            if m.run_id is None:
                values[m.key][m.host] = m.value
        per_run: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
        for m in self.metadata:
            if m.run_id is not None:
                per_run[m.key][m.host][m.value] += 1
        for key, by_host in per_run.items():
            once = values.get(key, {})
            if all(list(seen) == [once.get(host)] for host, seen in by_host.items()):
                continue  # the same in every run as when first collected: nothing new to say
            values[f"{key} (per run)"] = {host: next(iter(seen)) if len(seen) == 1 else "; ".join(
                f"{v} ({n} runs)" for v, n in sorted(seen.items(), key=lambda x: -x[1]))
                for host, seen in by_host.items()}
        return ["key", "value (hosts, when they differ)"], [[k, _by_value(v, hosts)] for k, v in sorted(values.items())]

    def run_rows(self) -> list[list[str]]:
        return [[str(r.position), combo_text(tuple(r.params.items())), str(r.repetition), r.status, r.reason or "",
                 "; ".join(r.fidelity) or "—", "—" if r.start_skew is None else f"{r.start_skew * 1000:.2f}",
                 _time(r.started)]
                for r in self.a.runs]

    RUN_HEAD = ("#", "parameters", "rep.", "status", "reason", "testbed flags", "start skew (ms)", "started")

    # ── HTML ─────────────────────────────────────────────────────────────────

    def html(self) -> str:
        e = self.a.experiment
        main = self.headline_plot()
        body = [f"<h1>{esc(e.name)}: results</h1>"]
        if self.headline is not None:
            unit, rows = self.answer_rows()
            body += [f"<h2>{esc(self.headline)} per combination <small>({esc(unit or 'no unit')})</small></h2>",
                     html_table(self.ANSWER_HEAD, rows)]
            body += [_html_plot(main)] if main is not None else []
            body += ["<h2>Conclusions</h2>", self._html_findings(only=self.headline)]
        body += [self._html_warnings(), "<h2>Experiment</h2>", html_dl(self.overview())]
        others = [m for m in self.order if m != self.headline]
        if others:
            body.append("<h2>Other metrics</h2>")
        for metric in others:
            unit, rows = self.summary_rows(metric)
            found = dict(self.findings()).get(metric, [])
            yes = sum(c.practically_significant for c in found)
            body += [f"<details><summary><b>{esc(metric)}</b> ({esc(unit or 'no unit')}): {yes} of {len(found)} "
                     "comparisons practically significant</summary>", self._html_findings(only=metric),
                     html_table(self.SUMMARY_HEAD, rows), "</details>"]
        body.append("<h2>Plots</h2>")
        body += [_html_plot(p) for p in self.plots if p is not main] or ["<p>No other plots.</p>"]
        body += self._html_netbench()
        if self.headline is not None:
            unit, rows = self.summary_rows(self.headline)
            body += [f"<h2>{esc(self.headline)}: descriptive statistics <small>({esc(unit or 'no unit')})</small></h2>",
                     html_table(self.SUMMARY_HEAD, rows)]
        body += [f"<details><summary>All {len(self.a.comparisons)} comparisons</summary>",
                 html_table(self.COMPARE_HEAD, self.comparison_rows()), "</details>",
                 "<h2>Environment checks</h2>",
                 html_table(["result", "check", "host", "detail", "at"], self.check_rows())
                 if self.a.experiment.checks else "<p>No environment checks were recorded.</p>",
                 "<h2>Hosts</h2>", html_table(["host", "address", "role", "provider", "instance type", "AZ"],
                                               self.host_rows()),
                 "<h3>Host metadata</h3>", html_table(*self.metadata_table()),
                 f"<details><summary>All {len(self.a.runs)} runs</summary>",
                 html_table(self.RUN_HEAD, self.run_rows()), "</details>",
                 f"<footer>Generated by enosnet from {esc(e.name)} on {_time(datetime.now(UTC).timestamp())}; "
                 "rebuild with <code>enosnet report</code>.</footer>"]
        return html_page(f"{e.name} — enosnet report", "\n".join(body))

    def _html_findings(self, *, only: str | None = None) -> str:
        parts = []
        for metric, comparisons in self.findings():
            if only is not None and metric != only:
                continue
            yes = [c for c in comparisons if c.practically_significant]
            no = [c for c in comparisons if not c.practically_significant]
            items = "".join(f'<li class="yes">{esc(c.sentence)}</li>' for c in yes)
            rest = "".join(f'<li class="no">{esc(c.sentence)}</li>' for c in no)
            if len(no) > COLLAPSE:  # a long list of non-findings would bury the findings
                rest = (f'<li class="no"><details><summary>{len(no)} comparisons without a practically '
                        f"significant difference</summary><ul>{rest}</ul></details></li>")
            parts.append(f"<ul class=findings>{items}{rest}</ul>" if only else
                         f"<h3>{esc(metric)}</h3><ul class=findings>{items}{rest}</ul>")
        return "".join(parts) or "<p>Nothing to compare: no parameter has two levels with successful runs.</p>"

    def _html_netbench(self) -> list[str]:
        nb = self.netbench
        if nb is None:
            return []
        made = (f'<a href="netbench/index.html">s2n-netbench\'s own report</a> ({esc(nb.note)}; '
                "its charts load their library from the internet)") if nb.index else esc(nb.note)
        return ["<h2>s2n-netbench report</h2>",
                f"<p>{made}, over {nb.files} files of the successful runs in <code>netbench/input/</code>.</p>"]

    def _html_warnings(self) -> str:
        if not self.a.warnings:
            return '<p class="ok-box">No warnings: the data can carry these conclusions.</p>'
        items = "".join(f"<li><b>{esc(w.kind)}</b>: {esc(w.message)}</li>" for w in self.a.warnings)
        return f'<div class="warn-box"><h3>Warnings</h3><ul>{items}</ul></div>'

    # ── Markdown ─────────────────────────────────────────────────────────────

    def markdown(self) -> str:
        e = self.a.experiment
        lines = [f"# {e.name}: results", ""]
        main = self.headline_plot()
        if self.headline is not None:
            unit, rows = self.answer_rows()
            lines += [f"## {self.headline} per combination ({unit or 'no unit'})", "",
                      *md_table(self.ANSWER_HEAD, rows), ""]
            lines += [f"![{main.title}](plots/{main.path.name})", "", main.caption, ""] if main is not None else []
            lines += ["## Conclusions", "", *self._md_findings(self.headline)]
        lines += ["## Warnings", ""] + ([f"- **{w.kind}**: {md_esc(w.message)}" for w in self.a.warnings]
                                         or ["- none"]) + [""]
        lines += ["## Experiment", ""] + [f"- **{k}**: {md_esc(v)}" for k, v in self.overview()] + [""]
        others = [m for m in self.order if m != self.headline]
        if others:
            lines += ["## Other metrics", ""]
        for metric in others:
            unit, rows = self.summary_rows(metric)
            lines += [f"### {metric} ({unit or 'no unit'})", "", *self._md_findings(metric),
                      *md_table(self.SUMMARY_HEAD, rows), ""]
        lines += ["## Plots", ""] + [f"![{p.title}](plots/{p.path.name})\n\n{p.caption}\n" for p in self.plots
                                     if p is not main]
        if self.netbench is not None:
            made = "[s2n-netbench's own report](netbench/index.html)" if self.netbench.index else self.netbench.note
            lines += ["## s2n-netbench report", "", f"{made}, over {self.netbench.files} files of the successful "
                      "runs in `netbench/input/`.", ""]
        if self.headline is not None:
            unit, rows = self.summary_rows(self.headline)
            lines += [f"## {self.headline}: descriptive statistics ({unit or 'no unit'})", "",
                      *md_table(self.SUMMARY_HEAD, rows), ""]
        lines += ["## All comparisons", "", *md_table(self.COMPARE_HEAD, self.comparison_rows()), ""]
        lines += ["## Environment checks", "", *md_table(["result", "check", "host", "detail", "at"],
                                                          self.check_rows()), ""]
        lines += ["## Hosts", "", *md_table(["host", "address", "role", "provider", "instance type", "AZ"],
                                             self.host_rows()), "", "### Host metadata", "",
                  *md_table(*self.metadata_table()), ""]
        return "\n".join(lines)

    def _md_findings(self, metric: str) -> list[str]:
        found = dict(self.findings()).get(metric)
        if not found:
            return ["Nothing to compare: no parameter has two levels with successful runs.", ""]
        return [f"- {'**' if c.practically_significant else ''}{md_esc(c.sentence)}"
                f"{'**' if c.practically_significant else ''}" for c in found] + [""]


def _by_value(by_host: dict[str, str], hosts: Sequence[str]) -> str:
    """``6.1`` when all hosts agree, else ``6.1 (client-0, client-1); 6.5 (server-0)``."""
    groups: dict[str, list[str]] = defaultdict(list)
    for host in hosts:
        groups[by_host.get(host, "—")].append(host)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{value} ({', '.join(names)})" for value, names in groups.items())


def _html_plot(plot: Plot) -> str:
    return html_figure(plot.name, plot.title, plot.caption, plot.path.read_bytes())

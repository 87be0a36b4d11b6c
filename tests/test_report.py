"""The report, built from a database filled through the store API, rendered in headless Chromium.

A report from a small real sweep on local hosts belongs with the bench layer's
end-to-end test (it owns the sweep); here the database is synthetic, written
through the same public write API the bench layer uses.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from enosnet.errors import ResultsError
from enosnet.results.report import build_report
from enosnet.results.store import ExperimentRecord, ResultsStore
from enosnet.results.synthetic import fill_synthetic

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
ENOSNET = [sys.executable, "-c", "from enosnet.cli import main; main()"]


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "results.db"
    with ResultsStore.open(path) as store:
        fill_synthetic(store, repetitions=5, failed_runs=1, seed=2)
    return path


@pytest.fixture(scope="module")
def report_dir(database: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    build_report(database, out)
    return out


def test_report_files_and_findings(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    for text in (html, md):
        assert re.search(r"throughput: reno is \d+ % lower than cubic at delay=20ms \(95 % CI", text)
        assert "no practically significant difference between reno and cubic at delay=0ms" in text
        assert "failed runs excluded" in text and "only 4 to 5 successful repetitions" in text
        assert "netem applied" in text and "6.1.0-28-amd64" in text and "198.18.0.2" in text
        assert "qdisc (per run)" in text and "netem delay 20ms (" in text and "kernel (per run)" not in text
    assert sorted(p.name for p in (report_dir / "plots").iterdir()) == sorted(
        ["metric-throughput.png", "throughput-time.png", "throughput-cdf.png", "start-skew.png", "cpu-time.png"])
    # the answer first: the headline metric's table and plot, its conclusions, then the other metrics
    assert md.index("## throughput per combination") < md.index("![") < md.index("## Conclusions") \
        < md.index("## Other metrics") < md.index("### retransmits")
    assert md.index("](plots/metric-throughput.png)") == md.index("![") + md[md.index("!["):].index("](")
    first_table = html[html.index("<table"):html.index("</table>")]
    assert "median" in first_table and "failed runs" in first_table and "cc=reno, delay=20ms" in first_table
    assert html.index("<table") < html.index('src="data:image/png') < html.index("<h2>Conclusions</h2>")
    assert "<details><summary><b>retransmits</b>" in html  # the others collapsed
    assert "Holm-corrected within each metric (throughput: 4, " in md and "cc=cubic (first)" in md


def test_html_is_self_contained(report_dir: Path) -> None:
    html = (report_dir / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 5  # the headline plot once, at the top
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html


def test_markdown_links_the_plots(report_dir: Path) -> None:
    md = (report_dir / "report.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (report_dir / link).is_file()


def test_rebuilding_gives_the_same_numbers(database: Path, report_dir: Path, tmp_path: Path) -> None:
    again = build_report(database, tmp_path)
    assert again.markdown.read_text() == (report_dir / "report.md").read_text()


def test_metric_selection_and_threshold(database: Path, tmp_path: Path) -> None:
    report = build_report(database, tmp_path, metrics=["rtt"], threshold=0.5)
    assert report.analysis.metrics == ["rtt"]
    assert report.plots[0].name == "metric-rtt"
    assert all(c.threshold == 0.5 for c in report.analysis.comparisons)
    assert "throughput" not in report.markdown.read_text().split("## Plots")[0]


def test_the_latest_experiment_unless_one_is_named(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path / "results.db") as store:
        fill_synthetic(store, repetitions=2, start_time=1_000_000.0)
        store.begin_experiment(ExperimentRecord(name="later", started=2_000_000.0))
    with pytest.raises(ResultsError, match="'later' has no runs"):
        build_report(tmp_path / "results.db", tmp_path / "a")
    named = build_report(tmp_path / "results.db", tmp_path / "b", experiment="incast")
    assert named.analysis.experiment.name == "incast"
    assert "other experiments in this database" in named.markdown.read_text()


def test_experiment_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    with ResultsStore.open(tmp_path / "results.db") as store:
        store.begin_experiment(ExperimentRecord(name="empty"))
    with pytest.raises(ResultsError, match="no runs"):
        build_report(tmp_path / "results.db", tmp_path / "out")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM, "chromium is not installed (make deps)"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, check=True)


PROBE = """<script>
window.addEventListener('load', () => {
  const sizes = [...document.images].map(
    i => [i.alt, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width, i.getBoundingClientRect().top]);
  const table = document.querySelector('table');
  const first = {head: table.rows[0].innerText, top: table.getBoundingClientRect().top,
                 heading: table.previousElementSibling.innerText};
  const out = document.createElement('pre'); out.id = 'probe';
  out.textContent = JSON.stringify({sizes: sizes, first: first});
  document.body.appendChild(out);
});
</script>"""


def test_chromium_renders_every_plot(report_dir: Path, tmp_path: Path) -> None:
    html = (report_dir / "report.html").read_text()
    probed = html.replace("style-src 'unsafe-inline'", "style-src 'unsafe-inline'; script-src 'unsafe-inline'")
    probed = probed.replace("</body>", PROBE + "</body>")
    page = tmp_path / "probe.html"
    page.write_text(probed)
    dom = _chromium(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path / "profile").stdout
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    probe = json.loads(match.group(1).replace("&quot;", '"'))
    sizes, first = probe["sizes"], probe["first"]
    assert len(sizes) == 5
    for alt, width, height, shown, _ in sizes:
        assert width > 400 and height > 300 and shown > 300, (alt, width, height, shown)
    # what a reader sees first: the headline metric's table, then its plot
    assert first["heading"].startswith("throughput per combination") and "median" in first["head"], first
    assert "throughput" in sizes[0][0] and first["top"] < sizes[0][4] == min(s[4] for s in sizes), (first, sizes)


def test_chromium_screenshot_is_not_blank(report_dir: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    _chromium(["--window-size=1200,2400", f"--screenshot={shot}", (report_dir / "report.html").as_uri()],
              tmp_path / "profile")
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1200, 2400)
        colours = image.convert("L").getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not an empty page


def test_cli_report_prints_the_html_path_last(database: Path, tmp_path: Path) -> None:
    done = subprocess.run([*ENOSNET, "report", "--db", str(database), "-o", str(tmp_path), "--threshold", "5%"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "report.html")
    assert "practically significant" in done.stdout and "failed runs excluded" in done.stderr


def test_cli_rejects_an_ambiguous_threshold(database: Path, tmp_path: Path) -> None:
    done = subprocess.run([*ENOSNET, "report", "--db", str(database), "--threshold", "5"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "5%" in done.stderr


def test_cli_export_csv(database: Path, tmp_path: Path) -> None:
    done = subprocess.run([*ENOSNET, "export", "--db", str(database), "-o", str(tmp_path), "--csv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "results.csv").read_text().startswith("run_id,cc,delay,repetition,status,host,role,metric")

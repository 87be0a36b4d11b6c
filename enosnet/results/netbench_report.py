"""s2n-netbench's own report of an experiment: every successful run's files in one tree, then ``report-tree``.

Each netbench run keeps its measurements as
``runs/<run>/netbench/<scenario>/<driver>/{server,client}-<i>.json``. This
gathers the successful runs of one experiment into
``<report>/netbench/input/<scenario>/<driver>/<side>-<i>-run<position>.json``
(repetitions kept apart, every driver beside the others) and, when the
``s2n-netbench`` program (crate ``s2n-netbench-cli``) is found on ``PATH`` or in
this machine's build cache, runs ``s2n-netbench report-tree`` over it into
``<report>/netbench/``. Its ``index.html`` loads its chart library from the
internet when opened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from enosnet.errors import ResultsError
from enosnet.netbench_build import PINNED, BuildError, crate_folder
from enosnet.results.store import RunRow


@dataclass(frozen=True)
class NetbenchReport:
    """What was gathered, and netbench's own report if it could be made."""

    input_dir: Path
    files: int
    index: Path | None
    note: str


def netbench_report(runs_dir: Path, experiment: str, runs: Sequence[RunRow], out: Path) -> NetbenchReport | None:
    """Gather the experiment's netbench files under ``out/netbench`` and run report-tree (None: no netbench run)."""
    folder = out / "netbench"
    input_dir = folder / "input"
    shutil.rmtree(folder, ignore_errors=True)
    files = 0
    for run in runs:
        if run.status != "ok":
            continue
        tree = runs_dir / f"{experiment}-{run.position:04d}-{run.key[:8]}" / "netbench"
        for path in sorted(tree.glob("*/*/*.json")):
            target = input_dir / path.parent.parent.name / path.parent.name / f"{path.stem}-run{run.position}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            files += 1
    if not files:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    program = report_program()
    if program is None:
        return NetbenchReport(input_dir, files, None, "s2n-netbench (crate s2n-netbench-cli) not found: "
                                                      "its report-tree was not made")
    done = subprocess.run([program, "report-tree", str(input_dir), str(folder)], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise ResultsError(f"s2n-netbench report-tree {input_dir} failed: {done.stderr.strip()[-500:]}")
    return NetbenchReport(input_dir, files, folder / "index.html", f"{program} report-tree")


def report_program() -> str | None:
    """``s2n-netbench`` on PATH, else the one this machine built (``make netbench``)."""
    found = shutil.which("s2n-netbench")
    if found:
        return found
    try:
        built = crate_folder("s2n-netbench-cli", PINNED["s2n-netbench-cli"]) / "bin" / "s2n-netbench"
    except BuildError:  # no Rust toolchain: nothing can have been built here
        return None
    return str(built) if os.access(built, os.X_OK) else None

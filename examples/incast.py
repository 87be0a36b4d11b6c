"""The incast experiment through the Python API, as an experiment script would run it.

Deploys the local hosts of incast-env.yaml (tools and agents installed; released at the end,
also on errors), runs incast.yaml, prints one line per run, then builds the report.
Run as root: `sudo .venv/bin/python examples/incast.py`.
"""

from __future__ import annotations

from pathlib import Path

import enosnet

HERE = Path(__file__).resolve().parent


def show(event: object) -> None:
    if isinstance(event, enosnet.RunFinished):
        value = f"{event.headline[1] / 1e9:.2f} Gbit/s" if event.headline else event.reason
        print(f"{event.index + 1}/{event.total} {event.label}: {event.status} {value}")


def main() -> None:
    with enosnet.deploy(HERE / "incast-env.yaml") as testbed:
        result = testbed.bench(HERE / "incast.yaml", on_event=show)
        report = testbed.report()
    print(f"{result.done} runs ok, {result.failed} failed; results in {result.database}")
    print(f"report: {report.html}")


if __name__ == "__main__":
    main()

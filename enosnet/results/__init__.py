"""Results: the SQLite store, statistics, plots, the HTML report and backups.

- :mod:`enosnet.results.store`: the database (write API for the bench layer, queries, export)
- :mod:`enosnet.results.stats`: summaries, comparisons (bootstrap CI, Welch, Holm), warnings
- :mod:`enosnet.results.plots`: PNG plots (matplotlib)
- :mod:`enosnet.results.report`: ``build_report`` → ``report.html`` and ``report.md``
- :mod:`enosnet.results.compare`: two experiments, or two builds of one, compared run for run
- :mod:`enosnet.results.backup`: ``make_backup``, ``verify_backup``, S3 upload

The store's API is re-exported here, as it is what other layers write through.

>>> from enosnet.results import ResultsStore
>>> ResultsStore.open(":memory:").schema_version
3
"""

from enosnet.results.store import (
    CheckResult,
    ExperimentRecord,
    HostMeta,
    HostRecord,
    Metric,
    ProcessRecord,
    Recorded,
    ResultsStore,
    RunRecord,
    Sample,
    export,
    run_key,
    to_frame,
)

__all__ = [
    "CheckResult",
    "ExperimentRecord",
    "HostMeta",
    "HostRecord",
    "Metric",
    "ProcessRecord",
    "Recorded",
    "ResultsStore",
    "RunRecord",
    "Sample",
    "export",
    "run_key",
    "to_frame",
]

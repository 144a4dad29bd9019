"""ferryd's metrics in the Prometheus text exposition format (docs/operations.md, "Metrics"),
served at ``GET /v1/metrics`` on the socket and, when ``[daemon] metrics_listen`` is set, on a
TCP listener of its own.

Cheap on the hot path: the counters are bumped where ferryd already reports (a checkpoint's
progress, a failure, a requeue, a notification's outcome, a store commit: none of them per
byte or per chunk), and everything that is a state (jobs by state and priority, running
transfers, open API connections) is computed only when someone scrapes, by a collector that
reads the job table. The registry is this daemon's own, never the process-global one, so
tests and embedders get a clean one per daemon.

prometheus-client is used for the exposition format (escaping, histogram buckets, the
OpenMetrics variant a scraper may ask for) rather than printing the text by hand.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from ..model.job import Job
from ..model.types import JobState, JobType, Priority

# Commit latency: a lone write on a fast disk is ~1 ms, a loaded group on a slow one 100 ms+.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


_STATE_AND_PRIORITY = attrgetter("state", "priority")


def _direction(job: Job) -> str:
    return "download" if job.type is JobType.DOWNLOAD else "upload"


class Metrics:
    """The counters the services bump and the collector that reads the rest at scrape time.
    ``jobs`` returns every job of the table; ``running`` the number of transfers running;
    ``connections`` the API connections open (each set once the daemon has built them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.bytes = Counter(
            "ferry_transferred_bytes",
            "Bytes made durable in temporary files (fsynced checkpoints), by job priority and "
            "direction",
            ["priority", "direction"],
            registry=self.registry,
        )
        self.errors = Counter(
            "ferry_job_errors",
            "Transfer errors recorded on jobs, by BITS code and whether a retry follows "
            "(transient) or the job is in ERROR (final)",
            ["code", "kind"],
            registry=self.registry,
        )
        self.retries = Counter(
            "ferry_retries",
            "Jobs requeued from TRANSIENT_ERROR when their retry time came",
            registry=self.registry,
        )
        self.notifications = Counter(
            "ferry_notification_runs",
            "Runs of notify_cmdline programs, by event and outcome (delivered, failed: "
            "retried later, or given up)",
            ["event", "outcome"],
            registry=self.registry,
        )
        self.commits = Histogram(
            "ferry_store_commit_seconds",
            "Time of one store commit (a group of writes and its fsync), on the store thread",
            buckets=COMMIT_BUCKETS,
            registry=self.registry,
        )
        # Beside the commits' count (the histogram's _count): writes / commits is the mean
        # group size, how many callers one fsync served.
        self.store_writes = Counter(
            "ferry_store_writes",
            "Writes committed to the store (each caller's one change); several share one "
            "commit when they queue up during a commit (group commit)",
            registry=self.registry,
        )
        self.jobs: Callable[[], Iterable[Job]] = tuple
        self.running: Callable[[], int] = lambda: 0
        self.connections: Callable[[], int] = lambda: 0
        self.registry.register(_StateCollector(self))
        # Label sets that exist from the start, so a dashboard sees zeros rather than gaps;
        # their children are kept, so a checkpoint's bump skips the label lookup.
        self._bytes = {
            (p, d): self.bytes.labels(p.value, d)
            for p in Priority
            for d in ("download", "upload")
        }

    # ---- report points (all cheap: a dict lookup and a locked add) -----------------------

    def transferred(self, job: Job, count: int) -> None:
        if count > 0:
            self._bytes[(job.priority, _direction(job))].inc(count)

    def failed(self, code: str, transient: bool) -> None:
        self.errors.labels(code, "transient" if transient else "final").inc()

    def retried(self) -> None:
        self.retries.inc()

    def notified(self, event: str, outcome: str) -> None:
        self.notifications.labels(event, outcome).inc()

    def committed(self, seconds: float, writes: int = 1) -> None:
        """Called on the store's thread (prometheus-client's metrics are thread-safe).
        ``writes``: how many callers' writes that commit carried (group commit)."""
        self.commits.observe(seconds)
        self.store_writes.inc(writes)

    # ---- exposition ----------------------------------------------------------------------

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition for a scraper's Accept header: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _StateCollector:
    """Gauges computed at scrape time from the job table and the daemon's parts."""

    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        # One pass over the table, counted in C (Counter over an attrgetter map).
        tally: Tally[tuple[JobState, Priority]] = Tally(
            map(_STATE_AND_PRIORITY, self._m.jobs())
        )
        jobs = GaugeMetricFamily(
            "ferry_jobs", "Jobs by state and priority", labels=["state", "priority"]
        )
        for state in JobState:
            for p in Priority:
                jobs.add_metric([state.value, p.value], tally.get((state, p), 0))
        yield jobs
        yield GaugeMetricFamily(
            "ferry_transfers_running",
            "Jobs whose transfer is running now (each holds its server connections)",
            value=self._m.running(),
        )
        yield GaugeMetricFamily(
            "ferry_api_connections",
            "Client connections open to the API (socket and metrics listener)",
            value=self._m.connections(),
        )
        yield GaugeMetricFamily(
            "ferry_tasks",
            "asyncio tasks alive in ferryd's event loop (back to its idle level when no "
            "job runs and no client is connected; a count that keeps growing is a leak)",
            value=_task_count(),
        )


def _task_count() -> int:
    """Tasks of the running loop: scrapes are answered on ferryd's loop (the socket's API and
    the metrics listener share it). 0 when called outside a loop (a registry read by hand)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0

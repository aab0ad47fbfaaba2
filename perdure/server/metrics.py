"""Prometheus metrics, derived from the database at scrape time.

Workers may run in other processes than the server that is scraped, so nothing here relies on
hooks inside the engine. Instead each scrape (:meth:`Metrics.refresh`):

* reads **gauges** from the store: instances by workflow and status, how many are queued
  (the instance queue depth) and the age of the oldest queued one, how overdue the earliest
  timer is, and the depth of every durable queue (:mod:`perdure.triggers.queues`);
* **tails the instance history** (rows after the last one it saw) and, for every instance
  that started or finished since, updates counters and histograms: step attempts, attempt
  failures, step successes and failures, attempt and step wall time by workflow and step
  name, instance duration and queue delay (queued → started), and timer lateness (how much
  later than due a sleep or a retry actually resumed).

Counters count what happened since this process started, as Prometheus expects
(``rate()`` handles restarts). Step names are labels; past ``max_step_names`` distinct names
per workflow the rest are counted under ``"_other"`` so dynamic names cannot explode the
series count.

The same tail feeds :class:`Throughput`, the per-minute counts the dashboard draws.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ModuleNotFoundError as exc:  # one line naming the extra, not a traceback
    from .._optional import missing_extra

    raise missing_extra("server", "the Prometheus metrics (perdure.server.metrics)", exc.name) from None

from ..flow import limits_from_dict
from ..records import DO, QUEUED, SLEEP, STATUSES, StepRecord
from ..retries import retry_delay
from ..store import Store
from ..triggers.queues import depth_view

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("perdure.metrics")

_FINISHED = {"WORKFLOW_SUCCESS": "complete", "WORKFLOW_FAILURE": "errored", "WORKFLOW_TERMINATED": "terminated"}
_TAIL_TYPES = ("WORKFLOW_QUEUED", "WORKFLOW_START", *_FINISHED)
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOOKBACK = 1000  # history rows re-read per scrape: rows may commit out of seq order


class Throughput:
    """Per-minute counts of instances created and finished, per workflow, for the last hour."""

    def __init__(self, minutes: int = 60) -> None:
        self.minutes = minutes
        self._buckets: dict[str, dict[int, dict[str, int]]] = defaultdict(dict)

    def add(self, workflow: str, kind: str, ts: float) -> None:
        minute = int(ts // 60)
        if minute <= int(time.time() // 60) - self.minutes:
            return
        bucket = self._buckets[workflow].setdefault(minute, {})
        bucket[kind] = bucket.get(kind, 0) + 1

    def recent(self, workflow: str, now: float | None = None) -> list[dict[str, int]]:
        """One dict per minute, oldest first: ``{"created", "complete", "errored", "terminated"}``."""
        current = int((now if now is not None else time.time()) // 60)
        buckets = self._buckets.get(workflow, {})
        for minute in [m for m in buckets if m <= current - self.minutes]:
            del buckets[minute]
        empty = {"created": 0, "complete": 0, "errored": 0, "terminated": 0}
        return [{**empty, **buckets.get(m, {})} for m in range(current - self.minutes + 1, current + 1)]

    def totals(self, workflow: str, now: float | None = None) -> dict[str, int]:
        totals = {"created": 0, "complete": 0, "errored": 0, "terminated": 0}
        for bucket in self.recent(workflow, now):
            for key, value in bucket.items():
                totals[key] += value
        return totals


class _Gauges(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = self.metrics.snapshot
        instances = GaugeMetricFamily(
            "perdure_instances", "Instances by workflow and status, read at scrape time", labels=["workflow", "status"]
        )
        for (workflow, status), n in sorted(snapshot.get("instances", {}).items()):
            instances.add_metric([workflow, status], n)
        yield instances
        depth = GaugeMetricFamily(
            "perdure_instance_queue_depth", "Queued instances waiting for a worker", labels=["workflow"]
        )
        age = GaugeMetricFamily(
            "perdure_oldest_queued_instance_age_seconds",
            "Age of the oldest queued instance (0 when none is queued)",
            labels=["workflow"],
        )
        for workflow, (queued, oldest) in sorted(snapshot.get("queued", {}).items()):
            depth.add_metric([workflow], queued)
            age.add_metric([workflow], oldest)
        yield depth
        yield age
        reasons = GaugeMetricFamily(
            "perdure_queued_instances_by_reason",
            "Queued instances of workflows with flow control, by why they wait: concurrency, concurrency_key,"
            " rate_limit, or ready",
            labels=["workflow", "reason"],
        )
        for (workflow, reason), n in sorted(snapshot.get("reasons", {}).items()):
            reasons.add_metric([workflow, reason], n)
        yield reasons
        overdue = GaugeMetricFamily(
            "perdure_timer_overdue_seconds",
            "How long ago the earliest pending timer (sleep, retry delay, event timeout) fell due; 0 if none is due",
        )
        overdue.add_metric([], snapshot.get("overdue", 0.0))
        yield overdue
        queue = GaugeMetricFamily(
            "perdure_queue_messages", "Messages in durable queues by state", labels=["queue", "state"]
        )
        queue_age = GaugeMetricFamily(
            "perdure_queue_oldest_message_age_seconds", "Age of the oldest unacknowledged message", labels=["queue"]
        )
        for name, stats in sorted(snapshot.get("queues", {}).items()):
            for state in ("ready", "delayed", "in_flight", "dead"):
                queue.add_metric([name, state], stats[state])
            queue_age.add_metric([name], stats["oldest_age"] or 0.0)
        yield queue
        yield queue_age


class Metrics:
    """The metrics of one engine's database, in their own registry (so several apps can live in
    one process). ``await metrics.render()`` refreshes and returns the exposition text."""

    def __init__(self, engine: Engine, *, max_step_names: int = 200) -> None:
        self.engine = engine
        self.max_step_names = max_step_names
        self.registry = CollectorRegistry()
        self.throughput = Throughput()
        self.snapshot: dict[str, Any] = {}
        self.tail_error: str | None = None
        self._lock = asyncio.Lock()
        self._watermark: int | None = None
        self._seen: dict[tuple[int, float], None] = {}
        self._step_names: dict[str, set[str]] = defaultdict(set)
        r = self.registry
        wf_step = ["workflow", "step"]
        self.attempts = Counter("perdure_step_attempts", "Step attempts that ended", wf_step, registry=r)
        self.attempt_failures = Counter(
            "perdure_step_attempt_failures", "Step attempts that failed", wf_step, registry=r
        )
        self.successes = Counter("perdure_step_successes", "Steps that completed", wf_step, registry=r)
        self.failures = Counter(
            "perdure_step_failures", "Steps that failed for good (retries exhausted or NonRetryableError)", wf_step,
            registry=r,
        )  # fmt: skip
        self.attempt_seconds = Histogram(
            "perdure_step_attempt_duration_seconds", "Wall time of one step attempt", wf_step,
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "perdure_step_duration_seconds",
            "Wall time of a step from its first attempt to its result, retries included",
            wf_step, buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.created = Counter(
            "perdure_instances_created", "Instances queued (created or restarted)", ["workflow"], registry=r
        )
        self.finished = Counter(
            "perdure_instances_finished", "Instances that ended", ["workflow", "status"], registry=r
        )
        self.instance_seconds = Histogram(
            "perdure_instance_duration_seconds", "Wall time of an instance from its start to its end",
            ["workflow", "status"], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_delay = Histogram(
            "perdure_instance_queue_delay_seconds", "Time from queued to first started", ["workflow"],
            buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.lateness = Histogram(
            "perdure_timer_lateness_seconds", "How much later than due a sleep or retry delay resumed",
            ["workflow", "kind"], buckets=_LATENESS_BUCKETS, registry=r,
        )  # fmt: skip
        self.registry.register(_Gauges(self))

    async def render(self) -> tuple[bytes, str]:
        """Refresh, then return ``(body, content type)`` for a ``/metrics`` response."""
        await self.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    async def refresh(self) -> None:
        async with self._lock:
            try:
                await self._tail()
            except Exception as exc:  # metrics must never break the scrape
                if self.tail_error is None:
                    log.warning("perdure metrics: cannot read the instance history: %s", exc)
                self.tail_error = str(exc)
            self.snapshot = await self._gauges()

    # gauges
    async def _gauges(self) -> dict[str, Any]:
        store = await self.engine.ensure_store()
        now = self.engine.clock.now()
        counts = await store.count_by_status(None)
        instances = {(wf, st): n for wf, by_status in counts.items() for st, n in by_status.items() if st in STATUSES}
        queued: dict[str, tuple[int, float]] = {}
        for workflow in sorted(set(counts) | set(self.engine.workflows)):
            n = counts.get(workflow, {}).get(QUEUED, 0)
            oldest = 0.0
            if n:
                oldest = await self._oldest_queued_age(workflow, now)
            queued[workflow] = (n, oldest)
        reasons = await self._queued_reasons(store, queued, now)
        next_wake = await store.next_wake_at()
        overdue = 0.0 if next_wake is None else max(0.0, now - next_wake)
        queues: dict[str, Any] = {}
        try:
            queues = {name: depth_view(d, now) for name, d in (await store.queue_depths(now)).items()}
        except Exception as exc:  # metrics must never break the scrape
            log.debug("perdure metrics: queue depths unavailable: %s", exc)
        return {"instances": instances, "queued": queued, "overdue": overdue, "queues": queues, "reasons": reasons}

    async def _queued_reasons(
        self, store: Store, queued: dict[str, tuple[int, float]], now: float
    ) -> dict[tuple[str, str], int]:
        """Why the queued instances of workflows with flow control wait (perdure.flow)."""
        flows = {w.name: limits_from_dict(w.flow) for w in await store.known_workflows()}
        for name, registration in self.engine.workflows.items():
            flows[name] = registration.flow
        reasons: dict[tuple[str, str], int] = {}
        for workflow, limits in flows.items():
            if limits is None:
                continue
            waiting = queued.get(workflow, (0, 0.0))[0]
            found = await store.queued_reasons(workflow, limits, now) if waiting else {}
            for reason in ("concurrency", "concurrency_key", "rate_limit", "ready"):
                reasons[(workflow, reason)] = found.get(reason, 0)
        return reasons

    async def _oldest_queued_age(self, workflow: str, now: float) -> float:
        store = await self.engine.ensure_store()
        oldest = await store.oldest_queued_at(workflow)
        return 0.0 if oldest is None else max(0.0, now - oldest)

    # the history tail
    async def _tail(self) -> None:
        store = await self.engine.ensure_store()
        if self._watermark is None:
            top = await store.last_history_seq()
            self._watermark = top
            # Backfill the dashboard's throughput (not the counters) with the last hour.
            await self._read(store, max(0, top - 20_000), count=False)
            return
        await self._read(store, max(0, self._watermark - LOOKBACK), count=True)

    async def _read(self, store: Store, after: int, *, count: bool) -> None:
        horizon = time.time() - 3600
        while True:
            rows = await store.history_since(after, _TAIL_TYPES, limit=2000)
            for row in rows:
                key = (row.seq, row.ts)
                if key in self._seen:
                    continue
                self._seen[key] = None
                if row.ts >= horizon:
                    kind = "created" if row.type == "WORKFLOW_QUEUED" else _FINISHED.get(row.type)
                    if kind is not None:
                        self.throughput.add(row.workflow, kind, row.ts)
                if count:
                    await self._observe(store, row.type, row.ts, row.pk, row.workflow, row.created_at)
                self._watermark = max(self._watermark or 0, row.seq)
            if len(rows) < 2000:
                break
            after = rows[-1].seq
        floor = (self._watermark or 0) - LOOKBACK
        for key in [k for k in self._seen if k[0] < floor]:
            del self._seen[key]

    async def _observe(self, store: Store, type_: str, ts: float, pk: int, workflow: str, created_at: float) -> None:
        if type_ == "WORKFLOW_QUEUED":
            self.created.labels(workflow).inc()
        elif type_ == "WORKFLOW_START":
            self.queue_delay.labels(workflow).observe(max(0.0, ts - created_at))
        elif type_ in _FINISHED:
            status = _FINISHED[type_]
            self.finished.labels(workflow, status).inc()
            record = await store.get_by_pk(pk)
            if record is not None and record.started_at is not None:
                self.instance_seconds.labels(workflow, status).observe(max(0.0, ts - record.started_at))
            for step in await store.load_steps(pk):
                self._observe_step(workflow, step)

    def _step_label(self, workflow: str, name: str) -> str:
        names = self._step_names[workflow]
        if name in names:
            return name
        if len(names) >= self.max_step_names:
            return "_other"
        names.add(name)
        return name

    def _observe_step(self, workflow: str, step: StepRecord) -> None:
        if step.kind == SLEEP and step.status == "complete" and step.ended_at is not None and step.config:
            duration = step.config.get("duration")
            due = step.config.get("until") if duration is None else step.started_at + float(duration)
            if isinstance(due, (int, float)):
                self.lateness.labels(workflow, "sleep").observe(max(0.0, step.ended_at - float(due)))
            return
        if step.kind != DO:
            return
        name = self._step_label(workflow, step.name)
        failures = 0
        previous_end: float | None = None
        for attempt in step.attempts:
            start, end = attempt.get("start"), attempt.get("end")
            if previous_end is not None and start is not None and step.config and failures:
                try:
                    due = previous_end + retry_delay(step.config, failures)
                    self.lateness.labels(workflow, "retry").observe(max(0.0, float(start) - due))
                except (KeyError, TypeError, ValueError):
                    pass
            if start is None or end is None:
                continue
            self.attempts.labels(workflow, name).inc()
            self.attempt_seconds.labels(workflow, name).observe(max(0.0, float(end) - float(start)))
            if attempt.get("error"):
                self.attempt_failures.labels(workflow, name).inc()
                if not attempt.get("lost"):
                    failures += 1
            previous_end = float(end)
        if step.status == "complete":
            self.successes.labels(workflow, name).inc()
            if step.ended_at is not None:
                self.step_seconds.labels(workflow, name).observe(max(0.0, step.ended_at - step.started_at))
        elif step.status == "failed":
            self.failures.labels(workflow, name).inc()

"""Perdure's vocabulary: the words every layer shares, and the records the store hands back.

Nothing here does anything. The engine, the store, the triggers, the server and the CLI all
import their words from this module (the store implements them, it does not define them), so
reading it tells what an instance, a step and a queue message are:

* An **instance** (:class:`InstanceRecord`) of a workflow has an :data:`InstanceStatus`,
  exactly the strings of Cloudflare's ``InstanceStatus`` (SPEC §2). ``epoch`` is its fencing
  token: every claim, terminate and restart bumps it, and a write that names an older epoch is
  refused (:class:`~perdure.errors.Fenced`).
* A **step** (:class:`StepRecord`) is keyed by ``(kind, name, count)``: its :data:`StepKind`,
  its name, and which call of that name it is (the same name twice in a loop is two steps,
  matched by order). Its :data:`StepStatus` says where it is in its life.
* A run ends early for one of the :data:`StopKind` reasons.
* A **queue message** (:class:`QueueMessage`) sits in a durable queue until a consumer
  acknowledges it, or is dead-lettered (:class:`DeadLetter`) after too many deliveries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

# -- instance statuses (exactly as SPEC §2 lists them) ----------------------------------------------
InstanceStatus = Literal[
    "queued", "running", "paused", "errored", "terminated", "complete", "waiting", "waitingForPause", "unknown"
]
QUEUED: Final = "queued"
RUNNING: Final = "running"
PAUSED: Final = "paused"
ERRORED: Final = "errored"
TERMINATED: Final = "terminated"
COMPLETE: Final = "complete"
WAITING: Final = "waiting"
WAITING_FOR_PAUSE: Final = "waitingForPause"
#: The error rollback handlers receive after ``terminate(rollback=True)`` (Cloudflare's).
TERMINATED_ERROR: Final = {"name": "Terminated", "message": "Instance terminated during rollback"}
UNKNOWN: Final = "unknown"
STATUSES: Final[tuple[InstanceStatus, ...]] = (
    QUEUED,
    RUNNING,
    PAUSED,
    ERRORED,
    TERMINATED,
    COMPLETE,
    WAITING,
    WAITING_FOR_PAUSE,
    UNKNOWN,
)
TERMINAL: Final[frozenset[InstanceStatus]] = frozenset({COMPLETE, ERRORED, TERMINATED})

# -- steps -------------------------------------------------------------------------------------------
StepKind = Literal["do", "sleep", "waitForEvent", "rollback", "patch"]
DO: Final = "do"
SLEEP: Final = "sleep"
WAIT: Final = "waitForEvent"
ROLLBACK: Final = "rollback"  # the rollback (saga) handler of the ``do`` step of the same name and count
PATCH: Final = "patch"  # the memoised answer of ``step.patched(id)`` (in-code versioning)
STEP_KINDS: Final[tuple[StepKind, ...]] = (DO, SLEEP, WAIT, ROLLBACK, PATCH)

# running: an attempt is under way; retrying: an attempt failed and the next waits for its
# delay (``wake_at``); waiting: a sleep or an event wait not over yet; complete / failed: final.
StepStatus = Literal["running", "retrying", "waiting", "complete", "failed"]
STEP_RUNNING: Final = "running"
STEP_RETRYING: Final = "retrying"
STEP_WAITING: Final = "waiting"
STEP_COMPLETE: Final = "complete"
STEP_FAILED: Final = "failed"

# Why a run ended before ``run()`` returned: suspend (it waits for a deadline or an event),
# fenced (another worker or a control call took the instance), lost (the database failed under
# it), fatal (the instance errors).
StopKind = Literal["suspend", "fenced", "lost", "fatal", "replayed"]


# -- records -------------------------------------------------------------------------------------------
@dataclass(slots=True)
class InstanceRecord:
    """An instance as stored."""

    pk: int
    workflow: str
    id: str
    status: InstanceStatus
    params: Any
    trigger: str
    created_at: float
    epoch: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    output: Any = None
    error: dict[str, str] | None = None
    wake_at: float | None = None
    schedule: dict[str, Any] | None = None
    owner: str | None = None
    #: Set by ``terminate(rollback=True)``: the error its rollback handlers run with before the
    #: instance ends ``terminated`` (the next worker to claim it runs them).
    terminating: dict[str, str] | None = None
    concurrency_key: str | None = None  # flow control (perdure.flow)
    priority: int = 0
    #: The stored steps, when a claim read them with the instance (one query for the whole
    #: batch instead of one per instance at its replay); None: not read, ask the store.
    steps: list[StepRecord] | None = None


@dataclass(slots=True)
class StepRecord:
    """One step as stored, with every attempt (``{"start", "end", "error"?, "lost"?}``)."""

    kind: StepKind
    name: str
    count: int
    status: StepStatus
    started_at: float
    config: dict[str, Any] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    result: Any = None
    error: dict[str, Any] | None = None
    ended_at: float | None = None
    wake_at: float | None = None
    seq: int = 0
    result_json: str | None = None  # the encoded result, when the engine already has it

    @property
    def key(self) -> tuple[StepKind, str, int]:
        return (self.kind, self.name, self.count)


@dataclass(slots=True)
class NewInstance:
    """An instance to create: its id, its params already encoded as JSON, and who asked."""

    id: str
    params_json: str
    trigger: str = "binding"
    schedule: dict[str, Any] | None = None
    success_retention: float | None = None  # seconds a finished instance is kept (None: forever)
    error_retention: float | None = None
    concurrency_key: str | None = None  # flow control (perdure.flow): the key it counts under
    priority: int = 0  # lower is claimed first among queued instances of its workflow


@dataclass(frozen=True, slots=True)
class LocalStart:
    """Create an instance already claimed by ``owner`` (``running``, epoch 1, leased until
    ``lease_until``): the engine of the process that creates it has a free slot and runs it at
    once, without a claim round (see ``Engine.local_start``)."""

    owner: str
    lease_until: float
    leased_at: float = 0.0  # time.monotonic() before the write that sets the lease (perdure.leases)


@dataclass(frozen=True, slots=True)
class FlowLimits:
    """A workflow's flow control as the claim applies it (:mod:`perdure.flow` validates it).

    ``concurrency``: at most this many of its instances running at once (``running`` or
    ``waitingForPause``; waiting ones do not count); ``per_key``: at most this many running
    with one ``concurrency_key``; ``start_limit`` first runs per ``start_period`` seconds."""

    concurrency: int | None = None
    per_key: int | None = None
    start_limit: int | None = None
    start_period: float | None = None


@dataclass(slots=True)
class LimitedClaim:
    """What a limited workflow's claim took, and when to look again: ``retry_at`` is when a
    start slot of its rate limit frees (None: not held back by it); ``held`` counts the
    runnable instances left because of a limit."""

    claimed: list[InstanceRecord]
    retry_at: float | None = None
    held: int = 0


@dataclass(slots=True)
class WorkflowRecord:
    """A workflow as the last engine that started with it registered it: what operators' tools
    in other processes (``perdure --db``, a server without the application) show and may trigger.

    ``registered_at`` is the first registration on this database, ``updated_at`` the latest."""

    name: str
    class_name: str
    schedules: list[str]
    step_limit: int
    registered_at: float = 0.0
    updated_at: float = 0.0
    #: Its flow control as registered (:meth:`perdure.flow.FlowControl.as_dict`), or None.
    flow: dict[str, Any] | None = None


@dataclass(slots=True)
class Page:
    """One page of instances, newest first; ``next_cursor`` continues after it."""

    items: list[InstanceRecord]
    next_cursor: str | None


@dataclass(slots=True)
class HistoryRow:
    """One instance-level event of the history (``WORKFLOW_QUEUED``, ``_START``, ``_SUCCESS``,
    ``_FAILURE``, ``_TERMINATED``), with the instance it belongs to: what metrics tail."""

    seq: int
    type: str
    ts: float
    pk: int
    workflow: str
    created_at: float
    instance_id: str = ""


# -- queues ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class QueueMessage:
    """A message delivered by a durable queue: ``attempts`` counts deliveries, this one
    included; ``lease`` is what the consumer must show to acknowledge or retry it."""

    id: int
    body: Any
    attempts: int
    created_at: float
    lease: str


@dataclass(slots=True)
class QueueDepth:
    """How much a queue holds: ``ready`` to deliver now, ``delayed`` (sent with a delay or
    waiting out a retry backoff), ``in_flight`` (leased to a consumer), ``dead`` letters, and
    when its oldest message not yet acknowledged was sent (None when it is empty)."""

    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0
    oldest_created_at: float | None = None


@dataclass(slots=True)
class DeadLetter:
    """A message a queue gave up on: why (``error``), after how many deliveries, and when."""

    id: int
    message_id: int
    body: Any
    attempts: int
    error: str | None
    failed_at: float

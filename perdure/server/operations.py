"""Read models for operators: what the REST API, the CLI and the dashboard show.

Two layers live here:

* **Pure views** turn store records into JSON-ready dicts: :func:`instance_summary` (one row
  of a list), :func:`step_view` (one step with its attempts), :func:`event_history` (the
  Cloudflare event log, derived from the steps and the instance-level history) and
  :func:`instance_detail` (all of it for one instance). Times are ISO 8601 strings in UTC
  (``2024-10-22T12:00:00.123Z``); durations are milliseconds.
* :class:`Operations` runs the operator's verbs (list, describe, trigger, pause, ...) against
  one :class:`~perdure.Engine`. The API server and ``perdure --db`` both use it, so an
  answer has the same shape whether it came over HTTP or straight from the database.

Workflows an operator can see are those registered on this engine, those some engine
registered on the database when it started (a worker elsewhere), and those with instances in
the store (another application may share the database).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import validators
from ..binding import Instance, WorkflowBinding
from ..errors import InstanceNotFoundError, PerdureError, ReadOnlyStoreError, ValidationError, WorkflowNotFoundError
from ..flow import limits_from_dict
from ..records import DO, QUEUED, ROLLBACK, SLEEP, STATUSES, WAIT, InstanceRecord, StepRecord, WorkflowRecord
from ..retries import REDACTED, is_sensitive
from ..serde import public_error
from .formatting import duration_ms, iso

if TYPE_CHECKING:
    from ..engine import Engine

#: ``type`` of a step in views, as Cloudflare's step log names it.
STEP_TYPES = {DO: "step", SLEEP: "sleep", WAIT: "waitForEvent", ROLLBACK: "rollback"}
#: Actions accepted by :meth:`Operations.control` (``PATCH .../status``).
ACTIONS = ("pause", "resume", "terminate", "restart")
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 50


class StepNotFoundError(PerdureError, LookupError):
    """``restart(from_step=...)`` names a step the instance does not have."""


def label(step: StepRecord) -> str:
    """The name users see for a step: ``<name>-<count>`` (``create-pun-embedding-1``)."""
    return f"{step.name}-{step.count}"


# -- views ------------------------------------------------------------------------------------
def instance_summary(record: InstanceRecord) -> dict[str, Any]:
    """One row of an instance list."""
    return {
        "id": record.id,
        "workflow": record.workflow,
        "status": record.status,
        "trigger": {"source": record.trigger},
        "queued": iso(record.created_at),
        "start": iso(record.started_at),
        "end": iso(record.ended_at),
        "duration_ms": duration_ms(record.started_at, record.ended_at),
        "error": public_error(record.error),
        "priority": record.priority,
        "concurrency_key": record.concurrency_key,
    }


def _attempt_view(attempt: Mapping[str, Any]) -> dict[str, Any]:
    start, end = attempt.get("start"), attempt.get("end")
    error = public_error(attempt.get("error"))
    return {
        "start": iso(start),
        "end": iso(end),
        "duration_ms": duration_ms(start, end),
        "success": None if end is None else error is None,
        "error": error,
    }


def _step_status(step: StepRecord) -> str:
    """running, retrying, waiting, sleeping, complete, failed or timedOut."""
    if step.kind == SLEEP and step.status == "waiting":
        return "sleeping"
    if step.kind == WAIT and step.status == "failed":
        return "timedOut"
    return step.status


def step_view(step: StepRecord, *, include_output: bool = True) -> dict[str, Any]:
    """One step: type, label, status, times, attempts (``do`` steps only), output, error, config."""
    output = step.result if include_output and step.status == "complete" else None
    if output is not None and is_sensitive(step.config):  # kept for the workflow's replays only
        output = REDACTED
    view: dict[str, Any] = {
        "type": STEP_TYPES.get(step.kind, step.kind),
        "name": step.name,
        "count": step.count,
        "label": label(step),
        "status": _step_status(step),
        "success": {"complete": True, "failed": False}.get(step.status),
        "start": iso(step.started_at),
        "end": iso(step.ended_at),
        "duration_ms": duration_ms(step.started_at, step.ended_at),
        "wake_at": iso(step.wake_at),
        "attempts": [_attempt_view(a) for a in step.attempts] if step.kind == DO else [],
        "output": output,
        "error": public_error(step.error),
        "config": step.config,
    }
    return view


def _event(ts: float | None, type_: str, phase: int, **fields: Any) -> tuple[float, int, dict[str, Any]]:
    entry = {"type": type_, "timestamp": iso(ts)}
    entry.update({k: v for k, v in fields.items() if v is not None})
    return (ts if ts is not None else 0.0, phase, entry)


def _attempt_events(step: StepRecord, ref: dict[str, Any], prefix: str) -> list[tuple[float, int, dict[str, Any]]]:
    """A ``do`` step's events (``prefix`` ""), or a rollback handler's (``prefix`` "ROLLBACK_"):
    its start, each attempt's start and end, and its success or failure."""
    events = [_event(step.started_at, f"{prefix}STEP_START", 2, step=ref)]
    for number, attempt in enumerate(step.attempts, start=1):
        events.append(_event(attempt.get("start"), f"{prefix}ATTEMPT_START", 2, step=ref, attempt=number))
        if attempt.get("end") is not None:
            error = public_error(attempt.get("error"))
            kind = f"{prefix}ATTEMPT_FAILURE" if error else f"{prefix}ATTEMPT_SUCCESS"
            events.append(_event(attempt["end"], kind, 2, step=ref, attempt=number, error=error))
    if step.status == "complete":
        events.append(_event(step.ended_at, f"{prefix}STEP_SUCCESS", 2, step=ref))
    elif step.status == "failed":
        events.append(_event(step.ended_at, f"{prefix}STEP_FAILURE", 2, step=ref, error=public_error(step.error)))
    return events


def event_history(
    record: InstanceRecord, steps: list[StepRecord], history: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The instance's Cloudflare event log, oldest first.

    ``WORKFLOW_*`` events come from the store's instance history; ``STEP_*``, ``ATTEMPT_*``,
    ``SLEEP_*`` and ``WAIT_*`` are derived from the stored steps: a ``do`` step gives
    ``STEP_START``, an ``ATTEMPT_START`` and ``ATTEMPT_SUCCESS``/``ATTEMPT_FAILURE`` per attempt,
    then ``STEP_SUCCESS``/``STEP_FAILURE``; a sleep gives ``SLEEP_START``/``SLEEP_COMPLETE``; a
    wait gives ``WAIT_START`` then ``WAIT_COMPLETE`` or ``WAIT_TIMED_OUT``. Events at the same
    instant keep a causal order (queued, start, steps, end).
    """
    events: list[tuple[float, int, dict[str, Any]]] = []
    phases = {"WORKFLOW_QUEUED": 0, "WORKFLOW_START": 1}
    for item in history:
        data = item.get("data") or {}
        events.append(
            _event(
                item.get("timestamp"),
                str(item.get("type")),
                phases.get(str(item.get("type")), 3),
                trigger=data.get("trigger") if isinstance(data, dict) else None,
                error=public_error(data.get("error")) if isinstance(data, dict) else None,
            )
        )
    rollbacks = [s for s in steps if s.kind == ROLLBACK]
    if rollbacks:  # before the rollback steps of the same instant (the sort is stable)
        events.append(_event(min(s.started_at for s in rollbacks), "ROLLBACK_START", 2, totalSteps=len(rollbacks)))
    for step in steps:
        ref = {"name": step.name, "count": step.count, "type": STEP_TYPES.get(step.kind, step.kind)}
        if step.kind == DO:
            events.extend(_attempt_events(step, ref, ""))
        elif step.kind == ROLLBACK:
            events.extend(_attempt_events(step, ref, "ROLLBACK_"))
        elif step.kind == SLEEP:
            events.append(_event(step.started_at, "SLEEP_START", 2, step=ref))
            if step.status == "complete":
                events.append(_event(step.ended_at, "SLEEP_COMPLETE", 2, step=ref))
        elif step.kind == WAIT:
            events.append(_event(step.started_at, "WAIT_START", 2, step=ref))
            if step.status == "complete":
                events.append(_event(step.ended_at, "WAIT_COMPLETE", 2, step=ref))
            elif step.status == "failed":
                events.append(_event(step.ended_at, "WAIT_TIMED_OUT", 2, step=ref, error=public_error(step.error)))
    if rollbacks:  # the chain's end, as Cloudflare logs it
        failed = any(s.status == "failed" for s in rollbacks)
        if failed or record.status in ("errored", "terminated"):
            end = max((s.ended_at or s.started_at) for s in rollbacks)
            events.append(_event(end, "ROLLBACK_FAILED" if failed else "ROLLBACK_COMPLETE", 2))
    if not any(e[2]["type"] == "WORKFLOW_QUEUED" for e in events):  # e.g. history lost to a restart
        events.append(_event(record.created_at, "WORKFLOW_QUEUED", 0, trigger=record.trigger))
    events.sort(key=lambda e: (e[0], e[1]))  # stable: same-instant step events keep their order
    return [e[2] for e in events]


def instance_detail(
    record: InstanceRecord,
    steps: list[StepRecord],
    history: list[dict[str, Any]],
    *,
    include_output: bool = True,
) -> dict[str, Any]:
    """Everything about one instance: status, params, trigger, timestamps, output, error, the
    step log and the event history."""
    views = [step_view(s, include_output=include_output) for s in steps]
    last_ok = None
    for step in steps:
        if step.kind == DO and step.status == "complete":
            if last_ok is None or (step.ended_at or 0) >= (last_ok.ended_at or 0):
                last_ok = step
    detail = instance_summary(record)
    detail.update(
        {
            "params": record.params,
            "schedule": _schedule_view(record.schedule),
            "wake_at": iso(record.wake_at),
            "success": {"complete": True, "errored": False}.get(record.status),
            "output": record.output if include_output else None,
            "last_successful_step": label(last_ok) if last_ok is not None else None,
            "steps": views,
            "history": event_history(record, steps, history),
        }
    )
    return detail


def _schedule_view(schedule: dict[str, Any] | None) -> dict[str, Any] | None:
    if not schedule:
        return None
    when = schedule.get("scheduled_time")
    return {"cron": schedule.get("cron"), "scheduled_time": iso(when) if isinstance(when, (int, float)) else when}


# -- cursors ------------------------------------------------------------------------------------
#: What a page cursor looks like: the store's position and a signature, both base64url.
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}\.[A-Za-z0-9_-]{22}$"
CURSOR_MAX_LENGTH = 223
_PROCESS_KEY = secrets.token_bytes(32)
_READ_ONLY_KEY = b"perdure-read-only-store"


def _cursor_mac(key: bytes, payload: str) -> str:
    mac = hmac.new(key, b"perdure-cursor\x00" + payload.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def encode_cursor(store_cursor: str | None, key: bytes | None = None) -> str | None:
    """Wrap a store's cursor in an opaque, signed, URL-safe token: ``<position>.<signature>``
    (:data:`CURSOR_PATTERN`), the signature an HMAC-SHA256 under ``key`` (the API's is the
    database's ``cursors`` secret, so every server on one database accepts the others'
    cursors; without one, a key of this process)."""
    if store_cursor is None:
        return None
    payload = base64.urlsafe_b64encode(store_cursor.encode()).decode().rstrip("=")
    return f"{payload}.{_cursor_mac(key or _PROCESS_KEY, payload)}"


def decode_cursor(token: str | None, key: bytes | None = None) -> str | None:
    """The store's cursor inside ``token``; ValidationError unless ``key`` signed it."""
    if token is None or token == "":
        return None
    if len(token) > CURSOR_MAX_LENGTH:
        raise ValidationError("cursor is not one this server issued (too long)")
    payload, dot, signature = token.partition(".")
    if not dot or not hmac.compare_digest(signature.encode(), _cursor_mac(key or _PROCESS_KEY, payload).encode()):
        raise ValidationError(f"cursor {token[:40]!r} is not one this server issued")
    try:
        decoded = base64.b64decode(payload + "=" * (-len(payload) % 4), altchars=b"-_", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        decoded = ""
    if not decoded or not decoded.isprintable():  # signed by us, so only a key shared elsewhere
        raise ValidationError(f"cursor {token[:40]!r} is not one this server issued")
    return decoded


def check_status(status: object) -> str | None:
    if status is None:
        return None
    if status not in STATUSES:
        raise ValidationError(f"status {str(status)[:60]!r} is not one of: {', '.join(STATUSES)}")
    return str(status)


def check_limit(limit: object) -> int:
    if limit is None:
        return DEFAULT_LIST_LIMIT
    try:
        value = int(str(limit))
    except ValueError:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {str(limit)[:40]!r}") from None
    if not 1 <= value <= MAX_LIST_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {MAX_LIST_LIMIT}, got {value}")
    return value


# -- operations ---------------------------------------------------------------------------------
class Operations:
    """The operator's verbs on one engine; every method returns JSON-ready data.

    Errors are Perdure's own: :class:`~perdure.ValidationError` for bad input,
    :class:`~perdure.WorkflowNotFoundError`, :class:`~perdure.InstanceNotFoundError`,
    :class:`~perdure.InstanceAlreadyExistsError` and :class:`~perdure.InvalidStateError`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._bindings: dict[str, WorkflowBinding] = {}
        self._cursor_secret: bytes | None = None

    async def _cursor_key(self) -> bytes:
        """The database's key for page cursors (made on first use, then kept)."""
        if self._cursor_secret is None:
            store = await self.engine.ensure_store()
            try:
                self._cursor_secret = await store.secret("cursors")
            except ReadOnlyStoreError:
                # A read-only store (``perdure --db`` listing a file no server has used) cannot
                # keep a key. Its cursors then carry a fixed one, so the next such command
                # accepts them; no server uses it: a server's store makes the real key.
                return _READ_ONLY_KEY
        return self._cursor_secret

    # workflows
    async def _counts(self, workflow: str | None = None) -> dict[str, dict[str, int]]:
        store = await self.engine.ensure_store()
        return await store.count_by_status(workflow)

    async def _known(self) -> dict[str, WorkflowRecord]:
        """Workflows engines registered on the database (a handful of rows)."""
        store = await self.engine.ensure_store()
        return {w.name: w for w in await store.known_workflows()}

    async def workflow_names(self) -> list[str]:
        names = set(self.engine.workflows) | set(await self._known()) | set(await self._counts())
        return sorted(names)

    def _workflow_view(self, name: str, counts: dict[str, int], stored: WorkflowRecord | None) -> dict[str, Any]:
        """``registered`` means registered on *this* engine, which then describes it; otherwise
        the store's record of the last engine that started with it does."""
        registration = self.engine.workflows.get(name)
        described = registration.record() if registration is not None else stored
        return {
            "name": name,
            "registered": registration is not None,
            "class_name": described.class_name if described else None,
            "schedules": list(described.schedules) if described else [],
            "step_limit": described.step_limit if described else None,
            "last_registered_at": iso(stored.updated_at) if stored else None,
            "instances": {status: counts[status] for status in STATUSES if counts.get(status)},
            "total": sum(counts.values()),
            "flow": described.flow if described else None,
            "queued_by_reason": {},
        }

    async def _with_reasons(self, view: dict[str, Any]) -> dict[str, Any]:
        """Fill in why a workflow with flow control has queued instances (perdure.flow)."""
        limits = limits_from_dict(view["flow"])
        if limits is not None and view["instances"].get(QUEUED):
            store = await self.engine.ensure_store()
            view["queued_by_reason"] = await store.queued_reasons(view["name"], limits, self.engine.clock.now())
        return view

    async def list_workflows(self) -> list[dict[str, Any]]:
        counts, known = await self._counts(), await self._known()
        names = sorted(set(self.engine.workflows) | set(known) | set(counts))
        return [
            await self._with_reasons(self._workflow_view(name, counts.get(name, {}), known.get(name))) for name in names
        ]

    async def describe_workflow(self, name: str) -> dict[str, Any]:
        await self._check_workflow(name)
        counts = await self._counts(name)
        return await self._with_reasons(
            self._workflow_view(name, counts.get(name, {}), (await self._known()).get(name))
        )

    async def _check_workflow(self, name: str) -> WorkflowBinding:
        """The binding for ``name``: registered here, registered on the database by an engine
        that started (a worker elsewhere), or with instances in the store."""
        if not isinstance(name, str) or not name:
            raise ValidationError("workflow name must be a non-empty string")
        if name in self.engine.workflows:
            return self.engine.binding(name)
        if name in self._bindings:
            return self._bindings[name]
        validators.workflow_name(name)
        if name not in await self._known() and name not in await self._counts(name):
            raise WorkflowNotFoundError(
                f"no workflow named {name!r}: no engine registered it on this database and it has no instances"
            )
        binding = WorkflowBinding(self.engine, name)  # control works through the store alone
        self._bindings[name] = binding
        return binding

    # instances
    async def create(self, name: str, body: object, *, trigger: str = "api") -> dict[str, Any] | list[dict[str, Any]]:
        """Create one instance (``body`` a mapping ``{id?, params?}`` or None) or a batch (a list).

        One returns its summary; a batch returns the summaries of the instances it created
        (ids that already existed are skipped, as ``create_batch`` does)."""
        binding = await self._check_workflow(name)
        if isinstance(body, list):
            created = await _create(binding, validators.batch_size(body), skip_existing=True, trigger=trigger)
            return [await self._summary(i) for i in created]
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            raise ValidationError(
                f"the request body must be an object {{id?, params?}} or a list of them, got {_json_type(body)}"
            )
        (instance,) = await _create(binding, [body], skip_existing=False, trigger=trigger)
        return await self._summary(instance)

    async def _summary(self, instance: Instance) -> dict[str, Any]:
        # a create's response shows the instance as created, without reading it back
        return instance_summary(instance.created or await instance.record())

    async def list_instances(
        self,
        name: str,
        *,
        status: object = None,
        cursor: str | None = None,
        limit: object = None,
        id_prefix: object = None,
    ) -> dict[str, Any]:
        """Newest first: ``{"instances": [...], "next_cursor": str | None}``; with ``id_prefix``,
        only instances whose id starts with it."""
        wanted = check_status(status)
        size = check_limit(limit)
        prefix = validators.instance_id_prefix(id_prefix)
        store = await self.engine.ensure_store()
        key = await self._cursor_key()
        store_cursor = decode_cursor(cursor, key)
        await self._check_workflow(name)
        try:
            page = await store.list_instances(name, status=wanted, cursor=store_cursor, limit=size, id_prefix=prefix)
        except ValidationError:
            if store_cursor is not None:  # a forged cursor the store cannot use
                raise ValidationError("cursor is not one this server issued") from None
            raise
        instances = [instance_summary(r) for r in page.items]
        return {"instances": instances, "next_cursor": encode_cursor(page.next_cursor, key)}

    async def get_record(self, name: str, instance_id: str) -> InstanceRecord:
        """The instance; ``latest`` names the newest one unless an instance has that id."""
        await self._check_workflow(name)
        store = await self.engine.ensure_store()
        validators.instance_id(instance_id)
        record = await store.get_instance(name, instance_id)
        if record is None and instance_id == "latest":
            page = await store.list_instances(name, limit=1)
            record = page.items[0] if page.items else None
            if record is None:
                raise InstanceNotFoundError(f"workflow {name!r} has no instances yet")
        if record is None:
            raise InstanceNotFoundError(f"no instance {instance_id!r} in workflow {name!r}")
        return record

    async def describe(self, name: str, instance_id: str, *, include_output: bool = True) -> dict[str, Any]:
        record = await self.get_record(name, instance_id)
        store = await self.engine.ensure_store()
        steps = await store.load_steps(record.pk)
        history = await store.history(record.pk)
        return instance_detail(record, steps, history, include_output=include_output)

    async def _instance(self, name: str, instance_id: str) -> Instance:
        binding = await self._check_workflow(name)
        record = await self.get_record(name, instance_id)
        return Instance(binding, record.id, record.pk)

    async def control(
        self, name: str, instance_id: str, action: object, *, from_step: object = None, rollback: object = False
    ) -> dict[str, Any]:
        """Pause, resume, terminate (with ``rollback``: its handlers first) or restart; returns
        the instance's summary afterwards."""
        if action not in ACTIONS:
            raise ValidationError(f"status must be one of {', '.join(ACTIONS)}, got {str(action)[:60]!r}")
        if not isinstance(rollback, bool):
            raise ValidationError(f"rollback must be true or false, got {str(rollback)[:60]!r}")
        if rollback and action != "terminate":
            raise ValidationError("rollback is only allowed with status 'terminate'")
        key = validators.from_step(from_step)
        if key is not None and action != "restart":
            raise ValidationError("from_step is only allowed with status 'restart'")
        instance = await self._instance(name, instance_id)
        if action == "pause":
            await instance.pause()
        elif action == "resume":
            await instance.resume()
        elif action == "terminate":
            await instance.terminate(rollback=rollback)
        else:
            if key is not None:
                store = await self.engine.ensure_store()
                if not any(s.key == key for s in await store.load_steps(instance.pk)):
                    kind = STEP_TYPES.get(key[0], key[0])
                    raise StepNotFoundError(
                        f"instance {instance.id!r} has no {kind} step {key[1]!r} #{key[2]} to restart from"
                    )
            await instance.restart(None if key is None else {"type": key[0], "name": key[1], "count": key[2]})
        return await self._summary(instance)

    async def delete(self, name: str, ids: object) -> dict[str, Any]:
        """Delete 1-100 instances with everything stored about them, terminating unfinished ones
        first (Cloudflare's ``deleteBatch``): ``{"deleted": [{"id"}], "errors": [{"id", "code",
        "message"}]}``."""
        binding = await self._check_workflow(name)
        return await binding.delete_batch(ids)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> dict[str, Any]:
        validators.event_type(event_type)
        instance = await self._instance(name, instance_id)
        await instance.send_event(event_type, payload)
        return {"id": instance.id, "workflow": name, "type": event_type}


async def _create(binding: WorkflowBinding, items: list[Any], *, skip_existing: bool, trigger: str) -> list[Instance]:
    """``create``/``create_batch`` that records who triggered the instances (``api``, ``queue``):
    the trigger source shows in ``describe`` as Cloudflare's ``trigger.source`` does."""
    for item in items:
        if not isinstance(item, Mapping):
            raise ValidationError(f"an instance to create must be an object {{id?, params?}}, got {_json_type(item)}")
    return await binding.create_many(items, skip_existing=skip_existing, trigger=trigger)


def _json_type(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)

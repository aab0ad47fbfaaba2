"""Replay checking: does the current code still replay the stored instances?

Perdure replays ``run()`` from the top on every wake-up and matches each step call to the
stored step of the same ``(kind, name, count)``. A code change that renames, reorders, adds or
removes steps before the point an instance has reached, or changes a sleep's duration, makes a
sleeping instance take a different path when it wakes. :func:`check` replays every stored
instance (or the ones named) against the code *without running any step*, and reports, per
instance, the first divergence:

* ``missing_step``: the code asks for a step that the history does not have, while the
  history still holds steps this replay has not reached (at the end of the history a new step
  is only the instance carrying on, not a divergence);
* ``changed_kind``: the code asks for a ``do`` where the history has a sleep of that name (or
  any other change of kind);
* ``changed_sleep``: a sleep's duration (or ``sleep_until`` time) is not the stored one;
* ``unreached_step``: the run ended (returned, raised, or reached its frontier) with stored
  steps it never asked for.

``step.patched(id)`` is understood: an instance that recorded the patch's answer replays with
it, and one whose history predates the patch answers False. This is what a CI job runs against
a copy of production before a deploy (``perdure replay APP --db URL``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .context import Step, Stop
from .event import WorkflowEvent, to_datetime
from .records import InstanceRecord, StepRecord

if TYPE_CHECKING:
    from .engine import Registration
    from .store.base import Store

_KIND_NAMES = {"do": "step.do", "sleep": "step.sleep", "waitForEvent": "step.wait_for_event", "patch": "patched"}


@dataclass
class Divergence:
    kind: str
    message: str
    step: dict[str, Any] | None = None


@dataclass
class Report:
    """One instance's replay: ``ok`` or its first divergence."""

    workflow: str
    id: str
    status: str
    divergence: Divergence | None = None
    replayed_steps: int = 0

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"workflow": self.workflow, "id": self.id, "status": self.status, "ok": self.ok}
        out["replayed_steps"] = self.replayed_steps
        if self.divergence is not None:
            out["divergence"] = {"kind": self.divergence.kind, "message": self.divergence.message}
            if self.divergence.step is not None:
                out["divergence"]["step"] = self.divergence.step
        return out


def _ref(kind: str, name: str, count: int) -> dict[str, Any]:
    return {"type": kind, "name": name, "count": count}


def _label(kind: str, name: str, count: int) -> str:
    return f"{_KIND_NAMES.get(kind, kind)}({name!r}) #{count}"


@dataclass
class Observer:
    """What the :class:`~perdure.context.Step` tells the checker while it replays."""

    memo: Mapping[tuple[str, str, int], StepRecord]
    first: Divergence | None = None
    notes: list[Divergence] = field(default_factory=list)

    def _note(self, divergence: Divergence) -> None:
        if self.first is None:
            self.first = divergence

    def missing(self, step: Step, kind: str, name: str, count: int) -> None:
        left = step.unvisited()
        if not left:
            return  # the end of the history: the instance carries on from here
        other = next((k for k in self.memo if k[1] == name and k[2] == count and k[0] != kind), None)
        if other is not None:
            self._note(
                Divergence(
                    "changed_kind",
                    f"the code asks for {_label(kind, name, count)} where the history has {_label(*other)}",
                    _ref(kind, name, count),
                )
            )
            return
        nxt = _label(*left[0])
        self._note(
            Divergence(
                "missing_step",
                f"the code asks for {_label(kind, name, count)}, which the history does not have; "
                f"the history's next unreplayed step is {nxt}",
                _ref(kind, name, count),
            )
        )

    def sleep(self, step: Step, record: StepRecord, config: Mapping[str, Any]) -> None:
        stored = record.config or {}
        for key in ("duration", "until"):
            if key in config or key in stored:
                was, now = stored.get(key), config.get(key)
                if was != now:
                    what = "duration" if key == "duration" else "time (sleep_until)"
                    self._note(
                        Divergence(
                            "changed_sleep",
                            f"{_label(record.kind, record.name, record.count)}: the stored {what} is {was!r}, "
                            f"the code asks for {now!r}",
                            _ref(record.kind, record.name, record.count),
                        )
                    )
                return


async def check_instance(registration: Registration, record: InstanceRecord, steps: list[StepRecord]) -> Report:
    """Replay one instance's stored ``steps`` against ``registration``'s code."""
    memo: dict[tuple[str, str, int], StepRecord] = {s.key: s for s in steps}
    observer = Observer(memo)
    step = Step(
        store=_NoStore(),  # type: ignore[arg-type]
        pk=record.pk,
        epoch=record.epoch,
        clock=_FrozenClock(),
        steps=steps,
        step_limit=registration.step_limit,
        fast_wait=0.0,
        observer=observer,
    )
    event = WorkflowEvent(
        payload=record.params,
        timestamp=to_datetime(record.created_at),
        instance_id=record.id,
        workflow_name=record.workflow,
        schedule=None,
    )
    report = Report(record.workflow, record.id, record.status)
    try:
        await registration.cls(registration.env).run(event, step)
    except Stop:
        pass  # the frontier (or a divergence the observer noted)
    except asyncio.CancelledError:
        raise
    except Exception:  # the run failed as it did (a stored error), or the code now raises
        pass
    step.cancel_in_flight()
    report.replayed_steps = len([k for k in step._visited if k in memo])
    if observer.first is None:
        left = step.unvisited()
        if left:
            labels = ", ".join(_label(*k) for k in left[:5])
            observer.first = Divergence(
                "unreached_step",
                f"the run no longer reaches {len(left)} recorded step(s): {labels}",
                _ref(*left[0]),
            )
    report.divergence = observer.first
    return report


async def check(
    store: Store,
    registrations: Mapping[str, Registration],
    *,
    workflow: str | None = None,
    instance_ids: Iterable[str] | None = None,
    page: int = 500,
) -> list[Report]:
    """Replay the stored instances of ``registrations`` (one workflow, or some ids of it) and
    return one :class:`Report` per instance; a workflow with no registration is skipped."""
    names = [workflow] if workflow is not None else sorted(registrations)
    reports: list[Report] = []
    for name in names:
        registration = registrations.get(name)
        if registration is None:
            raise ValueError(
                f"no workflow named {name!r} in the application (it has {', '.join(sorted(registrations))})"
            )
        records: list[InstanceRecord] = []
        if instance_ids is not None:
            for instance_id in instance_ids:
                found = await store.get_instance(name, instance_id)
                if found is None:
                    raise ValueError(f"workflow {name!r} has no instance {instance_id!r}")
                records.append(found)
        else:
            cursor = None
            while True:
                listed = await store.list_instances(name, cursor=cursor, limit=page)
                records.extend(listed.items)
                cursor = listed.next_cursor
                if cursor is None:
                    break
        for record in records:
            reports.append(await check_instance(registration, record, await store.load_steps(record.pk)))
    return reports


class _FrozenClock:
    """Time for a replay that runs nothing: it reads the wall clock and never waits."""

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - a replay never waits
        raise Stop("replayed")


class _NoStore:
    """A replay must not write: any store call is a bug in the checker."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"the replay checker tried to use the store ({name})")

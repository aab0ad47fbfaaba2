"""The read-only ``event`` that ``run()`` receives."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any


def to_datetime(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, tz=UTC)


class WorkflowEvent(Mapping[str, Any]):
    """``event["payload"]`` or ``event.payload``; both spellings of the Cloudflare names work.

    Keys: ``payload``, ``timestamp`` (aware datetime), ``instance_id`` / ``instanceId``,
    ``workflow_name`` / ``workflowName`` and, for cron-started instances, ``schedule``
    (``{"cron", "scheduled_time"}``). The payload is decoded afresh on every replay, so a
    mutation never outlives the current run.
    """

    __slots__ = ("_data",)

    def __init__(
        self,
        *,
        payload: Any,
        timestamp: datetime,
        instance_id: str,
        workflow_name: str,
        schedule: dict[str, Any] | None = None,
    ) -> None:
        data: dict[str, Any] = {
            "payload": payload,
            "timestamp": timestamp,
            "instance_id": instance_id,
            "instanceId": instance_id,
            "workflow_name": workflow_name,
            "workflowName": workflow_name,
        }
        if schedule is not None:
            data["schedule"] = schedule
        object.__setattr__(self, "_data", data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("the workflow event is read-only")

    def __repr__(self) -> str:
        return f"WorkflowEvent({self._data!r})"

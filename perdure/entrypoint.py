"""The base class of every workflow."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import Step
    from .event import WorkflowEvent


class WorkflowEntrypoint:
    """Subclass it and implement ``async def run(self, event, step)``.

    ``self.env`` is the object given to ``engine.register(..., env=...)``: database handles, AI
    clients, other workflows' bindings. A new instance of the class is made for every run, so
    attributes set on ``self`` do not survive a sleep or a crash: keep state in step results.
    """

    env: Any

    def __init__(self, env: Any = None) -> None:
        self.env = env

    async def run(self, event: WorkflowEvent, step: Step) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement async def run(self, event, step)")

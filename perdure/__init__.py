"""Perdure: durable execution for Python, with Cloudflare Workflows' programming model.

Write a workflow, register it on an engine, create instances::

    from perdure import Engine, WorkflowEntrypoint

    class Hello(WorkflowEntrypoint):
        async def run(self, event, step):
            name = await step.do("greet", lambda: f"hello {event.payload['name']}")
            await step.sleep("nap", "1 minute")
            return name

    engine = Engine("sqlite:///perdure.db")
    hello = engine.register(Hello, name="hello")
    async with engine:
        instance = await hello.create(params={"name": "world"})
        print(await instance.wait())
"""

from .binding import Instance, WorkflowBinding
from .clock import Clock, SystemClock
from .context import Step
from .dag import StepFunction
from .engine import Engine
from .entrypoint import WorkflowEntrypoint
from .errors import (
    DatabaseLockedError,
    EventTimeoutError,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    MissingExtraError,
    NonRetryableDelayError,
    NonRetryableError,
    PerdureError,
    ReadOnlyStoreError,
    StepError,
    ValidationError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from .event import WorkflowEvent
from .subscriptions import Subscription

__version__ = "0.1.0"

__all__ = [
    "Clock",
    "DatabaseLockedError",
    "Engine",
    "EventTimeoutError",
    "Instance",
    "InstanceAlreadyExistsError",
    "InstanceNotFoundError",
    "InvalidStateError",
    "NonRetryableDelayError",
    "NonRetryableError",
    "MissingExtraError",
    "PerdureError",
    "ReadOnlyStoreError",
    "Step",
    "StepError",
    "StepFunction",
    "Subscription",
    "SystemClock",
    "ValidationError",
    "WorkflowBinding",
    "WorkflowEntrypoint",
    "WorkflowEvent",
    "WorkflowNotFoundError",
    "WorkflowTimeoutError",
]

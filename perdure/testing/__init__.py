"""Helpers for testing workflows (Cloudflare's ``cloudflare:test``, in snake_case).

* :class:`ManualClock` is a clock whose time stands still until the test moves it: give it to
  ``Engine(clock=...)`` and an hour-long ``step.sleep``, a ten-minute retry delay or a day-long
  ``wait_for_event`` timeout passes the moment the test calls :meth:`ManualClock.advance`,
  without changing the workflow's code. ``ManualClock(auto_advance=True)`` skips time by
  itself whenever every instance waits on time.
* :func:`introspect_workflow_instance` and :func:`introspect_workflow` change how an instance's
  steps behave (no sleeps or retry delays, mocked results, errors, timeouts and events) and
  wait for its step results and statuses.
* :func:`replay` checks that stored instances still replay against the current code.
* The pytest plugin (:mod:`perdure.testing.plugin`, loaded by pytest when perdure is installed)
  gives the fixtures ``perdure_engine``, ``perdure_postgres_engine`` and ``perdure_time_skipping``.
"""

from __future__ import annotations

from .clock import ManualClock
from .introspection import (
    InstanceIntrospector,
    InstanceModifier,
    IntrospectionError,
    WorkflowIntrospector,
    introspect_workflow,
    introspect_workflow_instance,
)
from .replaying import replay

__all__ = [
    "InstanceIntrospector",
    "InstanceModifier",
    "IntrospectionError",
    "ManualClock",
    "WorkflowIntrospector",
    "introspect_workflow",
    "introspect_workflow_instance",
    "replay",
]

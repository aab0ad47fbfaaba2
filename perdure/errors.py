"""Every exception Perdure raises, in one place.

Errors split in three families:

* workflow errors that user code raises or catches inside ``run()``
  (:class:`NonRetryableError`, :class:`WorkflowTimeoutError`, :class:`EventTimeoutError`,
  :class:`StepError`);
* binding errors raised by instance control (:class:`InstanceNotFoundError`,
  :class:`InstanceAlreadyExistsError`, :class:`InvalidStateError`);
* store errors: :class:`DatabaseLockedError` (another process holds SQLite's write lock) and
  :class:`ReadOnlyStoreError` (a write through a store opened read-only);
* :class:`ValidationError`, a ``ValueError`` raised for bad input before anything is stored.

And one signal between the store and the engine that user code never sees: :class:`Fenced`.
"""

from __future__ import annotations


class PerdureError(Exception):
    """Base class of the errors Perdure raises on its own account."""


class MissingExtraError(PerdureError, ImportError):
    """A feature needs an optional extra that is not installed (``pip install 'perdure[server]'``).

    Also an :class:`ImportError`, for code that guards an import that way. ``extra`` names the
    extra to install; ``module``, when known, the module that is missing (``"starlette"``)."""

    def __init__(self, message: str, *, extra: str, module: str | None = None) -> None:
        super().__init__(message, name=module)
        self.extra = extra
        self.module = module


class ValidationError(PerdureError, ValueError):
    """Bad input (an id, a name, a size, a config, a duration). Nothing was stored."""


class NonRetryableError(Exception):
    """Raise inside a step to stop its retries at once.

    The error propagates into ``run()`` where it may be caught; uncaught, the instance ends
    ``errored`` with ``{"name": "NonRetryableError", "message": <message>}``.
    """

    def __init__(self, message: str = "", name: str = "NonRetryableError") -> None:
        super().__init__(message)
        self.message = message
        self.name = name


class NonRetryableDelayError(NonRetryableError):
    """A step's dynamic retry delay (``retries.delay`` as a function) raised, took longer than
    5 seconds, or returned something that is not a duration: the step fails at once, without
    further retries, with this error saying which."""

    def __init__(self, message: str = "", name: str = "NonRetryableDelayError") -> None:
        super().__init__(message, name)


class WorkflowTimeoutError(Exception):
    """A step attempt outlived its ``timeout``; it counts as a failed attempt."""


class EventTimeoutError(Exception):
    """``step.wait_for_event`` reached its timeout before a matching event arrived."""


class StepError(Exception):
    """A memoised step failure whose original exception class cannot be rebuilt.

    ``name`` is the original class name and ``message`` its message.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message


class InstanceNotFoundError(PerdureError, LookupError):
    """No instance with that id exists in that workflow."""


class InstanceAlreadyExistsError(PerdureError):
    """An instance with that id already exists in that workflow."""


class InvalidStateError(PerdureError):
    """The requested change is not allowed in the instance's current status."""


class WorkflowNotFoundError(PerdureError, LookupError):
    """No workflow of that name is registered."""


class DatabaseLockedError(PerdureError):
    """Another process held the SQLite file's write lock for longer than the busy timeout.

    SQLite lets one process write a file at a time; a writer that is stopped (``kill -STOP``, a
    debugger, a suspended terminal job) while it holds the lock blocks every other writer
    (readers go on). ``path`` is the file; ``pid`` the process that holds the lock when
    ``/proc/locks`` tells (else None), and ``holder`` how it reads (its command line and
    state)."""

    def __init__(self, message: str, *, path: str, pid: int | None = None, holder: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.pid = pid
        self.holder = holder


class ReadOnlyStoreError(PerdureError):
    """A write through a store opened read-only (``open_store(url, read_only=True)``), or a
    read-only open of a file that cannot be read as it is (missing, not a Perdure database, or
    in an older layout that only a writable open upgrades)."""


class Fenced(Exception):
    """A write was refused: the instance's epoch moved on (it was reclaimed, terminated or
    restarted). The store raises it and the engine handles it: the run that made the write
    lost its instance and ends without recording anything more (never seen by user code)."""

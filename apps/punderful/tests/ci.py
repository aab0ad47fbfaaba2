"""What a test does when something it needs is not there."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def unavailable(reason: str) -> NoReturn:
    """Skip the test on a developer machine; fail it in CI (``CI`` set), where everything the
    tests need is installed and started, so no test may silently skip there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this test must run)")
    pytest.skip(reason)

"""perdure.leases.LeaseGate: an attempt starts only under a fresh lease (unit tests, no store)."""

from __future__ import annotations

import time

import pytest

from perdure.leases import LeaseGate, LeaseLost


def gate(renewals: list[set[int] | Exception], ttl: float = 3.0) -> tuple[LeaseGate, list[int]]:
    calls: list[int] = []

    async def refresh() -> set[int]:
        calls.append(1)
        answer = renewals.pop(0)
        if isinstance(answer, Exception):
            raise answer
        lease.renewed_at = time.monotonic()
        return answer

    lease = LeaseGate(7, ttl, refresh)
    return lease, calls


async def test_a_fresh_lease_needs_no_renewal() -> None:
    lease, calls = gate([])
    await lease.ensure()
    assert calls == [] and lease.call_if_fresh(lambda x: x + 1, {"x": 1}) == (True, 2)


async def test_a_stale_lease_is_renewed_first_and_then_the_attempt_goes_ahead() -> None:
    lease, calls = gate([{7}])
    lease.renewed_at -= 2.0  # older than lease_ttl / 2
    assert lease.call_if_fresh(lambda: 1, {}) == (False, None)  # not started in its thread
    await lease.ensure()
    assert calls == [1] and lease.fresh()


async def test_an_instance_no_longer_ours_or_an_unreachable_store_starts_nothing() -> None:
    lease, _ = gate([{8}])
    lease.renewed_at -= 2.0
    with pytest.raises(LeaseLost) as lost:
        await lease.ensure()
    assert not lost.value.store_failed
    lease, _ = gate([ConnectionError("down")])
    lease.renewed_at -= 2.0
    with pytest.raises(LeaseLost) as failed:
        await lease.ensure()
    assert failed.value.store_failed and "down" in str(failed.value)

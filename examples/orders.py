"""A small example app: order workflows you can watch progress in the terminal.

``python examples/orders.py`` creates an order every second on ``orders.db`` and shows each
order's steps as they run: a charge that fails twice before it succeeds (retries with
exponential backoff), a sleep, a wait for a "shipped" event that the app itself sends.
Stop it with Ctrl-C and start it again: every order carries on from its last finished step.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from perdure import Engine, InvalidStateError, WorkflowEntrypoint


class Order(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        order = event.payload

        @step.do("reserve-stock")
        async def reserve_stock() -> dict[str, Any]:
            return {"sku": order["sku"], "reserved": True}

        @step.do("charge-card", config={"retries": {"limit": 3, "delay": "1 second", "backoff": "exponential"}})
        async def charge_card(reserve_stock: dict[str, Any], ctx: dict[str, Any]) -> str:
            if ctx["attempt"] < 3:  # the payment provider is flaky: the first two attempts fail
                raise ConnectionError(f"payment provider timed out (attempt {ctx['attempt']})")
            return f"charge-{event.instance_id}"

        charge = await charge_card()
        await step.sleep("cool-down", "3 seconds")
        shipped = await step.wait_for_event("wait-for-shipping", "shipped", timeout="1 minute")
        return {"charge": charge, "tracking": shipped["payload"]["tracking"]}


async def main() -> None:
    engine = Engine("sqlite:///orders.db")
    orders = engine.register(Order, name="orders")
    async with engine:
        n = 0
        while True:
            n += 1
            instance = await orders.create(params={"sku": random.choice(["mug", "tee", "cap"])})
            print(f"created {instance.id}")
            page = await engine.store.list_instances("orders", limit=8)
            for record in page.items:
                if record.status == "waiting":  # asleep, in a retry delay, or waiting to ship
                    handle = await orders.get(record.id)
                    with contextlib.suppress(InvalidStateError):  # it finished since the listing
                        await handle.send_event("shipped", {"tracking": f"TRK{record.pk:05d}"})
                print(f"  {record.id[:8]}  {record.status:16} {record.output or record.error or ''}")
            await asyncio.sleep(1)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C: every order carries on when the example starts again
        print("stopped; start it again to carry on")

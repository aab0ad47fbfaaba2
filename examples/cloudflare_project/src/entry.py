"""An order pipeline written for Cloudflare Python Workers: runs as is on Cloudflare
(``wrangler dev``) and on Perdure (``perdure dev examples/cloudflare_project``).

* ``POST /orders`` with ``{"quantity": 3, "approval": false}`` starts an instance;
* ``GET /orders/<id>`` reads its status;
* ``POST /orders/<id>/approve`` sends the ``approval`` event an order with ``"approval": true`` waits for;
* ``GET /cache`` touches the KV namespace, which Perdure does not provide.
"""

import json
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
from workers.workflows import NonRetryableError


class OrderPipeline(WorkflowEntrypoint):
    async def run(self, event, step):
        order = event["payload"]

        @step.do("check order")
        async def check_order():
            quantity = order.get("quantity")
            if not isinstance(quantity, int) or quantity < 1:
                raise NonRetryableError(f"quantity must be a whole number >= 1, got {quantity!r}")
            return quantity

        @step.do("look up price")
        async def look_up_price():
            return int(self.env.UNIT_PRICE_CENTS)

        # The legacy DAG form (before compatibility date 2026-02-25): results in `depends` order.
        @step.do("final step", depends=[check_order, look_up_price], concurrent=True)
        async def total(quantity, unit_price, ctx):
            print(f"pricing {quantity} x {unit_price} (attempt {ctx['attempt']})")
            return {"cents": quantity * unit_price, "currency": self.env.CURRENCY}

        price = await total()
        if order.get("approval"):
            approval = await step.wait_for_event("wait for approval", "approval", timeout="1 hour")
            if not approval["payload"].get("ok"):
                raise NonRetryableError("the order was refused")
        return {"order": order, "price": price}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = [p for p in urlparse(request.url).path.split("/") if p]
        if request.method == "POST" and parts == ["orders"]:
            instance = await self.env.MY_WORKFLOW.create({"params": await request.json()})
            return Response.json({"id": instance.id, "details": await instance.status()}, status=201)
        if len(parts) >= 2 and parts[0] == "orders":
            try:
                instance = await self.env.MY_WORKFLOW.get(parts[1])
            except Exception as error:  # Cloudflare raises a JavaScript error, Perdure InstanceNotFoundError
                return Response.json({"error": str(error)}, status=404)
            if request.method == "POST" and parts[2:] == ["approve"]:
                body = await request.text()
                await instance.send_event({"type": "approval", "payload": json.loads(body or "{}")})
                return Response.json({"id": instance.id, "sent": "approval"}, status=202)
            if request.method == "GET" and len(parts) == 2:
                return Response.json({"id": instance.id, "details": await instance.status()})
        if parts == ["cache"]:
            return Response(await self.env.CACHE.get("greeting"))
        if not parts:
            return Response("POST /orders to start an order pipeline; GET /orders/<id> to follow it.\n")
        return Response("not found\n", status=404)

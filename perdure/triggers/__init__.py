"""What starts instances from outside the application's own code: a durable queue kept in the
engine's database (:mod:`.queues`) and a Redis Stream consumer (:mod:`.redis_streams`).

A trigger creates instances through :meth:`perdure.WorkflowBinding.create_many` with a
``trigger`` source (``"queue"``, ...), which ``describe`` shows as Cloudflare's
``trigger.source``. HTTP triggers live in :mod:`perdure.server.api`; cron schedules are the
engine's own timers (:mod:`perdure.cron`).
"""

"""The ``perdure`` command line, mirroring ``wrangler workflows``.

Client commands talk to a running server over HTTP (``--url``, default
``http://127.0.0.1:8080``; ``--token`` or ``PERDURE_TOKEN`` for a server that needs one) or
straight to a database (``--db sqlite:///perdure.db`` or ``--db postgresql://...``)::

    perdure workflows list
    perdure workflows describe NAME
    perdure workflows trigger NAME '{"key": "value"}' --id my-id
    perdure instances list NAME --status errored --limit 20 --id-prefix order-
    perdure instances describe NAME latest
    perdure instances pause|resume|terminate|restart NAME ID
    perdure instances send-event NAME ID --type approval --payload '{"ok": true}'

Durable queues (:mod:`perdure.triggers.queues`) need ``--db``: the REST API has no queue endpoints::

    perdure --db URL queues list                       # ready / delayed / in flight / dead
    perdure --db URL queues send NAME '{"n": 1}' --delay 30
    perdure --db URL queues dead NAME --limit 20       # the newest dead letters
    perdure --db URL queues redrive NAME               # dead letters back to ready

Server commands load an application's engine from ``module:attribute``::

    perdure serve APP     # REST API + dashboard + /metrics (workers run elsewhere)
    perdure worker APP    # a worker process
    perdure dev APP       # all three in one process: the local-development loop

``--json`` prints machine-readable output. Errors print one line on stderr and exit with
1 (failure, e.g. server unreachable), 2 (bad input), 3 (not found), 4 (conflict: the
instance exists or is in the wrong state) or 5 (unauthorized).
"""

from .commands import main

__all__ = ["main"]

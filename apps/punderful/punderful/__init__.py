"""Punderful: the pun site from Cloudflare's Workflows course, on Perdure.

Visitors write puns; a durable ``publish`` workflow moderates, embeds, categorises and indexes
each one in the background, with models that run offline on a CPU. Start it with
``python -m punderful`` and open the printed URL.

* :mod:`punderful.app` -- :class:`~punderful.app.Punderful`, the runtime (engine + services + web)
* :mod:`punderful.web` -- pages and JSON API
* :mod:`punderful.workflows` -- ``publish``, ``interaction``, ``leaderboard``, ``puntificator``
* :mod:`punderful.db` -- the app's tables; :mod:`punderful.vectors` -- the vector index
* :mod:`punderful.ai` -- embeddings, categories, moderation
* :mod:`punderful.importer` -- the batch import of the bundled data set
"""

from punderful.config import Config

__all__ = ["Config"]

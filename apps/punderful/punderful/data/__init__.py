"""Data files shipped with Punderful.

``puns.json`` is the seed data set (original puns, CC0-1.0; see
``LICENSE-puns.md``) that the batch import publishes. It is a JSON list of
``{"pun": "setup\\npunchline"}`` objects.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["load_puns"]


def load_puns() -> list[str]:
    """Return the seed puns, in file order.

    Read through :mod:`importlib.resources` so it also works when the
    package is installed as a wheel or zip rather than run from a checkout.
    """
    text = resources.files(__name__).joinpath("puns.json").read_text(encoding="utf-8")
    return [str(item["pun"]) for item in json.loads(text)]

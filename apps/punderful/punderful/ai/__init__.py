"""Punderful's AI building blocks, all runnable offline on a CPU.

* :mod:`punderful.ai.embedder` -- text -> unit vector (local MiniLM, or an
  OpenAI-compatible endpoint).
* :mod:`punderful.ai.categorizer` -- pun -> category names (zero-shot by
  embedding similarity, or an OpenAI-compatible chat endpoint).
* :mod:`punderful.ai.moderation` -- pun -> flagged or not (word list, or
  OpenAI's moderation API).
* :mod:`punderful.ai.openai_http` -- the HTTP calls the OpenAI-compatible
  clients above (and the puntificator's pun writer) share.

Every class here is synchronous; run calls in a worker thread (for example
``await asyncio.to_thread(...)`` or a plain-function workflow step), never
directly on the event loop.
"""

from punderful.ai.categorizer import (
    DEFAULT_CATEGORIES,
    Categorizer,
    CategorizerError,
    LLMCategorizer,
    ZeroShotCategorizer,
)
from punderful.ai.embedder import (
    Embedder,
    EmbeddingError,
    LocalEmbedder,
    ModelIntegrityError,
    OpenAIEmbedder,
)
from punderful.ai.moderation import (
    LocalModeration,
    ModerationError,
    ModerationResult,
    Moderator,
    OpenAIModeration,
)

__all__ = [
    "DEFAULT_CATEGORIES",
    "Categorizer",
    "CategorizerError",
    "Embedder",
    "EmbeddingError",
    "LLMCategorizer",
    "LocalEmbedder",
    "LocalModeration",
    "ModelIntegrityError",
    "ModerationError",
    "ModerationResult",
    "Moderator",
    "OpenAIEmbedder",
    "OpenAIModeration",
    "ZeroShotCategorizer",
]

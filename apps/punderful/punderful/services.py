"""The resources the web app and the workflows share (``self.env`` in every workflow).

:func:`open_services` builds them from a :class:`~punderful.config.Config`: the app database,
the vector index, the embedding model, the categorizer, the moderator and the pun writer. The
choice of each follows the config: offline models unless an OpenAI-compatible endpoint is
configured (see :mod:`punderful.config`).

Everything here is synchronous (model inference, SQLite, HTTP clients): from async code call it
through ``asyncio.to_thread``; workflow steps written as plain functions already run in a thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from punderful.ai import (
    Categorizer,
    Embedder,
    LLMCategorizer,
    LocalEmbedder,
    LocalModeration,
    Moderator,
    OpenAIEmbedder,
    OpenAIModeration,
    ZeroShotCategorizer,
)
from punderful.config import Config
from punderful.db import PunDB
from punderful.generator import LLMPunWriter, PunWriter, RecombinationWriter
from punderful.judge import LLMJudge, LocalJudge, PunJudge
from punderful.vectors import PgVectorIndex, VectorIndex, VectorStore

if TYPE_CHECKING:
    from perdure import Engine, WorkflowBinding

__all__ = ["Services", "open_services"]

log = logging.getLogger("punderful")


@dataclass
class Services:
    """What a request handler or a workflow step may use."""

    config: Config
    db: PunDB
    vectors: VectorStore
    embedder: Embedder
    categorizer: Categorizer
    moderator: Moderator | None
    writer: PunWriter
    judge: PunJudge
    engine: Engine | None = None
    _closers: list[Any] = field(default_factory=list)

    # -- models ---------------------------------------------------------------------------------
    def embed(self, text: str) -> list[float]:
        """One unit vector as a JSON-friendly list of floats (a step result; 384 floats ~ 8 KB)."""
        vector = self.embedder.embed_one(text)
        return [float(x) for x in vector]

    def categorize(self, text: str, embedding: list[float] | None) -> list[str]:
        """Category names for ``text``; the zero-shot categorizer reuses ``embedding``."""
        vector = None if embedding is None else np.asarray(embedding, dtype=np.float32)
        return self.categorizer.categorize(text, vector)

    def warm_up(self) -> float:
        """Load the models now rather than on the first pun; returns the seconds it took."""
        started = time.perf_counter()
        if isinstance(self.embedder, LocalEmbedder):
            self.embedder.load()
        if isinstance(self.categorizer, ZeroShotCategorizer):
            # Embeds the category descriptions once (cached by the categorizer).
            self.categorizer.categorize("warming up", self.embedder.embed_one("warming up"))
        return time.perf_counter() - started

    def step_delay(self) -> None:
        """The ``PUNDERFUL_STEP_DELAY`` test hook: sleep after a publish step's work, so that a
        test's SIGKILL can land between a side effect and the step's recorded result."""
        if self.config.step_delay > 0:
            time.sleep(self.config.step_delay)

    # -- workflows ------------------------------------------------------------------------------
    def binding(self, name: str) -> WorkflowBinding:
        """A registered workflow's binding (``publish``, ``interaction``...)."""
        if self.engine is None:
            raise RuntimeError("services are not attached to an engine")
        return self.engine.binding(name)

    def close(self) -> None:
        """Close the databases and HTTP clients."""
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # closing is best effort; one failure must not leak the rest
                log.exception("error while closing %r", closer)
        self._closers.clear()


def _embedder(config: Config) -> Embedder:
    if config.embeddings_base_url and config.embeddings_model:
        return OpenAIEmbedder(config.embeddings_base_url, config.embeddings_model, config.embeddings_api_key)
    return LocalEmbedder()


def _categorizer(config: Config, embedder: Embedder) -> Categorizer:
    if config.llm_base_url and config.llm_model:
        return LLMCategorizer(config.llm_base_url, config.llm_model, config.llm_api_key, config.categories)
    return ZeroShotCategorizer(embedder, config.categories)


def _moderator(config: Config) -> Moderator | None:
    method = config.moderation_method
    if method == "openai":
        assert config.openai_api_key is not None  # Config.validate guarantees it
        return OpenAIModeration(config.openai_api_key, config.moderation_base_url)
    if method == "local":
        return LocalModeration()
    return None


def _writer(config: Config) -> PunWriter:
    if config.llm_base_url and config.llm_model:
        return LLMPunWriter(config.llm_base_url, config.llm_model, config.llm_api_key, max_length=config.max_pun_length)
    return RecombinationWriter()


def _judge(config: Config, embedder: Embedder) -> PunJudge:
    if config.llm_base_url and config.llm_model:
        return LLMJudge(config.llm_base_url, config.llm_model, config.llm_api_key)
    return LocalJudge(embedder)


def open_services(config: Config) -> Services:
    """Open every resource the config names (blocking: databases are opened and created)."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    embedder = _embedder(config)
    model_id = embedder.model_id
    vectors: VectorStore
    if config.uses_postgres:
        db = PunDB.postgres(config.pg_conninfo, schema=config.pg_schema)
        vectors = PgVectorIndex(config.pg_conninfo, schema=config.pg_schema, model_id=model_id)
    else:
        db = PunDB.sqlite(config.app_db_path)
        vectors = VectorIndex(config.vectors_path, model_id=model_id)
    categorizer = _categorizer(config, embedder)
    services = Services(
        config=config,
        db=db,
        vectors=vectors,
        embedder=embedder,
        categorizer=categorizer,
        moderator=_moderator(config),
        writer=_writer(config),
        judge=_judge(config, embedder),
    )
    services._closers.extend([db.close, vectors.close])
    for resource in (embedder, categorizer, services.moderator, services.writer, services.judge):
        close = getattr(resource, "close", None)
        if callable(close):
            services._closers.append(close)
    return services

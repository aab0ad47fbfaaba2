"""Writing a new pun from trending ones, for the ``puntificator`` workflow.

The original asked Llama 3.1 8B to "understand why these puns are popular and write one original
similar pun". Two writers share the :class:`PunWriter` protocol:

* :class:`LLMPunWriter` sends the original's prompt to an OpenAI-compatible chat endpoint
  (Ollama, vLLM, llama.cpp's server, OpenAI...), used when one is configured.
* :class:`RecombinationWriter` is the offline fallback, and it is **not** creative: no
  instruction-following model ships on PyPI, so it recombines the trending puns themselves --
  the setup (first line) of one with the punchline (the rest) of another. The result is usually
  a non sequitur, sometimes accidentally funny, always labelled ``offline-recombination`` in the
  workflow's output so nobody mistakes it for generated wit.

Both are synchronous: call them from a worker thread (a plain workflow step function).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

from punderful.ai.openai_http import chat_content, openai_client

__all__ = ["LLMPunWriter", "PunWriter", "PunWriterError", "RecombinationWriter", "split_pun"]

#: The original's instruction (prompt mode), adapted to chat messages.
PROMPT: Final = (
    "You are a comedian who writes puns. Here are the puns that are trending on our site:\n\n"
    "{trending}\n\n"
    "Understand why they are popular, then write one original pun that is similar to them. "
    "Put two newlines before the punchline. Return only the pun, with no preamble or explanation."
)


class PunWriterError(RuntimeError):
    """No pun could be written (the endpoint failed, or nothing to work from)."""


@runtime_checkable
class PunWriter(Protocol):
    """Writes one pun inspired by ``trending``; ``seed`` makes the choice reproducible."""

    @property
    def method(self) -> str:
        """How the pun was made, recorded in the workflow's output."""
        ...

    def write(self, trending: Sequence[str], seed: str) -> str:
        """Return the new pun's text (setup and punchline separated by a newline)."""
        ...


def split_pun(text: str) -> tuple[str, str]:
    """``(setup, punchline)``: the first line and the rest. A one-line pun is split after its
    first sentence (``. ``, ``? `` or ``! ``) when it has one, else the punchline is empty."""
    text = text.strip()
    if "\n" in text:
        setup, rest = text.split("\n", 1)
        return setup.strip(), " ".join(rest.split())
    match = re.search(r"[.?!]\s+", text)
    if match:
        return text[: match.end()].strip(), text[match.end() :].strip()
    return text, ""


class RecombinationWriter:
    """Offline: the setup of one trending pun plus the punchline of another.

    Deterministic for a given ``seed`` (the workflow passes its instance id), and never returns
    one of the inputs unchanged when there are two or more to mix. With a single trending pun
    there is nothing to recombine; it is returned as a "sequel" with its lines swapped into a
    question, which is honest about being a rerun.
    """

    method = "offline-recombination"

    def write(self, trending: Sequence[str], seed: str) -> str:
        """See the class docstring."""
        parts = [split_pun(t) for t in trending if t.strip()]
        if not parts:
            raise PunWriterError("no trending puns to recombine")
        # A stable seed (not Python's randomised str hash) so the same instance picks the same pair.
        rng = random.Random(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big"))
        originals = {t.strip() for t in trending}
        pairs = [(a, b) for a in range(len(parts)) for b in range(len(parts)) if a != b and parts[b][1]]
        rng.shuffle(pairs)
        for a, b in pairs:
            candidate = f"{parts[a][0]}\n{parts[b][1]}"
            if candidate not in originals:
                return candidate
        setup, punchline = parts[0]
        return f"Remember this one? {setup}\n{punchline or 'You had to be there.'}"


class LLMPunWriter:
    """The original's prompt on an OpenAI-compatible ``/chat/completions`` endpoint."""

    method = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_length: int = 1000,
    ) -> None:
        """``base_url`` includes the version prefix, e.g. ``http://127.0.0.1:11434/v1``."""
        self._client = openai_client(base_url, api_key, timeout=timeout)
        self._model = model
        self._max_length = max_length

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def prompt(self, trending: Sequence[str]) -> str:
        """The user message: trending puns in ``<trending-pun>`` tags, as in the original."""
        tagged = "\n".join(f"<trending-pun>{t.strip()}</trending-pun>" for t in trending)
        return PROMPT.format(trending=tagged)

    def write(self, trending: Sequence[str], seed: str) -> str:
        """Ask the model; transport errors and empty answers raise :class:`PunWriterError`
        (the workflow step retries them)."""
        if not trending:
            raise PunWriterError("no trending puns to learn from")
        body = {
            "model": self._model,
            "messages": [{"role": "user", "content": self.prompt(trending)}],
            "temperature": 0.9,
            "max_tokens": 200,
            "user": seed,
        }
        text = _clean(chat_content(self._client, body, error=PunWriterError))
        if not text:
            raise PunWriterError("the model returned an empty pun")
        return text[: self._max_length]


def _clean(answer: str) -> str:
    """Collapse the model's blank lines ("two newlines before the punchline") to one newline
    and drop wrapping quotes, so the pun is stored like every other one."""
    lines = [line.strip() for line in answer.strip().strip('"').splitlines()]
    return "\n".join(line for line in lines if line)

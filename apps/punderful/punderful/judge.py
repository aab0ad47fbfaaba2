"""Judging a new pun before it is published: the puntificator's ``judge-pun`` step.

The original asked ``hermes-2-pro-mistral-7b`` to rate the pun through a function call
(``ratePun``: ``rating`` 1-10, ``explanation``, ``feedback``) and threw ``NonRetryableError``
when the rating was below 8, so that a bad pun is never saved or published. Two judges share
the :class:`PunJudge` protocol:

* :class:`LLMJudge` sends the original's system prompt and the pun to an OpenAI-compatible
  ``/chat/completions`` endpoint with the ``ratePun`` tool (forced with ``tool_choice``) and
  validates the tool's arguments against :data:`RATE_PUN_SCHEMA`. An answer without the tool
  call, or whose arguments break the schema, raises :class:`JudgeError` (the step retries it,
  as the original's plain ``Error``).
* :class:`LocalJudge` is the offline judge. No instruction-following model ships on PyPI, so
  it cannot tell a funny pun from a flat one; what it checks, with the same local MiniLM model
  the app already runs, is what a bad generated pun usually gets wrong:

  1. it has a setup and a punchline;
  2. it is not a near-copy of one of its sources or of a pun the site already has
     (:data:`NEAR_COPY_RATIO`, character-level similarity of the normalised texts);
  3. it is not stitched from the setup of one existing pun and the punchline of another;
  4. its punchline belongs to its setup: the cosine similarity of the two halves' embeddings,
     as a z-score against the similarities of that setup to the bundled puns' punchlines
     (a genuine pun's punchline is about its own setup; a random one is not).

  The checks become a rating on the original's 1-10 scale (8 = :data:`COHERENCE_Z`), and the
  verdict says which check decided it. Its quality is measured on the bundled puns, edited
  copies of them and recombinations by ``bench/eval_judge.py`` (figures in the README).

Both are synchronous: call them from a worker thread (a plain workflow step function).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import threading
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from punderful.ai.embedder import Embedder
from punderful.ai.openai_http import openai_client, post_json
from punderful.generator import split_pun

__all__ = [
    "COHERENCE_Z",
    "JUDGE_SYSTEM_PROMPT",
    "LLMJudge",
    "LocalJudge",
    "NEAR_COPY_RATIO",
    "PASSING_RATING",
    "RATE_PUN_SCHEMA",
    "RATE_PUN_TOOL",
    "JudgeError",
    "PunJudge",
    "Verdict",
    "validate_rating",
]

#: The original's bar: a rating below 8 stops the puntificator (NonRetryableError).
PASSING_RATING: Final = 8

#: The original's system prompt, word for word (its typo included).
JUDGE_SYSTEM_PROMPT: Final = (
    "You are a pun critic.\n\n"
    "The user is going to submit a pun for you to judge.\n\n"
    "You're goal is to make sure that you are as honest as possible about the pun.\n\n"
    "Use the tools provided to you.\n"
)

#: The ``ratePun`` tool's parameters (the original's, with the 1-10 range made explicit):
#: what the LLM is asked for, and what its answer is validated against.
RATE_PUN_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "rating": {
            "type": "number",
            "minimum": 1,
            "maximum": 10,
            "description": "The rating of the pun between 1 and 10. 1 being the worst, 10 being the most funny.",
        },
        "explanation": {"type": "string", "description": "An explanation of why the pun works."},
        "feedback": {"type": "string", "description": "Feedback about how to improve the pun"},
    },
    "required": ["rating"],
}

RATE_PUN_TOOL: Final[dict[str, Any]] = {
    "type": "function",
    "function": {
        "name": "ratePun",
        "description": "Rates a pun and provides feedback",
        "parameters": RATE_PUN_SCHEMA,
    },
}

#: Character-level similarity (difflib ratio of the normalised texts) at or above which a pun
#: is a near-copy of another. Chosen on the tuning half (see ``bench/eval_judge.py``).
NEAR_COPY_RATIO: Final = 0.8
#: The same, for one half (setup or punchline) copied from an existing pun.
PART_COPY_RATIO: Final = 0.9
#: Setup/punchline coherence z-score that maps to the passing rating 8 (tuning half).
COHERENCE_Z: Final = 0.6
#: Rating points per unit of z above or below :data:`COHERENCE_Z`.
RATING_PER_Z: Final = 1.0


class JudgeError(RuntimeError):
    """The judge gave no usable answer (transport failure, no tool call, invalid arguments):
    worth retrying, unlike a low rating."""


@dataclass(frozen=True)
class Verdict:
    """A judge's answer, shaped like the original's ``ratePun`` arguments plus how it was made."""

    rating: float
    explanation: str
    feedback: str
    method: str
    #: The local judge's measurements (empty for an LLM).
    checks: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        """Whether the pun may be published (rating >= :data:`PASSING_RATING`)."""
        return self.rating >= PASSING_RATING

    def to_dict(self) -> dict[str, Any]:
        """The step's result (JSON)."""
        data: dict[str, Any] = {
            "rating": self.rating,
            "explanation": self.explanation,
            "feedback": self.feedback,
            "method": self.method,
        }
        if self.checks:
            data["checks"] = self.checks
        return data


@runtime_checkable
class PunJudge(Protocol):
    """Rates a new pun; ``sources`` are the texts it was written from (and others it must not copy)."""

    @property
    def method(self) -> str:
        """How the verdict is made, recorded in the step's result."""
        ...

    def judge(self, pun: str, sources: Sequence[str]) -> Verdict:
        """Rate ``pun`` 1-10."""
        ...


# -- the schema check ---------------------------------------------------------------------------
_JSON_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "number": (int, float),
    "string": (str,),
}


def validate_rating(arguments: Any, schema: dict[str, Any] = RATE_PUN_SCHEMA) -> dict[str, Any]:
    """Check ``arguments`` (a dict, or its JSON text) against ``schema`` and return the dict.

    Implements the part of JSON Schema the tool uses (``type`` object/number/string,
    ``properties``, ``required``, ``minimum``, ``maximum``); unknown extra keys are kept, as
    JSON Schema allows. A violation raises :class:`JudgeError` naming the field."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            raise JudgeError(f"the judge's arguments are not JSON: {arguments[:200]!r}") from None
    if not isinstance(arguments, dict):
        raise JudgeError(f"the judge's arguments must be a JSON object, got {type(arguments).__name__}")
    for name in schema.get("required", []):
        if name not in arguments:
            raise JudgeError(f"the judge's answer has no {name!r}")
    for name, rule in schema.get("properties", {}).items():
        if name not in arguments:
            continue
        value = arguments[name]
        expected = _JSON_TYPES[rule["type"]]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise JudgeError(f"the judge's {name!r} must be a {rule['type']}, got {value!r:.80}")
        if rule["type"] == "number":
            if isinstance(value, float) and not math.isfinite(value):
                raise JudgeError(f"the judge's {name!r} must be a finite number, got {value!r}")
            if "minimum" in rule and value < rule["minimum"]:
                raise JudgeError(f"the judge's {name!r} is {value}, below the minimum {rule['minimum']}")
            if "maximum" in rule and value > rule["maximum"]:
                raise JudgeError(f"the judge's {name!r} is {value}, above the maximum {rule['maximum']}")
    return arguments


# -- the LLM judge ------------------------------------------------------------------------------
class LLMJudge:
    """The original's judging prompt and ``ratePun`` tool on an OpenAI-compatible endpoint."""

    method = "llm"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, timeout: float = 60.0) -> None:
        """``base_url`` includes the version prefix, e.g. ``http://127.0.0.1:11434/v1``."""
        self._client = openai_client(base_url, api_key, timeout=timeout)
        self._model = model

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def request(self, pun: str) -> dict[str, Any]:
        """The chat completion request: system prompt, the pun, the tool (forced)."""
        return {
            "model": self._model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": pun},
            ],
            "tools": [RATE_PUN_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "ratePun"}},
            "temperature": 0,
        }

    def judge(self, pun: str, sources: Sequence[str] = ()) -> Verdict:
        """Ask the model; see the module docstring for what raises :class:`JudgeError`."""
        response = post_json(self._client, "/chat/completions", self.request(pun), what="judge", error=JudgeError)
        try:
            message = response.json()["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeError(f"malformed chat completion: {response.text[:300]}") from None
        arguments = _tool_arguments(message)
        checked = validate_rating(arguments)
        return Verdict(
            rating=float(checked["rating"]),
            explanation=str(checked.get("explanation", "")),
            feedback=str(checked.get("feedback", "")),
            method=self.method,
        )


def _tool_arguments(message: Any) -> Any:
    """The ``ratePun`` call's arguments from an assistant message (``tool_calls``, or the
    older ``function_call``); ``JudgeError`` when there is none, as in the original."""
    if not isinstance(message, dict):
        raise JudgeError("the judge's answer is not a message")
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        call = calls[0]
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise JudgeError("the first tool call was not found")
        if function.get("name") not in (None, "ratePun"):
            raise JudgeError(f"the judge called {function.get('name')!r}, not ratePun")
        if function.get("arguments") in (None, ""):
            raise JudgeError("tool call was completed with no arguments")
        return function["arguments"]
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and legacy.get("arguments"):
        return legacy["arguments"]
    raise JudgeError("tool_calls not found")


# -- the local judge ----------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Lower-case letters and digits separated by single spaces (for copy checks)."""
    text = unicodedata.normalize("NFKD", text).lower()
    return " ".join(re.findall(r"[a-z0-9]+", text))


def copy_ratio(a: str, b: str) -> float:
    """difflib's similarity ratio of two normalised texts (1 = identical)."""
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return matcher.ratio()


def _best_copy(text: str, candidates: Sequence[str], floor: float) -> tuple[float, int]:
    """``(ratio, index)`` of the candidate most like ``text`` (both normalised), if any reaches
    ``floor``; else ``(best upper bound seen below floor, -1)``. Cheap bounds skip most pairs."""
    best, where = 0.0, -1
    for i, other in enumerate(candidates):
        matcher = difflib.SequenceMatcher(None, text, other, autojunk=False)
        if matcher.real_quick_ratio() < max(floor, best) or matcher.quick_ratio() < max(floor, best):
            continue
        ratio = matcher.ratio()
        if ratio >= floor and ratio > best:
            best, where = ratio, i
    return best, where


class _Reference:
    """The bundled puns, normalised and with their punchlines embedded (once per model)."""

    def __init__(self, puns: Sequence[str], embedder: Embedder) -> None:
        parts = [split_pun(p) for p in puns]
        self.puns = list(puns)
        self.whole = [normalise(p) for p in puns]
        self.setups = [normalise(s) for s, _ in parts]
        self.punchlines = [normalise(p) for _, p in parts]
        self.punchline_vectors: NDArray[np.float32] = np.asarray(
            embedder.embed([p or s for s, p in parts]), dtype=np.float32
        )


_REFERENCES: dict[str, _Reference] = {}
_REFERENCES_LOCK = threading.Lock()


class LocalJudge:
    """The offline judge (see the module docstring). ``reference_puns`` default to the bundled
    data set: what a new pun must not copy, and the punchlines its coherence is compared with."""

    method = "local"

    def __init__(self, embedder: Embedder, reference_puns: Sequence[str] | None = None) -> None:
        self._embedder = embedder
        self._reference_puns = reference_puns

    def reference(self) -> _Reference:
        """The embedded reference set (built on first use: ~2 s for the 310 bundled puns)."""
        if self._reference_puns is not None:
            key = f"{self._embedder.model_id}:{hash(tuple(self._reference_puns))}"
        else:
            key = self._embedder.model_id
        with _REFERENCES_LOCK:
            ref = _REFERENCES.get(key)
            if ref is None:
                if self._reference_puns is None:
                    from punderful.data import load_puns

                    puns = [p for p in load_puns() if p.strip()]
                else:
                    puns = list(self._reference_puns)
                ref = _REFERENCES[key] = _Reference(puns, self._embedder)
        return ref

    def judge(self, pun: str, sources: Sequence[str] = (), *, exclude: Collection[int] = ()) -> Verdict:
        """Rate ``pun``. ``sources`` (the puns it was written from, the site's published puns)
        join the reference set for the copy checks; ``exclude`` leaves reference puns out by
        index (the evaluation's leave-one-out)."""
        ref = self.reference()
        setup, punchline = split_pun(pun)
        if len(normalise(pun)) < 8:
            return self._verdict(1, "It is too short to be a pun.", "Write a setup and a punchline.", "too-short")
        if not punchline:
            return self._verdict(
                3,
                "It has a setup but no punchline.",
                "Put the punchline on its own line after the setup.",
                "no-punchline",
            )
        keep = [i for i in range(len(ref.puns)) if i not in exclude] if exclude else range(len(ref.puns))
        extra = [s for s in sources if s.strip()]
        whole_texts = [ref.whole[i] for i in keep] + [normalise(s) for s in extra]
        originals = [ref.puns[i] for i in keep] + list(extra)
        text = normalise(pun)
        ratio, where = _best_copy(text, whole_texts, NEAR_COPY_RATIO)
        if where >= 0:
            first_line = split_pun(originals[where])[0]
            return self._verdict(
                1,
                f"It is a near-copy ({ratio:.0%} the same) of an existing pun: {first_line!r}.",
                "Write a new pun instead of repeating one.",
                "near-copy",
                copy_ratio=round(ratio, 3),
            )
        source_parts = [split_pun(s) for s in extra]
        setups = [ref.setups[i] for i in keep] + [normalise(s) for s, _ in source_parts]
        punchlines = [ref.punchlines[i] for i in keep] + [normalise(p) for _, p in source_parts]
        setup_copy, s_at = _best_copy(normalise(setup), setups, PART_COPY_RATIO)
        punch_copy, p_at = _best_copy(normalise(punchline), [p for p in punchlines if p], PART_COPY_RATIO)
        if s_at >= 0 and p_at >= 0:
            return self._verdict(
                2,
                "It is stitched together from the setup of one existing pun and the punchline of another.",
                "Write a punchline that answers this setup.",
                "stitched",
                setup_copy=round(setup_copy, 3),
                punchline_copy=round(punch_copy, 3),
            )
        vectors = np.asarray(self._embedder.embed([setup, punchline]), dtype=np.float32)
        cosine = float(vectors[0] @ vectors[1])
        pool = ref.punchline_vectors[list(keep)] if exclude else ref.punchline_vectors
        baseline = pool @ vectors[0]
        z = (cosine - float(baseline.mean())) / max(float(baseline.std()), 1e-6)
        rating = round(float(np.clip(PASSING_RATING + (z - COHERENCE_Z) * RATING_PER_Z, 1, 10)), 1)
        measures = {"coherence": round(cosine, 3), "coherence_z": round(z, 2)}
        if rating >= PASSING_RATING:
            return self._verdict(
                rating,
                "Its punchline follows from its setup, and it copies no pun the site has.",
                "An offline judge cannot tell how funny it is: likes will.",
                "coherent",
                **measures,
            )
        return self._verdict(
            rating,
            f"Its punchline has little to do with its setup (coherence z {z:.2f}, needs {COHERENCE_Z}).",
            "Make the punchline play on a word from the setup.",
            "incoherent",
            **measures,
        )

    def _verdict(self, rating: float, explanation: str, feedback: str, decided_by: str, **measures: Any) -> Verdict:
        return Verdict(
            rating=float(rating),
            explanation=explanation,
            feedback=feedback,
            method=self.method,
            checks={"decidedBy": decided_by, **measures},
        )

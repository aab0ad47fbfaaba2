"""PostgreSQL connection URLs: Perdure's ``?schema=`` apart, everything else for libpq."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import ValidationError

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def parse_url(url: str, schema: str | None = None) -> tuple[str, str]:
    """Split a ``postgresql://`` URL into a libpq conninfo and the schema name.

    The ``schema`` query parameter is Perdure's (libpq would reject it); an explicit ``schema``
    argument must agree with it. Returns ``(conninfo, schema)``.
    """
    parts = urlparse(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    in_url = [value for key, value in query if key == "schema"]
    if len(in_url) > 1:
        raise ValidationError(f"database url {url!r} names the schema more than once")
    if in_url and schema is not None and in_url[0] != schema:
        raise ValidationError(f"schema={schema!r} contradicts the url's schema={in_url[0]!r}")
    chosen = schema if schema is not None else (in_url[0] if in_url else "perdure")
    if not _SCHEMA_RE.fullmatch(chosen):
        raise ValidationError(
            f"schema name {chosen!r} must be 1-63 letters, digits and '_' and must not start with a digit"
        )
    rest = urlunparse(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    try:
        params = conninfo_to_dict(rest)
    except psycopg.ProgrammingError as exc:
        raise ValidationError(f"invalid database url {url!r}: {exc}") from None
    params.setdefault("application_name", "perdure")
    # Notice a server that vanished without closing the connection (a partition, a crashed
    # host) in about 20 s rather than the operating system's two hours.
    keepalives = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5", "keepalives_count": "3"}
    for key, value in keepalives.items():
        params.setdefault(key, value)
    return make_conninfo("", **params), chosen

"""JSON with comments and trailing commas (the JSONC that ``wrangler.jsonc`` is written in).

:func:`strip` blanks out ``//`` and ``/* */`` comments and trailing commas with spaces and keeps
every newline, so the result is plain JSON in which every remaining character stands at the
line and column it had: :func:`loads` reports errors at the place in the file the user wrote.
"""

from __future__ import annotations

import json
from typing import Any


class JsoncError(ValueError):
    """Text that is not JSONC; ``line`` and ``column`` count from 1."""

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{line}:{column}: {message}")
        self.message = message
        self.line = line
        self.column = column


def _position(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def strip(text: str) -> str:
    """``text`` with comments and trailing commas replaced by spaces (newlines kept)."""
    out = list(text)
    i, n = 0, len(text)
    last = -1  # index of the last significant character outside strings and comments
    before = -1  # and of the one before it
    while i < n:
        char = text[i]
        if char == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            before, last = last, min(i, n - 1)
            i += 1
            continue
        if char == "/" and i + 1 < n and text[i + 1] == "/":
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
            continue
        if char == "/" and i + 1 < n and text[i + 1] == "*":
            end = text.find("*/", i + 2)
            if end < 0:
                raise JsoncError("unterminated /* comment", *_position(text, i))
            for j in range(i, end + 2):
                if out[j] != "\n":
                    out[j] = " "
            i = end + 2
            continue
        if char in "]}" and last >= 0 and text[last] == "," and (before < 0 or text[before] not in ":,[{"):
            out[last] = " "  # a trailing comma (after a value: `"a": ,}` stays an error at the comma)
        if not char.isspace():
            before, last = last, i
        i += 1
    return "".join(out)


def loads(text: str) -> Any:
    """Parse JSONC; :class:`JsoncError` with the line and column of the first error."""
    if text.startswith("\ufeff"):
        text = " " + text[1:]
    try:
        return json.loads(strip(text))
    except json.JSONDecodeError as exc:
        raise JsoncError(exc.msg, exc.lineno, exc.colno) from None

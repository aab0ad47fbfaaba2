"""Writes ``reference/rest.md``, the REST API reference, from the OpenAPI document the server
serves (:func:`perdure.server.openapi.openapi_document`) when a build starts: every path and
method, its parameters, request body, responses and schemas. The page cannot drift from the
API (it is generated, and not committed)."""

from __future__ import annotations

import json
from typing import Any

from sphinx.application import Sphinx


def _schema_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"array of {_schema_name(schema.get('items', {}))}"
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_schema_name(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    return str(schema.get("type", "any"))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(document: dict[str, Any]) -> list[str]:
    lines: list[str] = [str(document["info"].get("description", "")).strip(), ""]
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            lines += [f"## `{method.upper()} {path}`", "", _cell(op.get("summary", "")), ""]
            if op.get("description"):
                lines += [str(op["description"]).strip(), ""]
            params = op.get("parameters", [])
            if params:
                lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
                for p in params:
                    kind = _schema_name(p.get("schema", {}))
                    lines.append(
                        f"| `{p['name']}` | {p['in']} | {kind} | {'yes' if p.get('required') else 'no'} "
                        f"| {_cell(p.get('description', ''))} |"
                    )
                lines.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            if body:
                lines += [f"Request body (JSON): `{_schema_name(body.get('schema', {}))}`", ""]
            lines += ["| status | meaning | body |", "|---|---|---|"]
            for status, response in op.get("responses", {}).items():
                content = response.get("content", {})
                schema = next(iter(content.values()), {}).get("schema", {}) if content else {}
                shown = f"`{_schema_name(schema)}`" if schema else "-"
                lines.append(f"| {status} | {_cell(response.get('description', ''))} | {shown} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in document.get("components", {}).get("schemas", {}).items():
        lines += [f"### `{name}`", "", "```json", json.dumps(schema, indent=2), "```", ""]
    return lines


def write_reference(app: Sphinx) -> None:
    from perdure.server.openapi import openapi_document

    document = openapi_document()
    title = f"# REST API ({document['info'].get('title', 'Perdure')} {document['info'].get('version', '')})"
    page = "\n".join([title.strip(), "", *render(document)]).rstrip() + "\n"
    target = app.srcdir / "reference" / "rest.md"
    if not target.exists() or target.read_text() != page:  # unchanged: no rebuild of the page
        target.write_text(page)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", write_reference)
    return {"parallel_read_safe": True, "version": "1"}

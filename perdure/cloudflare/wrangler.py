"""Read a Worker's wrangler configuration: ``wrangler.json``, ``wrangler.jsonc`` or ``wrangler.toml``.

:func:`find_config` looks in a directory in wrangler's order (``wrangler.json``, then
``wrangler.jsonc``, then ``wrangler.toml``) or takes the file it is given; :func:`read_config`
parses it (TOML with :mod:`tomllib`; JSON and JSONC alike, comments and trailing commas allowed,
as wrangler does) and keeps what Perdure runs:

* ``main``: the Worker's Python module (``src/entry.py``);
* ``[[workflows]]``: ``name``, ``binding``, ``class_name``, ``script_name``, ``limits.steps``,
  ``schedules`` (a string or a list);
* ``vars``: strings or JSON values;
* every other binding (D1, R2, KV, AI, queues, services, ...) by name and kind, so that
  ``env.DB`` can say what it is when code touches it;
* ``dev.port``, the port ``perdure dev`` binds unless told (``wrangler dev``'s 8787 without it).

:func:`read_dev_vars` reads ``.dev.vars`` beside the wrangler file (``NAME=value`` lines, the
local secrets ``wrangler dev`` adds to ``vars``).

Every problem raises :class:`WranglerError`, one line naming the file and, for a file that does
not parse, the line and column.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import validators
from ..errors import ValidationError
from .jsonc import JsoncError, loads

CONFIG_NAMES = ("wrangler.json", "wrangler.jsonc", "wrangler.toml")

# Bindings declared as a list of tables, each with a "binding" key (or "name" where noted).
_LIST_BINDINGS: dict[str, str] = {
    "kv_namespaces": "KV namespace",
    "r2_buckets": "R2 bucket",
    "d1_databases": "D1 database",
    "vectorize": "Vectorize index",
    "hyperdrive": "Hyperdrive",
    "services": "service binding",
    "analytics_engine_datasets": "Analytics Engine dataset",
    "mtls_certificates": "mTLS certificate",
    "dispatch_namespaces": "dispatch namespace",
    "pipelines": "pipeline",
    "secrets_store_secrets": "Secrets Store secret",
    "ai_search_namespaces": "AI Search namespace",
    "ai_search": "AI Search",
    "agent_memory": "agent memory",
    "artifacts": "artifacts",
    "flagship": "Flagship",
    "worker_loaders": "Worker Loader",
    "vpc_services": "VPC service",
    "send_email": "send email",
    "ratelimits": "rate limiter",
}
_NAME_KEYED = {"send_email", "ratelimits"}
# Bindings declared as one table with a "binding" key.
_SINGLE_BINDINGS: dict[str, str] = {
    "ai": "Workers AI",
    "browser": "Browser Rendering",
    "images": "Images",
    "media": "Media Transformations",
    "stream": "Stream",
    "version_metadata": "version metadata",
    "websearch": "web search",
    "assets": "static assets",
}
_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")


class WranglerError(ValueError):
    """The wrangler file is missing, does not parse, or says something Perdure cannot run."""


@dataclass(frozen=True)
class WorkflowSpec:
    """One ``[[workflows]]`` entry."""

    name: str
    binding: str
    class_name: str
    script_name: str | None = None
    limits: dict[str, int] | None = None
    schedules: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OtherBinding:
    """A binding Perdure does not provide: ``env.<name>`` names it when touched."""

    name: str
    kind: str  # "D1 database"
    section: str  # "d1_databases"


@dataclass
class WranglerConfig:
    path: Path
    name: str | None
    main: Path | None
    workflows: list[WorkflowSpec]
    vars: dict[str, Any]
    others: list[OtherBinding]
    dev_port: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def root(self) -> Path:
        return self.path.parent

    def shown(self, path: Path) -> str:
        """``path`` relative to the project, for messages."""
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)


def find_config(location: str | Path) -> Path | None:
    """The wrangler file at ``location`` (that file, or the first of :data:`CONFIG_NAMES` in
    that directory); ``None`` when there is none."""
    path = Path(location)
    if path.is_file():
        return path if path.name.startswith("wrangler.") and path.suffix in (".json", ".jsonc", ".toml") else None
    if path.is_dir():
        for name in CONFIG_NAMES:
            if (path / name).is_file():
                return path / name
    return None


def parse_text(text: str, filename: str) -> dict[str, Any]:
    """The document in ``text`` (TOML when ``filename`` ends in ``.toml``, else JSONC)."""
    if filename.endswith(".toml"):
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            at = _TOML_AT.search(message)
            if at:
                message = message[: at.start()]
                raise WranglerError(f"{filename}:{at.group(1)}:{at.group(2)}: {message}") from None
            raise WranglerError(f"{filename}: {message}") from None
    else:
        try:
            data = loads(text)
        except JsoncError as exc:
            raise WranglerError(f"{filename}:{exc.line}:{exc.column}: {exc.message}") from None
    if not isinstance(data, dict):
        raise WranglerError(f"{filename}: the configuration must be an object, got {type(data).__name__}")
    return data


def read_config(location: str | Path) -> WranglerConfig:
    """Find, parse and check the wrangler file at ``location`` (see the module doc)."""
    path = find_config(location)
    if path is None:
        where = Path(location)
        if not where.exists():
            raise WranglerError(f"{location}: no such file or directory")
        if where.is_file():
            raise WranglerError(f"{location} is not a wrangler file ({', '.join(CONFIG_NAMES)})")
        raise WranglerError(f"{location} holds no {', '.join(CONFIG_NAMES[:-1])} or {CONFIG_NAMES[-1]}")
    path = path.resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WranglerError(f"cannot read {path}: {exc}") from None
    return from_dict(parse_text(text, path.name), path)


def read_dev_vars(config: WranglerConfig) -> dict[str, str]:
    """The ``NAME=value`` lines of ``.dev.vars`` beside the wrangler file (``#`` comments, blank
    lines, values in single or double quotes); ``{}`` when there is none. A name that is also a
    binding is an error; one that is also in ``vars`` wins, as with wrangler."""
    path = config.root / ".dev.vars"
    if not path.is_file():
        return {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WranglerError(f"cannot read {path}: {exc}") from None
    found: dict[str, str] = {}
    bindings = {w.binding for w in config.workflows} | {o.name for o in config.others}
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, equals, value = text.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not _IDENTIFIER.match(name):
            raise WranglerError(f".dev.vars:{number}: expected NAME=value, got {text[:40]!r}")
        if name in bindings:
            raise WranglerError(f".dev.vars:{number}: {name!r} is a binding in {config.path.name}")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        found[name] = value
    return found


def _fail(config: Path, where: str, message: str) -> WranglerError:
    return WranglerError(f"{config.name}: {where}: {message}")


def _string(config: Path, where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(config, where, f"must be a non-empty string, got {value!r}")
    return value


def _workflow(config: Path, index: int, entry: Any) -> WorkflowSpec:
    where = f"workflows[{index}]"
    if not isinstance(entry, dict):
        raise _fail(config, where, f"must be a table with name, binding and class_name, got {entry!r}")
    for key in ("name", "binding", "class_name"):
        if key not in entry:
            raise _fail(config, where, f"has no {key!r}")
    name = _string(config, f"{where}.name", entry["name"])
    try:
        validators.workflow_name(name)
    except ValidationError as exc:
        raise _fail(config, f"{where}.name", str(exc)) from None
    binding = _string(config, f"{where}.binding", entry["binding"])
    if not _IDENTIFIER.match(binding):
        raise _fail(config, f"{where}.binding", f"{binding!r} is not a valid binding name")
    class_name = _string(config, f"{where}.class_name", entry["class_name"])
    script = entry.get("script_name")
    if script is not None:
        script = _string(config, f"{where}.script_name", script)
    limits = entry.get("limits")
    if limits is not None:
        if not isinstance(limits, dict) or set(limits) - {"steps"}:
            raise _fail(config, f"{where}.limits", f"must be a table with the key 'steps', got {limits!r}")
        steps = limits.get("steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise _fail(config, f"{where}.limits.steps", f"must be an integer >= 1, got {steps!r}")
        limits = {"steps": steps} if steps is not None else None
    schedules = entry.get("schedules", [])
    if isinstance(schedules, str):
        schedules = [schedules]
    if not isinstance(schedules, list) or not all(isinstance(s, str) and s for s in schedules):
        raise _fail(config, f"{where}.schedules", f"must be a cron string or a list of them, got {schedules!r}")
    return WorkflowSpec(name, binding, class_name, script, limits, list(schedules))


def _others(config: Path, data: dict[str, Any]) -> list[OtherBinding]:
    found: list[OtherBinding] = []
    for section, kind in _LIST_BINDINGS.items():
        entries = data.get(section) or []
        key = "name" if section in _NAME_KEYED else "binding"
        if not isinstance(entries, list):
            raise _fail(config, section, f"must be a list of tables, got {type(entries).__name__}")
        for index, entry in enumerate(entries):
            name = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                raise _fail(config, f"{section}[{index}]", f"has no {key!r}")
            found.append(OtherBinding(name, kind, section))
    for section, kind in _SINGLE_BINDINGS.items():
        entry = data.get(section)
        if isinstance(entry, dict) and isinstance(entry.get("binding"), str):
            found.append(OtherBinding(entry["binding"], kind, section))
    nested = (("durable_objects", "bindings", "name", "Durable Object namespace"),
              ("queues", "producers", "binding", "queue producer"),
              ("logfwdr", "bindings", "name", "logfwdr"))  # fmt: skip
    for section, part, key, kind in nested:
        table = data.get(section)
        entries = table.get(part) if isinstance(table, dict) else None
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            name = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(name, str) or not name:
                raise _fail(config, f"{section}.{part}[{index}]", f"has no {key!r}")
            found.append(OtherBinding(name, kind, f"{section}.{part}"))
    return found


def from_dict(data: dict[str, Any], path: Path) -> WranglerConfig:
    """Check a parsed wrangler document that was read from ``path``."""
    main: Path | None = None
    if data.get("main") is not None:
        text = _string(path, "main", data["main"])
        if not text.endswith(".py"):
            raise _fail(path, "main", f"{text!r} is not a Python module: perdure runs Python Workers")
        main = (path.parent / text).resolve()
    workflows_raw = data.get("workflows", [])
    if not isinstance(workflows_raw, list):
        raise _fail(path, "workflows", f"must be a list of tables, got {type(workflows_raw).__name__}")
    workflows = [_workflow(path, i, entry) for i, entry in enumerate(workflows_raw)]
    variables = data.get("vars", {})
    if not isinstance(variables, dict):
        raise _fail(path, "vars", f"must be a table of names and values, got {type(variables).__name__}")
    others = _others(path, data)
    seen: dict[str, str] = {}
    declared = [(w.binding, "workflows") for w in workflows] + [(o.name, o.section) for o in others]
    declared += [(name, "vars") for name in variables]
    for name, section in declared:
        if name in seen:
            raise _fail(path, section, f"the binding name {name!r} is also declared in {seen[name]}")
        seen[name] = section
    names = [w.name for w in workflows]
    for name in names:
        if names.count(name) > 1:
            raise _fail(path, "workflows", f"two workflows are named {name!r}")
    dev = data.get("dev")
    port = dev.get("port") if isinstance(dev, dict) else None
    worker_name = data.get("name") if isinstance(data.get("name"), str) else None
    return WranglerConfig(
        path=path,
        name=worker_name,
        main=main,
        workflows=workflows,
        vars=dict(variables),
        others=others,
        dev_port=port if isinstance(port, int) and not isinstance(port, bool) else None,
        raw=data,
    )

"""The one config loader: YAML files into msgspec structs, overridable by ``SF_*`` variables.

Errors name the file, the line and the field, e.g.::

    notify.yaml:12: routes[0].channels: Expected `array`, got `str`

Environment variables override file values: ``SF_<FIELD>`` for a top-level field and
``SF_<SECTION>_<FIELD>`` for a nested one (``SF_NATS_URL`` sets ``nats.url``). A value is read
as a YAML scalar (``5``, ``true``, ``1.5``); a list field takes a comma-separated value.
"""

from __future__ import annotations

import os
import re
import shlex
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

T = TypeVar("T")

_PATH_IN_MESSAGE = re.compile(r" - at `(\$[^`]*)`$")
_NAMED_FIELD = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*): ")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`$")
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


class ConfigError(ValueError):
    """A config file or environment value users must fix; ``str()`` is the whole message."""

    def __init__(self, message: str, *, source: str = "", line: int | None = None, field: str = "") -> None:
        where = source + (f":{line}" if line is not None else "")
        parts = [p for p in (where, field) if p]
        super().__init__(": ".join([*parts, message]))
        self.source = source
        self.line = line
        self.field = field


class Duration(float):
    """Seconds, written in config as ``30s``, ``5m``, ``1h``, ``250ms`` or a bare number."""

    def __repr__(self) -> str:
        return f"Duration({float(self)!r})"


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        return Duration(parse_duration(value))
    raise NotImplementedError(f"unsupported config type {kind!r}")


def parse_duration(value: str | float | int) -> float:
    """Seconds in a duration: ``90``, ``"90s"``, ``"1.5m"``, ``"250ms"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration like 30s, 5m or 1h, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"expected a duration like 30s, 5m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative, got {value!r}")
    return seconds


def _node_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = str(key.value)
            lines[f"{path}.{name}"] = key.start_mark.line + 1
            _node_lines(value, f"{path}.{name}", lines)
            # the key line is where a reader looks for a field, not the value's first line
            lines[f"{path}.{name}"] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _node_lines(item, f"{path}[{i}]", lines)


def _load_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", source=source, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    _node_lines(node, "$", lines)
    return data, lines


def _field_path(path: str) -> str:
    return path[2:] if path.startswith("$.") else path.lstrip("$")


def _line_for(path: str, lines: Mapping[str, int]) -> int | None:
    # The deepest ancestor that exists in the file: a missing field is reported at its parent.
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            break
        path = path[:cut]
    return lines.get("$")


def _struct_fields(kind: Any) -> dict[str, Any] | None:
    kind = _unwrap(kind)
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        hints = typing.get_type_hints(kind, include_extras=False)
        return {name: hints[name] for name in kind.__struct_fields__}
    return None


def _unwrap(kind: Any) -> Any:
    """``X | None`` → ``X``; anything else unchanged."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _env_value(raw: str, kind: Any) -> Any:
    kind = _unwrap(kind)
    if typing.get_origin(kind) is list or kind is list:
        return [part.strip() for part in raw.split(",") if part.strip()]
    if kind is str:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_env(data: dict[str, Any], kind: Any, environ: Mapping[str, str], prefix: str = "SF") -> list[str]:
    """Overlay ``SF_*`` variables onto ``data`` (in place) for the fields of struct ``kind``.

    Returns the names of the variables that were applied.
    """
    applied: list[str] = []
    fields = _struct_fields(kind) or {}
    for name, ftype in fields.items():
        var = f"{prefix}_{name.upper()}"
        nested = _struct_fields(ftype)
        if nested is not None:
            section = data.get(name)
            if not isinstance(section, dict):
                section = {}
            applied_here = apply_env(section, ftype, environ, var)
            if applied_here:
                data[name] = section
                applied.extend(applied_here)
        elif var in environ:
            data[name] = _env_value(environ[var], ftype)
            applied.append(var)
    return applied


def load_config(
    kind: type[T],
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    env_prefix: str = "SF",
) -> T:
    """Read ``path`` (optional) into ``kind``, then apply ``SF_*`` overrides, then validate.

    Raises :class:`ConfigError` naming the file, line and field for unreadable files,
    invalid YAML, wrong types and invalid values (including those raised by the struct's
    ``__post_init__``).
    """
    source = str(path) if path is not None else "<environment>"
    data: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", source=source) from None
        except UnicodeDecodeError:
            raise ConfigError("config file is not UTF-8 text", source=source) from None
        data, lines = _load_yaml(text, source)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError("expected a mapping at the top level", source=source, line=lines.get("$"))
    env = os.environ if environ is None else environ
    applied = apply_env(data, kind, env, env_prefix)
    return convert(data, kind, source=source, lines=lines, env_applied=applied)


def convert(
    data: Any,
    kind: type[T],
    *,
    source: str = "<input>",
    lines: Mapping[str, int] | None = None,
    env_applied: list[str] | None = None,
) -> T:
    """Validate plain data into ``kind`` with file/line/field errors (see :func:`load_config`)."""
    try:
        return msgspec.convert(data, kind, strict=False, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_IN_MESSAGE.search(message)
        path = match.group(1) if match else "$"
        if match:
            message = message[: match.start()]
        # A __post_init__ error names its field ("interval: must be ..."): point at that field.
        named = _NAMED_FIELD.match(message)
        if named:
            path, message = f"{path}.{named.group(1)}", message[named.end() :]
        # An unknown key is reported at its own line, named as the field it would be.
        unknown = _UNKNOWN_FIELD.match(message)
        if unknown:
            path, message = (
                f"{path}.{unknown.group(1)}",
                "unknown field (a typo, or a setting of another version?)",
            )
        field = _field_path(path)
        env_hint = ""
        if env_applied:
            env_hint = f" (environment overrides applied: {', '.join(env_applied)})"
        raise ConfigError(
            message + env_hint, source=source, line=_line_for(path, lines or {}), field=field
        ) from None


def parse_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    """Parse YAML text; returns the data and a map of field path (``$.a[0].b``) → line."""
    return _load_yaml(text, source)


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of field ``path`` (``$.rules[2].for``), or of its nearest ancestor in the file."""
    return _line_for(path, lines)


#: Where ``make up`` writes the settings of the stack it runs (``SF_DATABASE_URL``,
#: ``SF_NATS_*``), relative to the repository; removed when it stops.
DEV_STACK_ENV = Path(".signalfire") / "env"


def find_dev_stack_env(start: Path | None = None) -> Path | None:
    """The ``.signalfire/env`` of the repository that ``start`` (default: the working
    directory) is in, if ``make up`` wrote one; ``None`` outside a repository running it."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / DEV_STACK_ENV
        if candidate.is_file():
            return candidate
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines (values shell-quoted, ``#`` comments), as ``make up`` writes them and
    ``set -a; . .signalfire/env`` reads them. Lines that are not an assignment are skipped."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return values
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            continue
        if key.isidentifier():
            values[key] = parts[0] if parts else ""
    return values


def tool_environ(environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], Path | None]:
    """The variables a command-line tool (``signalfire token``, ``db migrate``) reads its
    config from: ``environ`` (default ``os.environ``) over the ``SF_*`` settings of a ``make up``
    running for the repository it is run in, so ``signalfire token create`` inside the repo
    finds the dev stack's database. Services never read the file. Also returns the file when
    one was found (for messages saying where a setting came from)."""
    env = dict(os.environ if environ is None else environ)
    found = find_dev_stack_env()
    if found is None:
        return env, None
    stack = {k: v for k, v in read_env_file(found).items() if k.startswith("SF_")}
    return {**stack, **env}, found

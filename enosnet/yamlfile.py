"""Load YAML files into pydantic models with errors that name file, line and field.

>>> from pydantic import BaseModel
>>> class Point(BaseModel):
...     x: int
>>> load_model_text(Point, "x: 3", source="p.yaml").x
3
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from enosnet.errors import ConfigError

if TYPE_CHECKING:  # pydantic loads with the first model validated, not with every YAML read
    from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound="BaseModel")

Loc = tuple[str | int, ...]


YamlSource = str | Path | Mapping[str, Any]


def path_or_text(value: YamlSource, *, what: str) -> Path | str:
    """Where a document given as a path, YAML text or a mapping is: a file to read, or YAML text.

    A ``Path``, or a one-line string ending in ``.yaml``/``.yml``, is a file;
    another string is YAML text; a mapping is dumped to YAML so that it is
    validated, and its mistakes are reported, exactly like the same file.
    """
    if isinstance(value, Mapping):
        return str(yaml.safe_dump(dict(value), sort_keys=False))
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        one_line = "\n" not in value.strip()
        return Path(value.strip()) if one_line and value.strip().endswith((".yaml", ".yml")) else value
    raise ConfigError(f"a {what} is a path, YAML text or a mapping, not {type(value).__name__}")


def line_map(text: str) -> dict[Loc, int]:
    """Map each key path of a YAML document to its 1-based line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[Loc, int] = {}
    if root is not None:
        for loc, line in _walk(root, ()):
            lines[loc] = line
    return lines


def _walk(node: yaml.Node, loc: Loc) -> Iterator[tuple[Loc, int]]:
    yield loc, node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, str(key.value))
            yield child, key.start_mark.line + 1
            yield from ((sub, n) for sub, n in _walk(value, child) if sub != child)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _walk(item, (*loc, index))


def where(source: str, lines: dict[Loc, int], loc: Loc) -> str:
    """``file:line field.path`` for a location, using the nearest known line."""
    path = ".".join(str(p) for p in loc) or "(top level)"
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return f"{source}:{lines[loc[:n]]} {path}"
    return f"{source} {path}"


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None:
            problem += f" ({context} that starts at line {start.line + 1})"
        raise ConfigError(f"{at}: not valid YAML: {problem}") from None


def validation_problems(exc: ValidationError, data: Any, source: str,
                        lines: dict[Loc, int]) -> list[tuple[str, str]]:
    return [(where(source, lines, data_path(data, err["loc"])), _reason(err)) for err in exc.errors()]


def data_path(data: Any, loc: Loc) -> Loc:
    """``loc`` without the parts pydantic adds that are not in the data (union tags and member names)."""
    path: list[str | int] = []
    node = data
    for n, part in enumerate(loc):
        if _has(node, part):
            node = node[part]
        elif n < len(loc) - 1 and node is not None:
            continue  # a tag pydantic inserted; the field itself comes next
        else:
            node = None  # a missing field: keep the rest of the path as given
        path.append(part)
    return tuple(path)


def _has(node: Any, part: str | int) -> bool:
    if isinstance(node, dict):
        return part in node
    return isinstance(node, list) and isinstance(part, int) and part < len(node)


def _reason(err: Any) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")


def load_model_text(model: type[M], text: str, *, source: str) -> M:
    """Validate YAML ``text`` against the pydantic ``model``."""
    data = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, found {type(data).__name__}")
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(exc, data, source, line_map(text))
        raise ConfigError(f"{source}: invalid configuration", problems) from None


def load_model(model: type[M], path: str | Path) -> M:
    """Read and validate a YAML file; a missing file is a ``ConfigError`` too."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return load_model_text(model, text, source=str(path))

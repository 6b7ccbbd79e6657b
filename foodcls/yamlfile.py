"""YAML as foodcls reads it (configs, search spaces, rules): floats written `1e-3` read as floats, a key
named twice refused, an unreadable file or a syntax error one line naming the file and line, and the line
of every key (for error messages)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from foodcls.errors import ConfigError, first_line


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` and `5E+2` as floats (YAML 1.1 wants a dot)."""


_FLOAT = re.compile(
    r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|[-+]\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)
YamlLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+0123456789.":
    YamlLoader.yaml_implicit_resolvers[_first] = [
        (tag, rx) for tag, rx in YamlLoader.yaml_implicit_resolvers.get(_first, []) if tag != "tag:yaml.org,2002:float"
    ]
    YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, [_first])


def parse_yaml_value(text: str) -> Any:
    """Parse a scalar or flow value the way the config file would (`1e-3` → 0.001, `[64,64]` → list)."""
    return yaml.load(text, Loader=YamlLoader)


def key_lines_of(text: str) -> dict[str, int]:
    """Map dotted key paths to their 1-based line in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    seen: set[int] = set()

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode) and id(node) not in seen:
            seen.add(id(node))  # an alias may point back at a mapping that holds it
            for key_node, value_node in node.value:
                path = f"{prefix}{key_node.value}"
                lines[path] = key_node.start_mark.line + 1
                walk(value_node, path + ".")

    root = yaml.compose(text, Loader=YamlLoader)
    if root is not None:
        walk(root, "")
    return lines


def read_yaml(path: str | Path, what: str) -> tuple[Any, str]:
    """(the parsed YAML, its text) of a file we read (a config, a search space, rules): a missing or
    unreadable file and a syntax error are one line naming the file (and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read {what} ({error})") from None
    try:
        _refuse_duplicate_keys(path, yaml.compose(text, Loader=YamlLoader))
        return yaml.load(text, Loader=YamlLoader), text
    except RecursionError:  # an alias that contains itself
        raise ConfigError(f"{path}: a YAML alias refers to itself (recursive structure)") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or first_line(error)
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from None


def _refuse_duplicate_keys(path: Path, node: yaml.Node | None, seen: set[int] | None = None) -> None:
    """YAML keeps the last of two equal keys without a word; a key named twice is a mistake we name."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.value in keys:
                    raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: {key_node.value}: named twice")
                keys.add(key_node.value)
            _refuse_duplicate_keys(path, value_node, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item, seen)

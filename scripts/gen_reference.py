"""Write the generated reference pages from the code, so they cannot drift from it:

    docs/reference/cli.md          every command and option, from the Typer app (foodcls/cli)
    docs/reference/config-keys.md  every config key, its type, default and comment, from the pydantic models (foodcls/config.py)

    python scripts/gen_reference.py            (rewrite both)
    python scripts/gen_reference.py --check    (exit 1, naming the page, when a committed page is stale; the test suite runs it)
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGES = {"cli": REPO / "docs" / "reference" / "cli.md", "config": REPO / "docs" / "reference" / "config-keys.md"}


def _default(param: Any) -> str:
    default = param.default
    if default is None or default == () or param.required:
        return ""
    if isinstance(default, bool):
        return "" if not default else "`true`"
    if callable(default):
        return ""
    return f"`{default}`"


def cli_reference() -> str:
    import click
    import typer

    from foodcls.cli import app

    root = typer.main.get_command(app)
    lines = ["# Command-line reference", "", "Generated from the Typer app (`python scripts/gen_reference.py`); the hand-written",
             "overview is [Commands](commands.md).", ""]

    def walk(group: click.Group, prefix: list[str]) -> None:
        for name in sorted(group.commands, key=lambda n: list(group.commands).index(n)):
            command = group.commands[name]
            path = [*prefix, name]
            if isinstance(command, click.Group):
                walk(command, path)
                continue
            lines.extend([f"## `foodcls {' '.join(path)}`", "", inspect.cleandoc(command.help or ""), ""])
            # (typer ships its own copy of click's classes: the kind of a parameter is read, not its class)
            arguments = [p for p in command.params if p.param_type_name == "argument"]
            options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
            if arguments:
                lines.append("Arguments: " + ", ".join(f"`{a.human_readable_name}`" for a in arguments) + ".")
                lines.append("")
            if options:
                lines.extend(["| option | type | default | help |", "|---|---|---|---|"])
                for option in options:
                    names = ", ".join(f"`{o}`" for o in option.opts)
                    kind = "flag" if option.is_flag else option.type.name
                    help_text = " ".join((option.help or "").split()).replace("|", "\\|")
                    lines.append(f"| {names} | {kind} | {_default(option)} | {help_text} |")
                lines.append("")

    walk(root, [])
    return "\n".join(lines).rstrip() + "\n"


def _comments(model: type) -> dict[str, str]:
    """The `#` comments just above (or beside) each field of a pydantic model, from its source."""
    source = inspect.getsource(model)
    lines = source.splitlines()
    comments: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                found.insert(0, lines[i].strip().lstrip("# "))
                i -= 1
            beside = lines[node.lineno - 1].split("  # ", 1)
            if len(beside) == 2:
                found.append(beside[1].strip())
            comments[node.target.id] = " ".join(found)
    return comments


def _type_of(schema: dict[str, Any], definitions: dict[str, Any]) -> str:
    """A JSON schema (pydantic's) as a short type: `int ≥ 1`, `relu, sigmoid, tanh`, `list of str`, `… or null`."""
    if "$ref" in schema:
        return "section " + schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(dict.fromkeys(_type_of(s, definitions) for s in schema["anyOf"]))
    if "enum" in schema:
        return ", ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = {"integer": "int", "number": "float", "string": "str", "boolean": "bool", "null": "null", "object": "mapping"}.get(
        schema.get("type", ""), schema.get("type", "any"))
    if kind == "array":
        items = schema.get("items") or (schema.get("prefixItems") or [{}])[0]
        return f"list of {_type_of(items, definitions)}"
    bounds = [f"{symbol} {schema[key]}" for key, symbol in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                                                 ("exclusiveMaximum", "<")) if key in schema]
    return f"{kind} {', '.join(bounds)}".strip()


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if value is None:
        return "null"
    if hasattr(value, "model_dump"):
        return "{…}"
    return str(value)


def config_reference() -> str:
    from pydantic import BaseModel

    from foodcls.config import Config

    lines = ["# Config keys", "", "Generated from the pydantic models of `foodcls/config.py` (`python scripts/gen_reference.py`): every key,",
             "its type and default, and the comment beside it in the code. The hand-written guide is [Config](config.md).", "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    definitions = Config.model_json_schema().get("$defs", {})

    def walk(model: type[BaseModel], prefix: str) -> None:
        comments = _comments(model)
        properties = model.model_json_schema().get("properties", {})
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            annotation = field.annotation
            nested = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
            if nested is not None:
                walk(nested, key + ".")
                continue
            default = ("required" if field.is_required() else f"`{_shown(field.default)}`").replace("|", "\\|")
            meaning = (comments.get(name) or (field.description or "")).replace("|", "\\|")
            kind = _type_of(properties.get(name, {}), definitions).replace("|", "\\|")
            lines.append(f"| `{key}` | {kind} | {default} | {meaning} |")

    walk(Config, "")
    return "\n".join(lines).rstrip() + "\n"


def generated() -> dict[str, str]:
    return {"cli": cli_reference(), "config": config_reference()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for key, text in generated().items():
        page = PAGES[key]
        if args.check:
            if not page.is_file() or page.read_text(encoding="utf-8") != text:
                stale.append(str(page.relative_to(REPO)))
        else:
            page.parent.mkdir(parents=True, exist_ok=True)
            page.write_text(text, encoding="utf-8")
    if stale:
        sys.exit(f"stale generated reference: {', '.join(stale)} (python scripts/gen_reference.py rewrites them)")


if __name__ == "__main__":
    main()

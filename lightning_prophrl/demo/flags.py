"""Every field of a settings dataclass as a command-line flag, a YAML file of them, and the resolved settings printed.

``add_dataclass_flags`` gives each field ``name`` a flag ``--name-with-dashes`` typed from its annotation (``bool``:
``--x`` / ``--no-x``; ``list[int]``: one or more values; ``T | None``: a ``T``), with the comment block above the field
in the class's source as its help. ``config_file_values`` reads ``--config FILE`` (YAML: field names as keys) and
refuses a key that is not a field, naming the file and the key. The order is: the preset's defaults, then the file,
then the flags.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any


def field_comments(cls: type) -> dict[str, str]:
    """``{field: the comment lines right above it in the class body, joined}`` (fields without one are absent)."""
    lines = inspect.getsource(cls).splitlines()
    body = ast.parse("\n".join(lines)).body[0]
    out = {}
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            comment, i = [], node.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                comment.insert(0, lines[i].strip().lstrip("#").strip())
                i -= 1
            if comment:
                out[node.target.id] = " ".join(comment)
    return out


def _flag_kind(annotation: Any) -> dict[str, Any]:
    """argparse keywords of a field's annotation."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return {"nargs": "+", "type": item}
    return {"type": annotation}


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls: type, extra: dict[str, dict[str, Any]] | None = None
) -> list[str]:
    """Add a ``--field-name`` flag (default None: not given) for every field of the dataclass ``cls``, with ``extra``
    argparse keywords per field (e.g. ``choices``); returns the field names."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    names = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = comments.get(f.name, f.name.replace("_", " "))
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            help=f"{help_text} (default: {default})".replace("%", "%%"),
                            **{**_flag_kind(hints[f.name]), **(extra or {}).get(f.name, {})})  # fmt: skip
        names.append(f.name)
    return names


def config_file_values(path: str | Path, cls: type) -> dict[str, Any]:
    """The field values a ``--config`` YAML file sets.

    Raises:
        FileNotFoundError: naming ``--config`` when the file is missing.
        ValueError: naming the file and the key when a key is not a field of ``cls`` or the file is not a mapping.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown setting {unknown[0]!r}; settings: {sorted(known)}")
    return values

"""Render `schemas.frames` as the Python client's own module, `clients/python/jetsock/wire.py`.

The client ships without the server's packages, so it carries the frames it encodes and
decodes itself; this module writes them from `schemas.frames` by introspection (msgspec's
struct fields and config, the field docstrings from the source), and `schemas.clientgen`
checks the copy is current. Every struct of `ClientFrame` and `ServerFrame` is rendered
with the same tag, fields, wire names, types, constraints and defaults, with two
deliberate differences, both below:

- `Error.code` is `jetsock.rules.ServerErrorCode` (ENUMS), the Literal that
  `schemas.clientgen` writes from the same `schemas.codes.ErrorCode`, so the client sees
  plain strings;
- `PresenceMember.info` (OVERRIDES) is decoded, once, as the JSON object it is: the edge
  splices it as `msgspec.Raw`, and the application wants a dict.

A type this renderer does not know is an error, not a guess.
"""

from __future__ import annotations

import ast
import enum
import inspect
import itertools
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from schemas import frames
from schemas.codes import ErrorCode

GENERATOR = "python -m schemas.clientgen --write"


@dataclass(frozen=True, slots=True)
class Override:
    annotation: str
    default: str
    doc: str


OVERRIDES: dict[tuple[type[msgspec.Struct], str], Override] = {
    (frames.PresenceMember, "info"): Override(
        "dict[str, Any] | None",
        "None",
        "The token's `info` claim, decoded once into the JSON object it is (the edge splices it\n"
        "    as `msgspec.Raw`); None when the token has none.",
    ),
}
"""Fields the client decodes differently from how the edge encodes them: (annotation, default, doc)."""

ENUMS: dict[type[enum.Enum], str] = {ErrorCode: "ServerErrorCode"}
"""Enums of schemas, as the Literal of their values that `jetsock.rules` defines."""

_PLAIN = {int: "int", str: "str", float: "float", bool: "bool", types.NoneType: "None", Any: "Any"}
_MSGSPEC = {msgspec.Raw: "msgspec.Raw", msgspec.UnsetType: "msgspec.UnsetType"}
_CONFIG_DEFAULTS = {
    name: getattr(msgspec.Struct.__struct_config__, name)
    for name in dir(msgspec.Struct.__struct_config__)
    if not name.startswith("_")
}
_RENDERED_OPTIONS = ("tag_field", "tag", "omit_defaults", "forbid_unknown_fields", "frozen", "array_like")
"""Struct options rendered as class keywords, in this order; any other one set is an error."""


@dataclass
class _Module:
    """The names a rendering imports."""

    typing_names: set[str] = field(default_factory=set)
    rules_names: set[str] = field(default_factory=set)

    def type_source(self, tp: Any) -> str:
        if tp == frames.Ref:
            return "Ref"
        if tp in _PLAIN:
            if tp is Any:
                self.typing_names.add("Any")
            return _PLAIN[tp]
        if tp in _MSGSPEC:
            return _MSGSPEC[tp]
        if isinstance(tp, type) and tp in ENUMS:
            self.rules_names.add(ENUMS[tp])
            return ENUMS[tp]
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            if tp.__module__ != frames.__name__:
                raise TypeError(f"{tp!r} is not a struct of schemas.frames")
            return tp.__name__
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            return " | ".join(self.type_source(arg) for arg in args)
        if origin is typing.Annotated:
            metas = tp.__metadata__
            if not all(isinstance(meta, msgspec.Meta) for meta in metas):
                raise TypeError(f"only msgspec.Meta is rendered inside Annotated: {tp!r}")
            self.typing_names.add("Annotated")
            rendered = [repr(meta) for meta in metas]
            if not all(text.startswith("msgspec.Meta(") for text in rendered):
                raise TypeError(f"msgspec.Meta's repr changed: {rendered}")
            return f"Annotated[{self.type_source(args[0])}, {', '.join(rendered)}]"
        if origin in (list, dict, tuple, frozenset, set):
            return f"{origin.__name__}[{', '.join(self.type_source(arg) for arg in args)}]"
        raise TypeError(f"no rendering for {tp!r}")


def _default_source(value: Any) -> str | None:
    if value is msgspec.NODEFAULT:
        return None
    if value is msgspec.UNSET:
        return "msgspec.UNSET"
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value) if not isinstance(value, str) else json.dumps(value)
    raise TypeError(f"no rendering for the default {value!r}")


def _docs_under(body: list[ast.stmt]) -> dict[str, str]:
    """name -> the docstring under the statement that assigns it."""
    found: dict[str, str] = {}
    for before, after in itertools.pairwise(body):
        targets = before.targets if isinstance(before, ast.Assign) else [getattr(before, "target", None)]
        if (
            len(targets) == 1
            and isinstance(targets[0], ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            found[targets[0].id] = after.value.value
    return found


def _source_docs() -> dict[str, dict[str, str]]:
    """What introspection cannot see: the docstrings under the fields of each class of
    schemas/frames.py (by class name), and under its module-level names (key "")."""
    tree = ast.parse(Path(inspect.getfile(frames)).read_text())
    docs = {node.name: _docs_under(node.body) for node in tree.body if isinstance(node, ast.ClassDef)}
    return docs | {"": _docs_under(tree.body)}


def _docstring(text: str, indent: str) -> str:
    if '"""' in text or "\\" in text:
        raise ValueError(f"a docstring this renderer would have to escape: {text!r}")
    return f'{indent}"""{text}"""\n'


def _class_source(cls: type[msgspec.Struct], module: _Module, docs: dict[str, str]) -> str:
    config = cls.__struct_config__
    unrendered = [n for n, v in _CONFIG_DEFAULTS.items() if n not in _RENDERED_OPTIONS and getattr(config, n) != v]
    if unrendered:
        raise TypeError(f"{cls.__name__}: no rendering for the struct options {unrendered}")
    options = [
        f"{name}={json.dumps(value) if isinstance(value, str) else repr(value)}"
        for name in _RENDERED_OPTIONS
        if (value := getattr(config, name)) != _CONFIG_DEFAULTS[name]
    ]
    head = f"class {cls.__name__}({', '.join(['msgspec.Struct', *options])}):\n"
    body = _docstring(cls.__doc__, "    ") + "\n" if cls.__doc__ else ""
    defaulted = False
    for info in msgspec.structs.fields(cls):
        if info.default_factory is not msgspec.NODEFAULT:
            raise TypeError(f"{cls.__name__}.{info.name}: no rendering for default_factory")
        override = OVERRIDES.get((cls, info.name))
        default: str | None
        doc: str | None
        if override is not None:
            module.typing_names.update(n for n in ("Any",) if n in override.annotation)
            annotation, default, doc = override.annotation, override.default, override.doc
        else:
            annotation, default = module.type_source(info.type), _default_source(info.default)
            doc = docs.get(info.name)
        if default is None and defaulted:
            raise TypeError(f"{cls.__name__}.{info.name}: a required field after a default one (kw_only)")
        defaulted = defaulted or default is not None
        if info.encode_name != info.name:
            args = ([f"default={default}"] if default is not None else []) + [f"name={json.dumps(info.encode_name)}"]
            default = f"msgspec.field({', '.join(args)})"
        body += f"    {info.name}: {annotation}" + (f" = {default}" if default is not None else "") + "\n"
        if doc:
            body += _docstring(doc, "    ")
    return head + (body or "    pass\n")


def _nested(cls: type[msgspec.Struct]) -> list[type[msgspec.Struct]]:
    """The structs a struct's fields refer to (OVERRIDES aside), in field order."""
    found: list[type[msgspec.Struct]] = []

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            found.append(tp)
        for arg in typing.get_args(tp):
            walk(arg)

    for info in msgspec.structs.fields(cls):
        if (cls, info.name) not in OVERRIDES:
            walk(info.type)
    return found


def _in_order(unions: list[Any]) -> list[type[msgspec.Struct]]:
    """Every struct of the unions, each after the structs its fields hold."""
    ordered: list[type[msgspec.Struct]] = []

    def visit(cls: type[msgspec.Struct]) -> None:
        if cls not in ordered:
            for inner in _nested(cls):
                visit(inner)
            ordered.append(cls)

    for union in unions:
        for member in typing.get_args(union):
            visit(member)
    return ordered


def _union_source(name: str, union: Any, module: _Module) -> str:
    members = " | ".join(module.type_source(member) for member in typing.get_args(union))
    line = f"{name} = {members}\n"
    return line if len(line) <= 121 else f"{name} = (\n    {members}\n)\n"


def wire_module() -> str:
    """The whole text of clients/python/jetsock/wire.py."""
    module = _Module()
    docs = _source_docs()
    classes = [
        _class_source(cls, module, docs.get(cls.__name__, {}))
        for cls in _in_order([frames.ClientFrame, frames.ServerFrame])
    ]
    unions = [
        _union_source(name, union, module)
        for name, union in (("ClientFrame", frames.ClientFrame), ("ServerFrame", frames.ServerFrame))
    ]
    imports = "from __future__ import annotations\n\n"
    if module.typing_names:
        imports += f"from typing import {', '.join(sorted(module.typing_names))}\n\n"
    imports += "import msgspec\n"
    if module.rules_names:
        imports += f"\nfrom jetsock.rules import {', '.join(sorted(module.rules_names))}\n"
    ref = " | ".join(_PLAIN[arg] for arg in typing.get_args(frames.Ref))
    return (
        f'''"""The frames of schemas/frames.py, for the Python client (PROTOCOL.md section 2).

Generated by `{GENERATOR}` (schemas/clientwire.py): do not edit.
The same tags, fields, wire names, constraints and defaults as the edge's, except
`Error.code`, the Literal `jetsock.rules.ServerErrorCode`, and `PresenceMember.info`,
decoded as a dict.
"""

{imports}
Ref = {ref}
{_docstring(docs[""]["Ref"], "")}

'''
        + "\n\n".join(classes)
        + "\n\n"
        + "\n".join(unions)
    )

"""Operator documentation straight from the registry (so it cannot drift from the code).

``python -m pipelines.docs`` rewrites the README's operator reference between its
``operators:begin`` and ``operators:end`` markers; a test checks that it is current.
"""

from __future__ import annotations

import inspect
import textwrap
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from operators.base import Operator, lookup, registered

_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _type_name(annotation: Any) -> str:
    """A parameter's type as a user writes its value: `'error' | 'overwrite'`, `int > 0`,
    `float | None`, `list[str]`, `mapping (column, values, format)`; never Python's
    spelling of it (`Optional[Literal['error', ...]]`, `Annotated[int, Gt(gt=0)]`, a
    class's dotted path)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "None"
    if annotation is Any:
        return "any"
    if origin is Literal:
        return " | ".join(repr(value) for value in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(arg) for arg in args)
    if origin is Annotated:
        bounds = [f"{sign} {getattr(rule, name)}" for rule in args[1:]
                  for name, sign in _BOUNDS if getattr(rule, name, None) is not None]
        return " ".join([_type_name(args[0]), *bounds])
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(map(_type_name, args))}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"mapping ({', '.join(annotation.model_fields)})"
    return getattr(annotation, "__name__", str(annotation))


def parameters(cls: type[Operator]) -> list[dict[str, Any]]:
    """Name, type, default (or required) and description of each parameter."""
    out = []
    for name, info in cls.Params.model_fields.items():
        if info.default is not PydanticUndefined:
            default = repr(info.default)
        elif info.default_factory is not None:
            default = repr(info.default_factory())
        else:
            default = None
        out.append({"name": info.alias or name, "type": _type_name(info.annotation),
                    "default": default, "description": info.description or ""})
    return out


def summary(cls: type[Operator]) -> str:
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def example(cls: type[Operator]) -> str:
    doc = inspect.getdoc(cls) or ""
    if "```yaml" not in doc:
        return ""
    return doc.split("```yaml", 1)[1].split("```", 1)[0].strip("\n")


def operator_summaries() -> list[str]:
    ops = registered()
    width = max(len(n) for n in ops)
    lines = []
    for name, cls in ops.items():
        params = ", ".join(p["name"] + ("" if p["default"] is not None else "*")
                           for p in parameters(cls))
        lines.append(f"{name:<{width}}  {cls.kind:<9}  {summary(cls)}")
        if params:
            lines.append(f"{'':<{width}}  {'':<9}  params: {params}")
    lines.append("(* required; `sluice ops NAME` for details)")
    return lines


def describe_operator(name: str) -> str:
    cls = lookup(name)
    lines = [f"{cls.name} ({cls.kind}): {summary(cls)}", "", "parameters:"]
    for p in parameters(cls):
        req = "required" if p["default"] is None else f"default {p['default']}"
        lines.append(f"  {p['name']}: {p['type']} ({req})")
        if p["description"]:
            lines.append(f"      {p['description']}")
    ex = example(cls)
    if ex:
        lines += ["", "example:", textwrap.indent(ex, "  ")]
    return "\n".join(lines)


def markdown() -> str:
    """The operator reference section of the README."""
    parts = []
    for name, cls in registered().items():
        parts.append(f"### `{name}` ({cls.kind})\n\n{summary(cls)}\n")
        rows = ["| parameter | type | default | what |", "|---|---|---|---|"]
        for p in parameters(cls):
            default = "required" if p["default"] is None else f"`{p['default']}`"
            # a table cell ends at a pipe, in a code span too (k-means||): escaped
            ptype, default, what = (text.replace("|", "\\|")
                                    for text in (p["type"], default, p["description"]))
            rows.append(f"| `{p['name']}` | {ptype} | {default} | {what} |")
        parts.append("\n".join(rows) + "\n")
        ex = example(cls)
        if ex:
            parts.append(f"```yaml\n{ex}\n```\n")
    return "\n".join(parts)


BEGIN = "<!-- operators:begin"
END = "<!-- operators:end -->"


def readme_with_reference(text: str) -> str:
    """``text`` (the README) with the generated reference between the markers."""
    head, _, rest = text.partition(BEGIN)
    marker_line, _, rest = rest.partition("\n")
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}{marker_line}\n\n{markdown()}\n{END}{tail}"


if __name__ == "__main__":
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent / "README.md"
    readme.write_text(readme_with_reference(readme.read_text()))

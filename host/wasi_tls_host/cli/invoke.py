"""``run --invoke 'name(args)'``: WAVE-style literals in, WAVE-like text out."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..runtime.values import Err, Ok, Some, Variant
from .errors import UsageError

if TYPE_CHECKING:
    import ast


def parse_invoke(text: str) -> tuple[str, list[Any]]:
    """Parse ``name(arg, ...)``; arguments are WAVE-style literals: numbers, "strings",
    true/false, lists [..], tuples (..), none/some(x), ok(x)/err(x)."""
    import ast  # only for --invoke (start-up time)

    # Export names are kebab-case (not Python identifiers): split them off before parsing.
    name, paren, rest = text.strip().partition("(")
    name = name.strip()
    if not name or (paren and not rest.rstrip().endswith(")")):
        raise UsageError(f"--invoke wants name(args...), got {text!r}")
    if not paren or not rest[:-1].strip():
        return name, []
    try:
        tree = ast.parse(f"({rest[:-1]},)", mode="eval").body
    except SyntaxError as e:
        raise UsageError(f"--invoke: cannot parse the arguments of {text!r}: {e.msg}") from None
    assert isinstance(tree, ast.Tuple)
    return name, [_literal(a) for a in tree.elts]


def _literal(node: ast.AST) -> Any:
    import ast  # (loaded by parse_invoke)

    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.Name):
        # Bare ok/err are results without payload (as format_value writes them), not
        # variant cases: a Variant("err") would be lowered as the ok case.
        words = {"true": True, "false": False, "none": None, "ok": Ok(None), "err": Err(None)}
        if node.id in words:
            return words[node.id]
        return Variant(node.id)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) <= 1:
        payload = _literal(node.args[0]) if node.args else None
        wrap = {"some": Some, "ok": Ok, "err": Err}.get(node.func.id)
        return wrap(payload) if wrap else Variant(node.func.id, payload)
    raise UsageError(f"--invoke: unsupported argument {ast.unparse(node)!r}")


def format_value(value: Any) -> str:
    """WAVE-like rendering of a result for people."""
    if value is None:
        return "none"
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # astral characters as themselves, not surrogate pairs
    if isinstance(value, (bytes, bytearray)):
        return "[" + ", ".join(str(b) for b in value) + "]"
    if isinstance(value, (Ok, Err, Some)):
        inner = "" if value.value is None else f"({format_value(value.value)})"
        return f"{type(value).__name__.lower()}{inner}"
    if isinstance(value, Variant):
        return value.tag if value.payload is None else f"{value.tag}({format_value(value.payload)})"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k.replace('_', '-')}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(value)) + "}"
    return str(value)

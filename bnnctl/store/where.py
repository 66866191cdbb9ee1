"""Safe ``--where`` row filters: pandas-query syntax over manifest columns, nothing else.

An expression is parsed with :mod:`ast` and every node is checked against the grammar below;
anything else raises :class:`~bnnctl.errors.UsageError` before evaluation. The checked tree is
then evaluated here (a column name becomes ``df[name]``), not handed to ``DataFrame.query``: what
is checked is exactly what runs, with no second parser and no Python scope to reach.

Grammar (meanings as in ``df.query``):

- column names: ``seed``, ``test_acc``, ``kind`` ... (other names are refused);
- literals: strings, ints, floats, ``True``, ``False``, ``None``; lists, tuples or sets of them;
- comparisons ``== != < <= > >=``, chained too (``1 < seed < 5``); ``in`` and ``not in`` mean
  ``isin`` (so ``seed not in [1]`` keeps null seeds); as in pandas, ``col == [..]`` and
  ``col == 'text'`` mean ``isin`` too (so ``parent_id != 'x'`` keeps null parents);
- ``and``, ``or``, ``not`` act row by row, like ``&``, ``|``, ``~``;
- arithmetic on numbers: ``+ - * / // % **`` (exponents within -64..64), unary ``-`` ``+``;
- column methods with literal arguments: ``col.isna()``, ``col.notna()``,
  ``col.between(lo, hi, inclusive=...)``, ``col.str.startswith(s, na=...)``,
  ``col.str.endswith(s, na=...)``, ``col.str.contains(s, case=..., regex=..., na=...)``.

A row whose predicate is null (``seed < 5`` for a null seed) is not selected. Refused: ``@name``
variables, backtick names, other calls and attributes, subscripts, lambdas, comprehensions,
f-strings, ``:=``, ``*x``, ``is``, and expressions over 10,000 characters.

Examples::

    test_acc > 0.97 and seed < 100
    kind == 'train' and method in ['adam', 'sgd']
    model_id.str.startswith('digits.') and parent_id.isna()
    test_acc.between(0.5, 0.9) | (seed % 2 == 0)
"""

from __future__ import annotations

import ast
import functools
import io
import operator as op
import tokenize
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from bnnctl.errors import UsageError, describe, one_line

MAX_LEN = 10_000
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: op.add, ast.Sub: op.sub, ast.Mult: op.mul, ast.Div: op.truediv,
    ast.FloorDiv: op.floordiv, ast.Mod: op.mod, ast.Pow: op.pow,
}  # fmt: skip
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: op.eq, ast.NotEq: op.ne, ast.Lt: op.lt, ast.LtE: op.le, ast.Gt: op.gt, ast.GtE: op.ge,
    ast.In: lambda a, b: _isin(a, b), ast.NotIn: lambda a, b: ~_isin(a, b),
}  # fmt: skip
_LOGIC = {ast.BitAnd: op.and_, ast.BitOr: op.or_, ast.And: op.and_, ast.Or: op.or_}
_REFUSED_OPS = {ast.Is: "is", ast.IsNot: "is not", ast.MatMult: "@", ast.LShift: "<<",
                ast.RShift: ">>", ast.BitXor: "^"}  # fmt: skip
# method -> (called as col.str.m?, number of positional args, allowed keywords)
_METHODS = {
    "isna": (False, 0, set()), "notna": (False, 0, set()), "between": (False, 2, {"inclusive"}),
    "startswith": (True, 1, {"na"}), "endswith": (True, 1, {"na"}),
    "contains": (True, 1, {"na", "case", "regex"}),
}  # fmt: skip
_LITERALS = (str, int, float, type(None))  # bool is an int
_WHAT = {ast.Lambda: "lambda", ast.JoinedStr: "f-string", ast.NamedExpr: "':=' expression",
         ast.Starred: "starred expression", ast.Subscript: "subscript", ast.Dict: "dict",
         ast.IfExp: "conditional expression", ast.ListComp: "comprehension",
         ast.SetComp: "comprehension", ast.GeneratorExp: "comprehension"}  # fmt: skip


def _fail(msg: str) -> UsageError:
    """A refusal naming the ``where`` parameter (the CLI shows the flag that gave it)."""
    return UsageError(" ".join(msg.splitlines()), "where")


def _src(expr: str, node: ast.AST) -> str:
    text = one_line(ast.get_source_segment(expr, node) or ast.unparse(node))
    return text if len(text) <= 60 else text[:57] + "..."


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        node = node.operand
    return isinstance(node, ast.Constant) and isinstance(node.value, _LITERALS)


def _method_column(f: ast.expr) -> ast.Name | None:
    """The column of an allowed ``col.m`` or ``col.str.m``; None for anything else."""
    if not isinstance(f, ast.Attribute) or f.attr not in _METHODS:
        return None
    v = f.value
    if _METHODS[f.attr][0]:  # a string method
        if not (isinstance(v, ast.Attribute) and v.attr == "str"):
            return None
        v = v.value
    return v if isinstance(v, ast.Name) else None


def check_where(expr: str, columns: Iterable[str] | None = None) -> None:
    """Raise UsageError unless ``expr`` is in the ``--where`` grammar (names must be columns)."""
    if not isinstance(expr, str) or len(expr) > MAX_LEN:
        raise _fail(f"`where`: expected an expression of at most {MAX_LEN} characters")
    try:
        for tok in tokenize.generate_tokens(io.StringIO(expr).readline):
            if tok.string == "@":
                raise _fail("`where`: '@' local variables are not allowed")
            if tok.string == "`":
                raise _fail("`where`: backtick-quoted names are not allowed")
    except (tokenize.TokenError, SyntaxError):
        pass  # ast.parse reports it
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        offset = getattr(e, "offset", None)
        at = f" at column {offset}" if offset else ""
        raise _fail(f"`where`: syntax error{at}: {getattr(e, 'msg', e)}") from None
    cols = None if columns is None else {str(c) for c in columns}
    try:
        _check(tree.body, expr, cols)
    except RecursionError:
        raise _fail("`where`: expression is too deeply nested") from None


def _check(node: ast.AST, expr: str, cols: set[str] | None) -> None:
    children: list[ast.AST] = []
    if isinstance(node, ast.Name):
        if node.id.startswith("__") or (cols is not None and node.id not in cols):
            raise _fail(f"`where`: unknown column {node.id!r}")
    elif isinstance(node, ast.Constant):
        if not isinstance(node.value, _LITERALS):
            raise _fail(f"`where`: literal {_src(expr, node)!r} is not allowed")
    elif isinstance(node, ast.List | ast.Tuple | ast.Set):
        for elt in node.elts:
            if not _is_literal(elt):
                raise _fail(f"`where`: list item {_src(expr, elt)!r} is not a literal")
    elif isinstance(node, ast.UnaryOp | ast.BinOp | ast.BoolOp | ast.Compare):
        for o in getattr(node, "ops", [getattr(node, "op", None)]):
            if type(o) in _REFUSED_OPS:
                raise _fail(f"`where`: operator {_REFUSED_OPS[type(o)]!r} is not allowed")
        children = [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.expr)]
    elif isinstance(node, ast.Call):
        col, name = _method_column(node.func), _src(expr, node.func)
        if col is None:
            raise _fail(f"`where`: function call {name!r} is not allowed")
        _, nargs, keywords = _METHODS[node.func.attr]  # type: ignore[attr-defined]
        if len(node.args) != nargs:
            raise _fail(f"`where`: {name}() takes {nargs} positional argument(s)")
        for k in node.keywords:
            if k.arg not in keywords:
                kw = k.arg or "**"
                raise _fail(f"`where`: keyword argument {kw!r} of {name}() is not allowed")
        kwargs = [k.value for k in node.keywords]
        for a in [*node.args, *kwargs]:  # a tuple only as the one positional argument
            if not (_is_literal(a) or (isinstance(a, ast.Tuple) and a in node.args)):
                raise _fail(f"`where`: argument {_src(expr, a)!r} of {name}() must be a literal")
        children = [col, *node.args, *kwargs]
    elif isinstance(node, ast.Attribute):
        raise _fail(f"`where`: attribute {node.attr!r} is not allowed")
    else:
        what = _WHAT.get(type(node), f"{type(node).__name__} expression")
        raise _fail(f"`where`: {what} {_src(expr, node)!r} is not allowed")
    for child in children:
        _check(child, expr, cols)


def _isin(a: Any, b: Any) -> pd.Series:
    if not isinstance(a, pd.Series):
        raise TypeError("the left side of 'in' must be a column expression")
    return a.isin(b if isinstance(b, pd.Series) else list(b))


def _as_isin(a: Any, b: Any) -> bool:
    """df.query rewrites ``col == [..]`` and ``col == 'text'`` as isin (``!=`` keeps nulls)."""
    return any(isinstance(x, pd.Series) and isinstance(y, list | str) for x, y in [(a, b), (b, a)])


def _numbers(*vals: Any) -> None:
    """Arithmetic only on numbers, so that no string or list repetition can exhaust memory."""
    for v in vals:
        series = isinstance(v, pd.Series) and pd.api.types.is_numeric_dtype(v)
        if not (series or isinstance(v, int | float)):
            raise TypeError(f"arithmetic needs numbers, not {type(v).__name__}")


def _eval(node: ast.AST, df: pd.DataFrame) -> Any:
    """Value of a node that check_where accepted."""
    if isinstance(node, ast.Name):
        return df[node.id]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return [_eval(e, df) for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, df)
        if isinstance(node.op, ast.Not | ast.Invert):  # row-wise, like ~
            return ~v if isinstance(v, pd.Series) or not isinstance(v, bool) else not v
        _numbers(v)
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BoolOp):  # row-wise, like & and |
        return functools.reduce(_LOGIC[type(node.op)], [_eval(v, df) for v in node.values])
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, df), _eval(node.right, df)
        if type(node.op) in _LOGIC:
            return _LOGIC[type(node.op)](a, b)
        _numbers(a, b)
        if isinstance(node.op, ast.Pow) and not isinstance(b, pd.Series) and abs(b) > 64:
            raise ValueError("exponents are limited to -64..64")
        out = _BINOPS[type(node.op)](a, b)
        if isinstance(out, int) and abs(out) > 2**64:
            raise OverflowError("integer out of range")
        return out
    if isinstance(node, ast.Compare):
        out, left = None, _eval(node.left, df)
        for o, c in zip(node.ops, node.comparators, strict=True):
            right, fn = _eval(c, df), _CMPOPS[type(o)]
            a, b = left, right
            if isinstance(o, ast.Eq | ast.NotEq) and _as_isin(a, b):
                fn = _CMPOPS[ast.In if isinstance(o, ast.Eq) else ast.NotIn]
                a, b = (a, b) if isinstance(a, pd.Series) else (b, a)
                b = b if isinstance(b, list) else [b]
            out, left = (fn(a, b) if out is None else out & fn(a, b)), right
        return out
    assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    col, name = df[_method_column(node.func).id], node.func.attr  # type: ignore[union-attr]
    args = [_eval(a, df) for a in node.args]
    kwargs = {k.arg: _eval(k.value, df) for k in node.keywords if k.arg}
    if _METHODS[name][0]:
        col, args = col.str, [tuple(a) if isinstance(a, list) else a for a in args]
    out = getattr(col, name)(*args, **kwargs)
    return out.astype("boolean") if out.dtype == object else out  # str methods on object dtype


def columns_of(expr: str | None) -> set[str]:
    """The column names an expression reads (after :func:`check_where` accepts it)."""
    if not expr:
        return set()
    check_where(expr)
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}


def select(df: pd.DataFrame, where: str | None) -> pd.DataFrame:
    """Rows of ``df`` matching the ``--where`` expression ``where`` (all rows when empty)."""
    if not where:
        return df
    check_where(where, df.columns)
    try:
        mask = _eval(ast.parse(where, mode="eval").body, df)
    except Exception as e:  # pandas raises many types for a bad expression
        raise _fail(f"bad `where` expression {where!r}: {describe(e)}") from None
    ok = isinstance(mask, pd.Series) and (
        pd.api.types.is_bool_dtype(mask)
        or pd.api.types.infer_dtype(mask, skipna=True) in ("boolean", "empty")
    )
    if not ok:
        raise _fail(f"`where` {where!r} is not a row filter")
    return df.loc[mask.astype("boolean").fillna(False).to_numpy(dtype=bool)]


# --- pushdown ------------------------------------------------------------------------------

_SQL_CMP = {ast.Eq: "=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_FLIP = {ast.Eq: ast.Eq, ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE}
_INT64 = (-(2**63), 2**63 - 1)
_NONE = object()  # what _literal gives for a node that is no literal


def pushdown(expr: str | None, kinds: dict[str, str]) -> str | None:
    """A SQL predicate that every row ``expr`` selects also satisfies, for the table reader
    to skip files and rows with (None when there is none to give).

    It is the conjunction of the terms of ``expr``'s top-level ``and`` that compare a
    column to a literal, where SQL and pandas agree on every row that passes: ``<``,
    ``<=``, ``>``, ``>=``, ``==`` on int or float columns (``kinds[name]`` is ``"int"``,
    ``"float"`` or ``"string"``), ``==`` and ``in`` on string columns. A null fails such
    a term in both; ``!=`` and ``not`` are never pushed (NaN != x is true in pandas, null
    in SQL). The full expression is still evaluated on what the reader returns, so the
    result is exactly :func:`select`'s; this only makes it cheaper."""
    if not expr:
        return None
    check_where(expr)
    terms: list[str] = []
    for node in _conjuncts(ast.parse(expr, mode="eval").body):
        if isinstance(node, ast.Compare):
            left = node.left
            for o, right in zip(node.ops, node.comparators, strict=True):
                term = _sql_term(left, o, right, kinds)
                if term is not None:
                    terms.append(term)
                left = right
    return " AND ".join(terms) or None


def _conjuncts(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.And):
        return [t for v in node.values for t in _conjuncts(v)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitAnd):
        return [*_conjuncts(node.left), *_conjuncts(node.right)]
    return [node]


def _literal(node: ast.expr) -> Any:
    """The value of a literal number or string node (``_NONE`` for anything else)."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
        if not (isinstance(node, ast.Constant) and type(node.value) in (int, float)):
            return _NONE
    if not isinstance(node, ast.Constant):
        return _NONE
    value = node.value
    if isinstance(value, str):
        return value
    return sign * value if isinstance(value, int | float) and not isinstance(value, bool) else _NONE


def _sql_literal(value: Any, kind: str) -> str | None:
    """``value`` as a SQL literal for a column of ``kind``, when the comparison means the
    same in SQL and pandas (no bools, no ints beyond int64, no non-finite floats, plain
    printable strings)."""
    if kind == "string":
        if not isinstance(value, str) or not value.isprintable() or "\\" in value:
            return None
        return "'" + value.replace("'", "''") + "'"
    if type(value) is int and (kind == "int" or abs(value) <= 2**53):
        return str(value) if _INT64[0] <= value <= _INT64[1] else None
    if type(value) is float and kind == "float" and value == value and abs(value) != float("inf"):
        return repr(value)
    return None


def _sql_term(left: ast.expr, o: ast.cmpop, right: ast.expr, kinds: dict[str, str]) -> str | None:
    if isinstance(right, ast.Name) and not isinstance(left, ast.Name):
        if type(o) not in _FLIP:
            return None
        left, right, o = right, left, _FLIP[type(o)]()
    if not isinstance(left, ast.Name) or left.id not in kinds:
        return None
    col, kind = f'"{left.id}"', kinds[left.id]
    if isinstance(o, ast.In) and kind == "string" and isinstance(right, ast.List | ast.Tuple):
        items = [_sql_literal(_literal(e), kind) for e in right.elts]
        if not items or None in items:
            return None
        return f"{col} IN ({', '.join(str(i) for i in items)})"
    if type(o) not in _SQL_CMP or (kind == "string" and not isinstance(o, ast.Eq)):
        return None
    lit = _sql_literal(_literal(right), kind)
    return None if lit is None else f"{col} {_SQL_CMP[type(o)]} {lit}"

"""The --where grammar: documented examples, refused injections, and a property test."""

from __future__ import annotations

import contextlib
import operator
import os  # noqa: F401  (the unsafe control query reaches it through pandas' '@' lookup)

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import bnnctl.store.where
from bnnctl.errors import UsageError
from bnnctl.store.where import check_where, select

STRING_DTYPES = [pd.StringDtype(), "str", object]
STR_COLS = ["model_id", "kind", "method", "population", "parent_id"]


def make_df(string_dtype=None) -> pd.DataFrame:
    """A small manifest: nullable Int64 seed, float with NaN, nullable booleans, null parents."""
    s = string_dtype or pd.StringDtype()

    def words(text: str) -> pd.api.extensions.ExtensionArray:
        return pd.array(text.split(), dtype=s)

    out = pd.DataFrame(
        {
            "model_id": words(
                "digits.0 digits.1 digits.2 digits.3 mnist.0 digits.c0 digits.s0 digits.s1 imp.0 "
                "digits.40"
            ),
            "kind": words("train train train train train canonical sample sample import train"),
            "method": words("adam adam sgd adam sgd permsort sgld sgld import adam"),
            "population": pd.array(["digits"] * 4 + ["mnist"] + ["digits"] * 5, dtype=s),
            "seed": pd.array([0, 1, 2, 3, 4, 0, 5, 6, None, 140], dtype=pd.Int64Dtype()),
            "test_acc": [0.98, 0.5, np.nan, 0.975, 0.7, 0.98, 0.9, 0.96, 0.3, 0.99],
            "test_nll": [0.1, 0.9, 0.4, 0.2, 0.6, 0.1, 0.3, 0.5, 1.5, 0.05],
            "parent_id": pd.array(
                [None, None, None, None, None, "digits.0", "digits.0", "digits.0", None, None],
                dtype=s,
            ),
            "nesterov": pd.array(
                [True, False, None, True, False, True, None, None, None, False],
                dtype=pd.BooleanDtype(),
            ),
        },
        index=pd.RangeIndex(10, 20),
    )
    return out if string_dtype is not object else out.astype(dict.fromkeys(STR_COLS, object))


@pytest.fixture(params=STRING_DTYPES, ids=["string", "str", "object"])
def df(request) -> pd.DataFrame:
    return make_df(request.param)


def rows(d: pd.DataFrame, mask: pd.Series) -> pd.DataFrame:
    """Plain boolean indexing; a null predicate does not select the row."""
    return d[mask.fillna(False).astype(bool)]


# Documented examples -> the same predicate written out in plain pandas.
EXAMPLES = {
    "test_acc > 0.97": lambda d: d.test_acc > 0.97,
    "seed < 5": lambda d: d.seed < 5,
    "test_acc > 0.97 and seed < 100": lambda d: (d.test_acc > 0.97) & (d.seed < 100),
    "kind == 'train'": lambda d: d.kind == "train",
    "kind == 'canonical'": lambda d: d.kind == "canonical",
    "method == 'sgld'": lambda d: d.method == "sgld",
    "method == 'adam'": lambda d: d.method == "adam",
    "kind == 'train' and seed < 32": lambda d: (d.kind == "train") & (d.seed < 32),
    "seed < 8": lambda d: d.seed < 8,
    "seed < 100": lambda d: d.seed < 100,
    "seed in [1, 2, 3]": lambda d: d.seed.isin([1, 2, 3]),
    "seed not in (1, 2)": lambda d: ~d.seed.isin([1, 2]),  # a null seed is "not in" (pandas)
    "model_id.str.startswith('digits.')": lambda d: d.model_id.str.startswith("digits."),
    "parent_id.isna()": lambda d: d.parent_id.isna(),
    "parent_id.notna()": lambda d: d.parent_id.notna(),
    "test_acc.between(0.5, 0.9)": lambda d: (d.test_acc >= 0.5) & (d.test_acc <= 0.9),
    "not (seed < 3)": lambda d: ~(d.seed < 3),
    "(seed < 3) | (seed > 6)": lambda d: (d.seed < 3) | (d.seed > 6),
    "~(seed < 3)": lambda d: ~(d.seed < 3),
    "seed % 2 == 0": lambda d: d.seed % 2 == 0,
    "test_nll * 2 < 1": lambda d: d.test_nll * 2 < 1,
    "-seed < -3": lambda d: d.seed > 3,
    # the module docstring's examples
    "kind == 'train' and method in ['adam', 'sgd']": lambda d: (
        (d.kind == "train") & d.method.isin(["adam", "sgd"])
    ),
    "model_id.str.startswith('digits.') and parent_id.isna()": lambda d: (
        (d.model_id.str[:7] == "digits.") & d.parent_id.isna()
    ),
    "test_acc.between(0.5, 0.9) | (seed % 2 == 0)": lambda d: (
        ((d.test_acc >= 0.5) & (d.test_acc <= 0.9)) | (d.seed % 2 == 0)
    ),
    # beyond the documented lists
    "1 < seed <= 5": lambda d: (d.seed > 1) & (d.seed <= 5),
    "seed == [0, 140]": lambda d: d.seed.isin([0, 140]),
    "seed != [0, 140]": lambda d: ~d.seed.isin([0, 140]),
    "method in ['sgd', 'sgld'] or kind == 'import'": lambda d: (
        d.method.isin(["sgd", "sgld"]) | (d.kind == "import")
    ),
    "model_id.str.startswith(('mnist', 'imp'))": lambda d: d.model_id.str[:3].isin(["mni", "imp"]),
    "model_id.str.endswith('.0')": lambda d: d.model_id.str[-2:] == ".0",
    "model_id.str.contains('S', case=False)": lambda d: d.model_id.str.lower().str.contains("s"),
    "model_id.str.contains('.', regex=False) and kind != 'import'": lambda d: d.kind != "import",
    "test_acc.between(0.5, 0.9, inclusive='neither')": lambda d: (
        (d.test_acc > 0.5) & (d.test_acc < 0.9)
    ),
    "parent_id != 'digits.0'": lambda d: ~d.parent_id.isin(["digits.0"]),  # df.query: isin
    "'digits.0' == parent_id": lambda d: d.parent_id.isin(["digits.0"]),
    "parent_id.str.startswith('d') and seed < 10": lambda d: d.parent_id.notna() & (d.seed < 10),
    "nesterov": lambda d: d.nesterov,
    "~nesterov": lambda d: d.nesterov == False,  # noqa: E712
    "nesterov == True and not parent_id.isna()": lambda d: d.nesterov & d.parent_id.notna(),
    "seed ** 2 > 10 and seed // 2 < 3 and seed / 2 >= 1.5": lambda d: (
        (d.seed**2 > 10) & (d.seed // 2 < 3) & (d.seed / 2 >= 1.5)
    ),
    "population == 'digits' and test_acc + 0.01 >= 0.99": lambda d: (
        (d.population == "digits") & (d.test_acc + 0.01 >= 0.99)
    ),
}


@pytest.mark.parametrize("where", list(EXAMPLES))
def test_examples_match_plain_pandas(df, where):
    got = select(df, where)
    pd.testing.assert_frame_equal(got, rows(df, EXAMPLES[where](df)))
    assert len(got) > 0, "every example selects something in the fixture"


# Where select deliberately differs from the old df.query (which it replaces).
TUPLE_ARG = "model_id.str.startswith(('mnist', 'imp'))"  # df.query passes a list: TypeError
OBJECT_NULL = "parent_id.str.startswith('d') and seed < 10"  # object dtype: NaN & True is True


@pytest.mark.parametrize("where", [w for w in EXAMPLES if w != TUPLE_ARG])
def test_examples_agree_with_df_query(df, where):
    """Compatibility: the examples mean what they meant under df.query."""
    if where == OBJECT_NULL and df.parent_id.dtype == object:
        assert len(df.query(where, engine="python")) > len(select(df, where))
        return
    pd.testing.assert_frame_equal(select(df, where), df.query(where, engine="python"))


def test_docstring_examples_are_tested():
    doc = bnnctl.store.where.__doc__
    lines = [ln.strip() for ln in doc.split("Examples::")[1].splitlines() if ln.strip()]
    assert lines and all(ln in EXAMPLES for ln in lines)


def test_empty_where_returns_input(df):
    assert select(df, None) is df
    assert select(df, "") is df


def test_usage_error_is_value_error():
    assert issubclass(UsageError, ValueError)


def test_unknown_column_is_named(df):
    with pytest.raises(UsageError, match="unknown column 'sede'"):
        select(df, "sede < 5")
    check_where("sede < 5")  # without a column list any plain name is accepted
    check_where("seed < 5", ["seed"])


@pytest.mark.parametrize(
    "where",
    ["seed <", "seed < (", "'abc", "seed\n<\n5", "a = 1", "seed <> 3", "x\x00", "`seed` < 3"],
)
def test_syntax_errors_are_one_line(df, where):
    with pytest.raises(UsageError) as ei:
        select(df, where)
    msg = str(ei.value)
    assert msg.startswith("`where`") and "\n" not in msg


@pytest.mark.parametrize(
    "where", ["seed", "seed + 1", "1 < 2", "[1, 2]", "test_acc", "model_id.str.startswith"]
)
def test_not_a_row_filter(df, where):
    with pytest.raises(UsageError, match="not a row filter|not allowed"):
        select(df, where)


@pytest.mark.parametrize(
    "where",
    [
        "model_id < 5",
        "seed.str.startswith('a')",
        "model_id * 1000000000 == 'a'",
        "seed in [1] * 1000000000",
        "seed < 10 ** 10 ** 10",
        "seed < 10 ** 64 * 10 ** 64",
        "1 in seed",
        "seed.between('a', 'b')",
        "model_id.str.contains('(', regex=True)",
    ],
)
def test_bad_evaluation_is_one_usage_error(df, where):
    with pytest.raises(UsageError) as ei:
        select(df, where)
    assert "bad `where` expression" in str(ei.value) and "\n" not in str(ei.value)


def test_deep_nesting_is_refused(df):
    with pytest.raises(UsageError, match="nested|syntax"):
        select(df, "not " * 2000 + "(seed < 3)")
    with pytest.raises(UsageError, match="at most"):
        select(df, "seed < 3 and " * 1000 + "seed < 3")


INJECTIONS = [
    "@os.system('touch {m}') == 0",
    "@pd.io.common.os.system('touch {m}')",
    "seed == @os.system('touch {m}')",
    "seed.__class__.__bases__[0].__subclasses__()",
    "__import__('os').system('touch {m}')",
    "open('{m}', 'w')",
    "open('{m}', 'w').close() is None",
    "model_id.str.cat(others=None, sep='{m}')",
    "model_id.apply(lambda x: __import__('os').system('touch {m}'))",
    "[c for c in ().__class__.__mro__]",
    "seed.__class__",
    "seed[0]",
    "(lambda: __import__('os').system('touch {m}'))()",
    "f'{{1}}'",
    "f'{{__import__(\"os\").system(\"touch {m}\")}}' == 'a'",
    "exec(\"import os; os.system('touch {m}')\")",
    "eval(\"__import__('os').system('touch {m}')\")",
    "getattr(seed, '__class__')",
    "seed.pipe(lambda s: __import__('os').system('touch {m}'))",
    "seed.str.startswith(model_id)",
    "os.system('touch {m}')",
    "globals()",
    "(x := 1)",
    "seed @ seed",
    "*seed",
    "model_id.str.startswith('a', foo=1)",
    "model_id.str.startswith('a', **{{'na': 1}})",
    "`seed`.__class__",
    "pd.eval(\"__import__('os').system('touch {m}')\")",
    "model_id.str.contains(__import__('os').getcwd())",
    "model_id.str.contains(open('{m}', 'w'))",
    "seed.isna(__import__('os').system('touch {m}'))",
    "seed.between(0, __import__('os').system('touch {m}'))",
    "seed.__dict__",
    "seed.values.tofile('{m}')",
    "model_id.to_csv('{m}') is None",
    "model_id.str.startswith.__globals__",
    "seed.str.__class__.startswith('a')",
    "seed if __import__('os').system('touch {m}') else seed",
    "{{'a': __import__('os').system('touch {m}')}}",
    "seed in [__import__('os').system('touch {m}')]",
    "seed in [seed.__class__]",
    "[*seed]",
    "seed < b'x'",
    "seed < 1j",
    "seed < ...",
    "seed is None",
    "seed << 2 > 0",
    "__builtins__",
    "index.to_series().apply(print)",
    "(yield)",
    "await seed",
    "model_id.str.startswith('a', na=(__import__('os').system('touch {m}'),))",
    "model_id.str.startswith((__import__('os').system('touch {m}'),))",
    "model_id.str.startswith(('a', ('b', open('{m}', 'w'))))",
    "seed.between(*[0, 1])",
    "seed.isna.__self__",
]


@pytest.mark.parametrize("template", INJECTIONS)
def test_injections_are_refused(df, tmp_path, template):
    marker = tmp_path / "PWNED"
    where = template.format(m=marker)
    with pytest.raises(UsageError) as ei:
        select(df, where)
    with pytest.raises(UsageError):
        check_where(where)
    assert not marker.exists()
    msg = str(ei.value)
    assert msg.startswith("`where`") and len(msg) > len("`where`: ") and "\n" not in msg
    assert "bad `where` expression" not in msg, "refused by the checker, not at evaluation"


def test_injection_corpus_is_live_under_plain_query(tmp_path):
    """Control: the old ``df.query(where, engine="python")`` runs the first attempt."""
    marker = tmp_path / "PWNED"
    with contextlib.suppress(Exception):
        make_df().query(INJECTIONS[0].format(m=marker), engine="python")
    assert marker.exists()


def test_messages_name_the_construct(df):
    cases = {
        "@os.system('ls') == 0": "'@' local variables are not allowed",
        "os.system('ls')": "function call 'os.system' is not allowed",
        "seed.__class__": "attribute '__class__' is not allowed",
        "seed[0]": "subscript 'seed[0]' is not allowed",
        "(lambda: 1)()": "function call 'lambda: 1' is not allowed",
        "model_id.str.startswith('a', foo=1)": "keyword argument 'foo'",
        "seed.str.startswith(x)": "argument 'x' of seed.str.startswith() must be a literal",
        "f'{1}' == seed": "f-string",
        "__import__": "unknown column '__import__'",
    }
    for where, needle in cases.items():
        with pytest.raises(UsageError) as ei:
            select(df, where)
        assert needle in str(ei.value), (where, str(ei.value))


# --- property: random whitelisted predicates agree with the same predicate in pandas ---------

CMP = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
       "==": operator.eq, "!=": operator.ne}  # fmt: skip
leaf = st.one_of(
    st.tuples(st.just("seed"), st.sampled_from(list(CMP)), st.integers(-5, 150)),
    st.tuples(st.just("test_acc"), st.sampled_from(list(CMP)), st.floats(0, 1, width=16)),
    st.tuples(st.just("seed"), st.sampled_from(["in", "not in"]), st.lists(st.integers(0, 8))),
)
tree = st.recursive(
    leaf,
    lambda sub: st.one_of(
        st.tuples(st.sampled_from(["and", "or", "&", "|"]), sub, sub),
        st.tuples(st.sampled_from(["not", "~"]), sub),
    ),
    max_leaves=6,
)


def render(t) -> str:
    if t[0] in ("not", "~"):
        return f"{t[0]} ({render(t[1])})"
    if t[0] in ("and", "or", "&", "|"):
        return f"({render(t[1])}) {t[0]} ({render(t[2])})"
    col, op, v = t
    return f"{col} {op} {v!r}"


def predicate(t, d: pd.DataFrame) -> pd.Series:
    if t[0] in ("not", "~"):
        return ~predicate(t[1], d)
    if t[0] in ("and", "&"):
        return predicate(t[1], d) & predicate(t[2], d)
    if t[0] in ("or", "|"):
        return predicate(t[1], d) | predicate(t[2], d)
    col, op, v = t
    if op in ("in", "not in"):
        m = d[col].isin(v)
        return m if op == "in" else ~m
    return CMP[op](d[col], v)


PROP_DF = make_df()


@settings(max_examples=50, deadline=None)
@given(tree)
def test_random_predicates_match_plain_pandas(t):
    pd.testing.assert_frame_equal(select(PROP_DF, render(t)), rows(PROP_DF, predicate(t, PROP_DF)))


# --- pushdown: the table reader's prefilter never drops a row the expression selects -----------

str_leaf = st.tuples(
    st.sampled_from(["kind", "method", "parent_id"]),
    st.sampled_from(["==", "!=", "in"]),
    st.one_of(
        st.sampled_from(["train", "sgld", "digits.0", "it's", "a\\b", ""]),
        st.lists(st.sampled_from(["train", "adam", "sample", "o'k"]), max_size=3),
    ),
)
conj = st.lists(st.one_of(leaf, str_leaf, tree), min_size=1, max_size=4)


def render_any(t) -> str:
    if t[1] == "in" and isinstance(t[2], str):
        return f"{t[0]} == {t[2]!r}"
    return render(t)


@pytest.fixture(scope="module")
def delta_df(tmp_path_factory):
    """PROP_DF as a Delta table with the manifest's column types, and as read back whole."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from bnnctl.store import table as delta

    cols = ["model_id", "kind", "method", "seed", "test_acc", "parent_id"]
    t = pa.Table.from_pandas(PROP_DF[cols], preserve_index=False)
    n = t.num_rows
    t = t.append_column("row", pa.array(range(n), pa.int64()))
    t = t.append_column("created_at", pa.array([0] * n, pa.timestamp("us", tz="UTC")))
    t = t.cast(pa.schema([delta.READ_SCHEMA.field(c) for c in t.column_names]))
    path = str(tmp_path_factory.mktemp("where") / "manifest")
    write_deltalake(path, t)
    dt = DeltaTable(path)
    return dt, cols, delta.read(dt, cols)


@settings(max_examples=80, deadline=None)
@given(conj, st.booleans())
@example([("seed", "<", 5), ("kind", "==", "train")], False)
@example([("seed", ">=", 1), ("test_acc", "<=", 0.9)], True)
@example([("method", "in", ["adam", "o'k"])], False)
def test_pushdown_keeps_every_selected_row(delta_df, terms, amp):
    from bnnctl.store import table as delta
    from bnnctl.store.schema import SQL_KINDS
    from bnnctl.store.where import pushdown

    dt, cols, whole = delta_df
    where = (" & " if amp else " and ").join(f"({render_any(t)})" for t in terms)
    prefilter = pushdown(where, SQL_KINDS)
    pre = delta.read(dt, cols, prefilter)  # the SQL engine evaluates it: independent of pandas
    want = set(select(whole, where)["model_id"])
    assert want <= set(pre["model_id"]), (where, prefilter)
    assert set(select(pre, where)["model_id"]) == want


def test_pushdown_terms():
    from bnnctl.store.schema import SQL_KINDS
    from bnnctl.store.where import pushdown

    cases = {
        "seed < 5": '"seed" < 5',
        "1 < seed <= 5 and kind == 'train'": '"seed" > 1 AND "seed" <= 5 AND "kind" = \'train\'',
        "5 > seed": '"seed" < 5',
        "(test_acc >= 0.5) & (method in ['a', \"b'c\"])": (
            "\"test_acc\" >= 0.5 AND \"method\" IN ('a', 'b''c')"
        ),
        "seed < -3": '"seed" < -3',
        "test_acc > 1": '"test_acc" > 1',
        # never pushed: != (NaN != x is true in pandas), not, or, arithmetic, floats on ints,
        # strings with a backslash, methods
        "seed != 5": None,
        "not (seed < 5)": None,
        "seed < 5 or seed > 9": None,
        "seed % 2 == 0": None,
        "seed < 4.5": None,
        "kind == 'a\\\\b'": None,
        "parent_id.isna()": None,
        "kind != 'train'": None,
        "test_acc > 1e999": None,
    }
    for where, sql in cases.items():
        assert pushdown(where, SQL_KINDS) == sql, where

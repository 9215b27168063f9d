"""The signal expression language: `"crossover(sma_fast, sma_slow) & (rsi < 70)"` parsed safely.

Text is parsed with `ast.parse(..., mode="eval")` and the tree is walked against a whitelist (no
eval, exec or compile): names (`close`, `macd.signal`), numbers, True/False, calls of the signal
blocks in `qlab.strategy.signals` with positional and keyword arguments, `& | ~ and or not`,
comparisons `< <= > >= == !=` (chains are an and of pairs), `+ - * /`, unary minus and parentheses.

    node = parse(text, where)          # syntax: StrategyError naming the construct and its column
    problems = check(node, names, where, kinds=..., expect="bool")   # every semantic problem, together
    series = evaluate(node, namespace, index)   # bool series (block convention) or float series

Semantics: a comparison is False where either side is missing; arithmetic that gives inf (x / 0)
gives a missing value; negation is pushed into comparisons (`~(a < b)` is `a >= b`, `~(p & q)` is
`~p | ~q`), so a missing value is False whether or not it is negated; `&`/`|` are all_of/any_of, so
warm-up is the maximum of the parts. `and`/`or`/`not` mean `&`/`|`/`~` (to_text() writes the latter).
`&` binds tighter than `<` (as in Python), so write `crossover(a, b) & (rsi < 70)`; without the
parentheses check() names the pitfall and the fix.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

from qlab.errors import StrategyError, did_you_mean
from qlab.strategy import signals as sig

MAX_LENGTH, MAX_DEPTH = 5_000, 60
ALLOWED = ("only names (close, macd.signal), numbers, True/False, the operators & | ~ and or not "
           "< <= > >= == != + - * / with parentheses, and calls of the signal blocks (e.g. crossover(a, b), "
           "rising(close, n=3)) are allowed")
_OP_TEXT = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>",
            ast.BitXor: "^", ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}
_BIN = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.BitAnd: "&", ast.BitOr: "|"}
_CMP = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!="}
_INVERSE = {"<": ">=", "<=": ">", ">": "<=", ">=": "<", "==": "!=", "!=": "=="}
_PREC = {"|": 6, "&": 8, "+": 10, "-": 10, "*": 11, "/": 11}
_FORBIDDEN = {
    ast.Subscript: "subscripts (x[...])", ast.Slice: "slices", ast.Lambda: "lambdas", ast.IfExp: "`x if c else y`",
    ast.NamedExpr: "assignments (:=)", ast.Starred: "starred arguments", ast.JoinedStr: "strings",
    ast.ListComp: "comprehensions", ast.SetComp: "comprehensions", ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions", ast.List: "lists", ast.Tuple: "tuples", ast.Set: "sets", ast.Dict: "dicts",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}


@dataclass(frozen=True)
class Node:
    """A parsed expression. `pos` (1-based column in the text) is for messages and is not compared."""

    pos: int | None = field(default=None, compare=False, repr=False, kw_only=True)

    def children(self) -> tuple[Node, ...]:
        out: list[Node] = []
        for f in fields(self):
            v = getattr(self, f.name)
            out += [v] if isinstance(v, Node) else [x[1] if isinstance(x, tuple) else x for x in v] if isinstance(v, tuple) else []
        return tuple(out)

    def refs(self) -> set[str]:
        """The names this expression reads (for dependency order and cycle checks)."""
        return {self.name} if isinstance(self, Ref) else set().union(*(c.refs() for c in self.children()))

    def blocks(self) -> set[str]:
        """The signal blocks this expression calls, as written (aliases not resolved)."""
        own = {self.block} if isinstance(self, Call) else set()
        return own.union(*(c.blocks() for c in self.children()))

    def to_text(self) -> str:
        """Expression text that parses back to an equal node."""
        return _text(self)

    def __str__(self) -> str:
        return _text(self)


@dataclass(frozen=True)
class Ref(Node):
    name: str  # close, sma_fast, macd.signal


@dataclass(frozen=True)
class Const(Node):
    value: bool | int | float


@dataclass(frozen=True)
class Call(Node):
    block: str  # as written: an alias stays an alias
    args: tuple[Node, ...] = ()
    kwargs: tuple[tuple[str, Node], ...] = ()


@dataclass(frozen=True)
class Op(Node):
    op: str  # & | + - * /
    left: Node
    right: Node


@dataclass(frozen=True)
class Cmp(Node):
    op: str  # < <= > >= == !=
    left: Node
    right: Node


@dataclass(frozen=True)
class Not(Node):
    x: Node


@dataclass(frozen=True)
class Neg(Node):
    x: Node


def _prec(n: Node) -> int:
    if isinstance(n, Op):
        return _PREC[n.op]
    if isinstance(n, Cmp):
        return 5
    if isinstance(n, Not | Neg) or (isinstance(n, Const) and repr(n.value).startswith("-")):
        return 12
    return 14


def _text(n: Node) -> str:
    if isinstance(n, Ref):
        return n.name
    if isinstance(n, Const):
        return repr(n.value)
    if isinstance(n, Call):
        parts = [_text(a) for a in n.args] + [f"{k}={_text(v)}" for k, v in n.kwargs]
        return f"{n.block}({', '.join(parts)})"
    if isinstance(n, Op | Cmp):
        p = _prec(n)
        left = _wrap(n.left, _prec(n.left) < p or (p == 5 and _prec(n.left) == 5))
        return f"{left} {n.op} {_wrap(n.right, _prec(n.right) <= p)}"
    return ("~" if isinstance(n, Not) else "-") + _wrap(n.x, _prec(n.x) < 12)


def _wrap(n: Node, paren: bool) -> str:
    return f"({n.to_text()})" if paren else n.to_text()


def _loc(where: str, pos: int | None) -> str:
    parts = [where] if where else []
    if pos is not None:
        parts.append(f"column {pos}")
    return ", ".join(parts) + ": " if parts else ""


# ---- parse ------------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str, lead: int, where: str):
        self.text, self.lead, self.where, self.problems = text, lead, where, []

    def col(self, a: ast.AST) -> int:
        raw = self.text.encode("utf-8")[: getattr(a, "col_offset", 0)]
        return len(raw.decode("utf-8", errors="ignore")) + self.lead + 1

    def bad(self, a: ast.AST, reason: str) -> None:
        seg = ast.get_source_segment(self.text, a) or type(a).__name__
        seg = seg if len(seg) <= 60 else seg[:57] + "..."
        self.problems.append(f"{_loc(self.where, self.col(a))}`{seg}` is not allowed: {reason}; {ALLOWED}")

    def name(self, a: ast.AST, name: str) -> bool:
        if name.startswith("__") or name.endswith("__"):
            self.bad(a, "dunder names")
            return False
        return True

    def node(self, a: ast.AST, depth: int = 0) -> Node | None:
        if depth > MAX_DEPTH:
            self.bad(a, f"expressions nested more than {MAX_DEPTH} levels deep")
            return None
        pos, d = self.col(a), depth + 1
        if isinstance(a, ast.Name):
            return Ref(a.id, pos=pos) if self.name(a, a.id) else None
        if isinstance(a, ast.Attribute):
            if not isinstance(a.value, ast.Name):
                self.bad(a, "only one level of component names (macd.signal)")
                return None
            ok = self.name(a, a.value.id) and self.name(a, a.attr)
            return Ref(f"{a.value.id}.{a.attr}", pos=pos) if ok else None
        if isinstance(a, ast.Constant):
            return self.constant(a, pos)
        if isinstance(a, ast.Call):
            if not isinstance(a.func, ast.Name):
                self.bad(a, "method calls" if isinstance(a.func, ast.Attribute) else "calling anything but a signal block")
                return None
            if any(isinstance(x, ast.Starred) for x in a.args) or any(k.arg is None for k in a.keywords):
                self.bad(a, "*args and **kwargs")
                return None
            ok = self.name(a.func, a.func.id) & all([self.name(a, k.arg) for k in a.keywords])
            args = [self.node(x, d) for x in a.args]
            kwargs = [(k.arg, self.node(k.value, d)) for k in a.keywords]
            if not ok or None in args or any(v is None for _, v in kwargs):
                return None
            return Call(a.func.id, tuple(args), tuple(kwargs), pos=pos)
        if isinstance(a, ast.BinOp):
            op = _BIN.get(type(a.op))
            if op is None:
                self.bad(a, f"the operator `{_OP_TEXT.get(type(a.op), type(a.op).__name__)}`")
                return None
            left, right = self.node(a.left, d), self.node(a.right, d)
            return Op(op, left, right, pos=pos) if left and right else None
        if isinstance(a, ast.UnaryOp):
            x = self.node(a.operand, d)
            if x is None:
                return None
            if isinstance(a.op, ast.USub):
                number = isinstance(x, Const) and not isinstance(x.value, bool)
                return Const(-x.value, pos=pos) if number else Neg(x, pos=pos)
            return x if isinstance(a.op, ast.UAdd) else Not(x, pos=pos)
        if isinstance(a, ast.BoolOp):
            values = [self.node(v, d) for v in a.values]
            if None in values:
                return None
            out = values[0]
            for v in values[1:]:
                out = Op("&" if isinstance(a.op, ast.And) else "|", out, v, pos=pos)
            return out
        if isinstance(a, ast.Compare):
            return self.compare(a, pos, d)
        self.bad(a, _FORBIDDEN.get(type(a), type(a).__name__))
        return None

    def constant(self, a: ast.Constant, pos: int) -> Node | None:
        v = a.value
        if not isinstance(v, bool | int | float):
            self.bad(a, "strings" if isinstance(v, str | bytes) else f"the constant {v!r}")
            return None
        try:
            if math.isfinite(float(v)):
                return Const(v, pos=pos)
        except OverflowError:
            pass
        self.bad(a, "numbers that are not finite (too large)")
        return None

    def compare(self, a: ast.Compare, pos: int, d: int) -> Node | None:
        wrong = [op for op in a.ops if type(op) not in _CMP]
        if wrong:
            self.bad(a, f"the operator `{_OP_TEXT.get(type(wrong[0]), type(wrong[0]).__name__)}`")
            return None
        terms = [self.node(x, d) for x in [a.left, *a.comparators]]
        if None in terms:
            return None
        pairs = [Cmp(_CMP[type(op)], terms[i], terms[i + 1], pos=pos) for i, op in enumerate(a.ops)]
        out = pairs[0]
        for p in pairs[1:]:
            out = Op("&", out, p, pos=pos)
        return out


def _short(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


def try_parse(text: str, where: str = "") -> tuple[Node | None, list[str]]:
    """Parse without raising: (node, []) or (None, problems), each problem naming where and the column."""
    if not isinstance(text, str):
        return None, [f"{_loc(where, None)}expected an expression as text, got {text!r} ({type(text).__name__})"]
    flat = text.replace("\r", " ").replace("\n", " ")  # one line; offsets stay those of the text
    body = flat.lstrip()
    lead = len(flat) - len(body)
    if not body.strip():
        return None, [f"{_loc(where, None)}empty expression; write a condition such as `close > sma`"]
    if len(body) > MAX_LENGTH:
        return None, [f"{_loc(where, None)}expression of {len(body)} characters is too long (at most {MAX_LENGTH})"]
    try:
        tree = ast.parse(body, mode="eval")
    except SyntaxError as e:
        off, msg = e.offset or 0, e.msg
        if off <= 0:
            off, msg = len(body) + 1, msg + (" (the expression ends too early)" if msg == "invalid syntax" else "")
        if re.search(r"(?<![<>=!])=(?!=)", body):
            msg += "; compare with ==, and give block parameters as name=value inside the call"
        col = min(off, len(body) + 1) + lead if e.lineno in (None, 1) else None
        return None, [f"{_loc(where, col)}invalid expression {_short(text)}: {msg}"]
    except (ValueError, RecursionError, MemoryError) as e:
        return None, [f"{_loc(where, None)}invalid expression {_short(text)}: {e}"]
    p = _Parser(body, lead, where)
    try:
        node = p.node(tree.body)
    except RecursionError:
        return None, [f"{_loc(where, None)}expression nested too deeply"]
    return (node, []) if node is not None and not p.problems else (None, p.problems)


def parse(text: str, where: str = "") -> Node:
    """Parse expression text into a Node; StrategyError listing every construct that is not allowed."""
    node, problems = try_parse(text, where)
    if problems:
        raise StrategyError("\n".join(problems))
    return node


# ---- check ------------------------------------------------------------------------------------

_WORD = {"bool": "a condition (true/false)", "float": "a number"}


class _Checker:
    def __init__(self, known: Collection[str], kinds: Mapping[str, str], where: str):
        self.known, self.kinds, self.where, self.problems = known, kinds, where, []

    def add(self, n: Node, msg: str) -> None:
        self.problems.append(_loc(self.where, getattr(n, "pos", None)) + msg)

    def need(self, n: Node, want: str, context: str) -> None:
        got = self.kind(n)
        if got in ("bool", "float") and want in ("bool", "float") and got != want:
            fix = f"; compare it, e.g. `{_wrap(n, _prec(n) <= 5)} > 0`" if want == "bool" and not isinstance(n, Const) else ""
            self.add(n, f"{context} needs {_WORD[want]}, but `{n.to_text()}` is {_WORD[got]}{fix}")

    def precedence(self, n: Cmp) -> bool:
        """`a & b < c` reads as `(a & b) < c`: say so once instead of reporting the types it breaks."""
        left, right = n.left, n.right
        if isinstance(left, Op) and left.op in "&|":
            fixed = Op(left.op, left.left, Cmp(n.op, left.right, right))
            parts = (left.left, left.right, right)
        elif isinstance(right, Op) and right.op in "&|":
            fixed = Op(right.op, Cmp(n.op, left, right.left), right.right)
            parts = (left, right.left, right.right)
        else:
            return False
        self.add(n, f"`{n.to_text()}`: `&` and `|` bind tighter than comparisons in this language (as in Python), so "
                    f"write the parentheses: `{fixed.to_text()}`")
        for part in parts:
            self.kind(part)
        return True

    def kind(self, n: Node) -> str | None:  # 'bool', 'float', 'any' (unknown type) or None (already reported)
        if isinstance(n, Ref):
            if n.name not in self.known:
                hint = did_you_mean(n.name, self.known)
                if sig.find_signal(n.name):
                    hint = f" {n.name!r} is a signal block: call it, e.g. {sig.find_signal(n.name).signature}"
                self.add(n, f"unknown name {n.name!r};" + (hint or " it is not an indicator, component or column"))
                return None
            return self.kinds.get(n.name, "any")
        if isinstance(n, Const):
            return "bool" if isinstance(n.value, bool) else "float"
        if isinstance(n, Not):
            self.need(n.x, "bool", "`~` / not")
            return "bool"
        if isinstance(n, Neg):
            self.need(n.x, "float", "unary minus")
            return "float"
        if isinstance(n, Op):
            want = "bool" if n.op in "&|" else "float"
            self.need(n.left, want, f"`{n.op}`")
            self.need(n.right, want, f"`{n.op}`")
            return want
        if isinstance(n, Cmp):
            if self.precedence(n):
                return "bool"
            if n.op in ("==", "!="):
                left, right = self.kind(n.left), self.kind(n.right)
                if {left, right} == {"bool", "float"}:
                    self.add(n, f"`{n.to_text()}` compares a condition with a number")
            else:
                self.need(n.left, "float", f"`{n.op}`")
                self.need(n.right, "float", f"`{n.op}`")
            return "bool"
        return self.call(n)

    def call(self, n: Call) -> str | None:
        d = sig.find_signal(n.block)
        if d is None:
            hint = did_you_mean(n.block, sig.signal_names())
            if n.block in self.known:
                hint = f" {n.block!r} is a series: use it without parentheses"
            self.add(n, f"unknown signal block {n.block!r};" + (hint or " see qlab.strategy.signals.signal_table()"))
            for c in n.children():
                self.kind(c)
            return None
        inputs, params, problems = d.bind(n.args, dict(n.kwargs))
        self.problems += [_loc(self.where, n.pos) + p for p in problems]
        kinds = [k for _, k in d.inputs] * (len(inputs) if d.variadic else 1)
        for (name, _), x, k in zip(d.inputs * max(len(inputs), 1), inputs, kinds, strict=False):
            if x is not None and k == "any":
                self.kind(x)
            elif x is not None:
                self.need(x, k, f"{d.name}({name})")
        for p in d.params:
            if p.name in params:
                v = params[p.name]
                if not isinstance(v, Const):
                    self.kind(v)
                    self.add(v, f"{d.name}({p.name}) must be a number written in the expression, got `{v.to_text()}`")
                else:
                    self.problems += p.check(v.value, f"{_loc(self.where, v.pos)}{d.name}({p.name})")
        return "bool"


def check(node: Node, known_names: Collection[str], where: str = "", *, kinds: Mapping[str, str] | None = None,
          expect: str | None = "bool") -> list[str]:
    """Every problem in `node`, together: unknown names, blocks and parameters (with did-you-mean),
    wrong argument counts, parameter types and ranges, numbers used as conditions and vice versa.
    kinds: 'bool' or 'float' per name (a name without a kind may be either); expect: 'bool' for
    entry/exit rules, 'float' for a number, None for either."""
    c = _Checker(set(known_names), kinds or {}, where)
    got = c.kind(node)
    if expect in ("bool", "float") and got in ("bool", "float") and got != expect:
        fix = f"; compare it, e.g. `{node.to_text()} > sma`" if expect == "bool" else ""
        c.add(node, f"this rule must be {_WORD[expect]}, but `{node.to_text()}` is {_WORD[got]}{fix}")
    return list(dict.fromkeys(c.problems))  # a shared term of `a < b < c` is reported once


# ---- evaluate ---------------------------------------------------------------------------------

def _negated(n: Node) -> Node | None:
    """`~n` rewritten so that missing values stay False, or None when it can't be pushed further."""
    if isinstance(n, Cmp):
        return replace(n, op=_INVERSE[n.op])
    if isinstance(n, Not):
        return n.x
    if isinstance(n, Op) and n.op in "&|":
        left, right = _negated(n.left) or Not(n.left), _negated(n.right) or Not(n.right)
        return Op("|" if n.op == "&" else "&", left, right, pos=n.pos)
    if isinstance(n, Const) and isinstance(n.value, bool):
        return Const(not n.value, pos=n.pos)
    return None


_CMP_FN = {"<": sig.lt, "<=": sig.le, ">": sig.gt, ">=": sig.ge, "==": sig.eq, "!=": sig.ne}
_ARITH = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


class _Evaluator:
    def __init__(self, namespace: Mapping, index: pd.Index):
        self.ns, self.index = namespace, index

    def series(self, v) -> pd.Series:
        if isinstance(v, pd.Series):
            return v
        return pd.Series(np.broadcast_to(np.asarray(v, dtype=np.float64), len(self.index)).copy(), index=self.index)

    def signal(self, value: bool) -> pd.Series:
        return sig.as_signal(pd.Series(np.full(len(self.index), value), index=self.index))

    def run(self, n: Node):  # bool -> signal Series; float -> float ndarray or np.float64
        if isinstance(n, Ref):
            v = self.ns[n.name]
            if isinstance(v, pd.Series):
                if pd.api.types.is_bool_dtype(v.dtype):
                    return sig.as_signal(v)
                return v.to_numpy(dtype=np.float64, na_value=np.nan)
            return self.signal(bool(v)) if isinstance(v, bool | np.bool_) else np.float64(v)
        if isinstance(n, Const):
            return self.signal(n.value) if isinstance(n.value, bool) else np.float64(n.value)
        if isinstance(n, Neg):
            return -self.run(n.x)
        if isinstance(n, Not):
            flipped = _negated(n.x)
            return self.run(flipped) if flipped is not None else sig.not_(self.run(n.x))
        if isinstance(n, Op) and n.op in "&|":
            return (sig.all_of if n.op == "&" else sig.any_of)(self.run(n.left), self.run(n.right))
        if isinstance(n, Op):
            with np.errstate(all="ignore"):
                out = _ARITH[n.op](self.run(n.left), self.run(n.right))
                return np.where(np.isfinite(out), out, np.nan) if np.ndim(out) else np.float64(out if np.isfinite(out) else np.nan)
        if isinstance(n, Cmp):
            left, right = self.run(n.left), self.run(n.right)
            if not isinstance(left, pd.Series) and not isinstance(right, pd.Series):
                left = self.series(left)
            return _CMP_FN[n.op](self.wrap(left), self.wrap(right))
        d = sig.find_signal(n.block)
        inputs, params, _ = d.bind(n.args, dict(n.kwargs))
        values = [self.wrap(self.run(x)) for x in inputs]
        if not any(isinstance(v, pd.Series) for v in values):
            values[0] = self.series(values[0])
        return d.fn(*values, **{k: v.value for k, v in params.items()})

    def wrap(self, v):
        return pd.Series(v, index=self.index, copy=False) if isinstance(v, np.ndarray) else v


def evaluate(node: Node, namespace: Mapping[str, pd.Series | float], index: pd.Index, where: str = "") -> pd.Series:
    """The expression's value on `index`: a bool Series in the block convention (attrs['warmup']) for a
    condition, a float Series for arithmetic. Names come from `namespace` (series on `index`, or
    numbers); StrategyError lists every problem check() finds, plus misaligned or non-numeric series."""
    problems, kinds = [], {}
    for name in sorted(node.refs() & set(namespace)):
        v = namespace[name]
        kinds[name] = sig.value_kind(v)
        if kinds[name] is None:
            what = f"{v.dtype} values" if isinstance(v, pd.Series) else f"a value of type {type(v).__name__}"
            problems.append(f"{_loc(where, None)}{name!r} holds {what}; names must be number or boolean series, or numbers")
        elif isinstance(v, pd.Series) and not v.index.equals(index):
            problems.append(f"{_loc(where, None)}series {name!r} is not on the index being evaluated; reindex it to the candles first")
    problems += check(node, namespace.keys(), where, kinds=kinds, expect=None)
    if problems:
        raise StrategyError("\n".join(problems))
    out = _Evaluator(namespace, index).run(node)
    if isinstance(out, pd.Series):
        return out
    return pd.Series(np.broadcast_to(out, len(index)).copy(), index=index, dtype=np.float64)

"""Signal blocks: each against a slow plain-Python loop on real candles and on tiny hand-made series;
the convention (bool dtype, no NaN, same index, warm-up False and reported) and causality for all."""

from __future__ import annotations

import inspect
import math
from functools import cache

import numpy as np
import pandas as pd
import pytest

import qlab
from qlab.errors import StrategyError
from qlab.strategy import signals as sig
from qlab.strategy.signals import SIGNALS, get_signal, signal_markdown, signal_table

NAN = float("nan")


@cache
def candles() -> pd.DataFrame:
    return qlab.load_sample("BTC/USDT", "1h").iloc[-2000:]


@cache
def inputs() -> dict[str, pd.Series]:
    c = candles()
    close = c["close"]
    return {
        "close": close,
        "high": c["high"],
        "sma_fast": close.rolling(10).mean(),  # 9 leading NaN
        "sma_slow": close.rolling(30).mean(),  # 29 leading NaN
        "ret": close.pct_change() * 100,  # 1 leading NaN
    }


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _vals(x, n: int) -> list:
    return list(x.astype(float)) if isinstance(x, pd.Series) else [float(x)] * n


def _lead(x) -> int:
    if not isinstance(x, pd.Series):
        return 0
    if x.dtype == bool:
        return x.attrs.get("warmup", 0)
    ok = x.notna().to_numpy()
    return int(ok.argmax()) if ok.any() else len(x)


# ---- slow references: one Python loop per block -----------------------------------------------

def ref_cmp(op):
    def ref(a, b):
        n = len(a) if isinstance(a, pd.Series) else len(b)
        av, bv = _vals(a, n), _vals(b, n)
        return [not _nan(av[i]) and not _nan(bv[i]) and op(av[i], bv[i]) for i in range(n)]
    return ref


def ref_cross(up: bool):
    def ref(a, b):
        n = len(a)
        av, bv = _vals(a, n), _vals(b, n)
        out = []
        for i in range(n):
            vals = (av[i], bv[i], av[i - 1], bv[i - 1]) if i else (NAN,)
            if any(_nan(v) for v in vals):
                out.append(False)
            elif up:
                out.append(av[i] > bv[i] and av[i - 1] <= bv[i - 1])
            else:
                out.append(av[i] < bv[i] and av[i - 1] >= bv[i - 1])
        return out
    return ref


def ref_between(x, lo, hi):
    n = len(x)
    xv, lv, hv = _vals(x, n), _vals(lo, n), _vals(hi, n)
    return [not any(_nan(v) for v in (xv[i], lv[i], hv[i])) and lv[i] <= xv[i] <= hv[i] for i in range(n)]


def ref_near(x, level, pct):
    n = len(x)
    xv, lv = _vals(x, n), _vals(level, n)
    return [not _nan(xv[i]) and not _nan(lv[i]) and abs(xv[i] - lv[i]) <= pct / 100 * abs(lv[i]) for i in range(n)]


def ref_trend(up: bool):
    def ref(x, n):
        v = _vals(x, len(x))
        out = []
        for i in range(len(v)):
            steps = [(v[j], v[j - 1]) for j in range(i - n + 1, i + 1)] if i >= n else None
            ok = steps is not None and all(not _nan(a) and not _nan(b) and (a > b if up else a < b) for a, b in steps)
            out.append(ok)
        return out
    return ref


def ref_breakout(up: bool):
    def ref(x, n):
        v = _vals(x, len(x))
        out = []
        for i in range(len(v)):
            window = v[i - n:i] if i >= n else None
            if window is None or _nan(v[i]) or any(_nan(w) for w in window):
                out.append(False)
            else:
                out.append(v[i] > max(window) if up else v[i] < min(window))
        return out
    return ref


def ref_pct(up: bool):
    def ref(x, n, pct):
        v = _vals(x, len(x))
        out = []
        for i in range(len(v)):
            if i < n or _nan(v[i]) or _nan(v[i - n]) or v[i - n] == 0:
                out.append(False)
                continue
            ch = (v[i] / v[i - n] - 1.0) * 100.0
            out.append(ch > pct if up else ch < pct)
        return out
    return ref


def ref_zscore_value(x, n: int) -> list[float]:
    v = _vals(x, len(x))
    zs = []
    for i in range(len(v)):
        window = v[i - n + 1:i + 1] if i >= n - 1 else None
        if window is None or any(_nan(w) for w in window):
            zs.append(NAN)
            continue
        mean = sum(window) / n
        std = math.sqrt(sum((w - mean) ** 2 for w in window) / n)
        zs.append((v[i] - mean) / std if std > 1e-12 * abs(mean) else NAN)
    return zs


def ref_zscore(up: bool):
    def ref(x, n, k):
        return [not _nan(z) and (z > k if up else z < k) for z in ref_zscore_value(x, n)]
    return ref


def ref_confirmed(cond, n):
    c = list(cond)
    return [i >= n - 1 and all(c[i - n + 1:i + 1]) for i in range(len(c))]


def ref_cooldown(cond, n):
    out, last = [], None
    for i, v in enumerate(cond):
        fire = bool(v) and (last is None or i - last > n)
        out.append(fire)
        last = i if fire else last
    return out


def ref_logic(how):
    def ref(*conds):
        warm = max(c.attrs["warmup"] for c in conds)
        rows = zip(*[list(c) for c in conds], strict=True)
        return [i >= warm and how(row) for i, row in enumerate(rows)]
    return ref


def ref_not(cond):
    return [i >= cond.attrs["warmup"] and not v for i, v in enumerate(cond)]


def _cases():
    """(block, args builder, kwargs, reference, extra warm-up of the block) over the real inputs."""
    s = inputs
    up = lambda: sig.gt(s()["ret"], 0)  # noqa: E731 - a bool input with warm-up 1
    cr = lambda: sig.crosses_above(s()["sma_fast"], s()["sma_slow"])  # noqa: E731
    return [
        ("gt", lambda: (s()["close"], s()["sma_slow"]), {}, ref_cmp(lambda a, b: a > b), 0),
        ("lt", lambda: (s()["sma_fast"], 60000.0), {}, ref_cmp(lambda a, b: a < b), 0),
        ("ge", lambda: (s()["ret"], 0.0), {}, ref_cmp(lambda a, b: a >= b), 0),
        ("le", lambda: (s()["close"], s()["sma_fast"]), {}, ref_cmp(lambda a, b: a <= b), 0),
        ("eq", lambda: (s()["high"], s()["close"]), {}, ref_cmp(lambda a, b: a == b), 0),
        ("ne", lambda: (s()["high"], s()["close"]), {}, ref_cmp(lambda a, b: a != b), 0),
        ("above", lambda: (s()["close"], s()["sma_slow"]), {}, ref_cmp(lambda a, b: a > b), 0),
        ("below", lambda: (s()["close"], 62000), {}, ref_cmp(lambda a, b: a < b), 0),
        ("between", lambda: (s()["close"], s()["sma_slow"] * 0.99, s()["sma_slow"] * 1.01), {}, ref_between, 0),
        ("near", lambda: (s()["close"], s()["sma_slow"]), {"pct": 0.5}, ref_near, 0),
        ("crosses_above", lambda: (s()["sma_fast"], s()["sma_slow"]), {}, ref_cross(True), 1),
        ("crosses_below", lambda: (s()["close"], s()["sma_fast"]), {}, ref_cross(False), 1),
        ("rising", lambda: (s()["sma_fast"],), {"n": 4}, ref_trend(True), 4),
        ("falling", lambda: (s()["close"],), {"n": 2}, ref_trend(False), 2),
        ("breakout_high", lambda: (s()["close"],), {"n": 24}, ref_breakout(True), 24),
        ("breakout_low", lambda: (s()["sma_fast"],), {"n": 10}, ref_breakout(False), 10),
        ("pct_change_above", lambda: (s()["close"],), {"n": 6, "pct": 1.0}, ref_pct(True), 6),
        ("pct_change_below", lambda: (s()["sma_fast"],), {"n": 3, "pct": -0.5}, ref_pct(False), 3),
        ("zscore_above", lambda: (s()["close"],), {"n": 20, "k": 1.5}, ref_zscore(True), 19),
        ("zscore_below", lambda: (s()["sma_fast"],), {"n": 12, "k": -1.0}, ref_zscore(False), 11),
        ("confirmed", lambda: (up(),), {"n": 3}, ref_confirmed, 2),
        ("cooldown", lambda: (up(),), {"n": 4}, ref_cooldown, 0),
        ("all_of", lambda: (up(), sig.above(s()["close"], s()["sma_slow"])), {}, ref_logic(all), 0),
        ("any_of", lambda: (cr(), up(), sig.rising(s()["close"], 2)), {}, ref_logic(any), 0),
        ("not_", lambda: (up(),), {}, ref_not, 0),
    ]


CASES = _cases()
IDS = [c[0] for c in CASES]


def test_registry_has_the_blocks_the_issue_asks_for():
    wanted = {"crosses_above", "crosses_below", "above", "below", "between", "rising", "falling", "breakout_high",
              "breakout_low", "pct_change_above", "pct_change_below", "zscore_above", "zscore_below", "near",
              "confirmed", "cooldown", "all_of", "any_of", "not_", "gt", "lt", "ge", "le", "eq"}
    assert wanted <= set(SIGNALS)
    assert len(SIGNALS) >= 15
    assert {c[0] for c in CASES} == set(SIGNALS), "every block has a reference test"
    assert get_signal("crossover") is SIGNALS["crosses_above"]
    assert get_signal("crossunder") is SIGNALS["crosses_below"]


@pytest.mark.parametrize("name", sorted(SIGNALS))
def test_registry_matches_the_function_signature(name):
    """A block cannot be handed parameters its function does not take: the registry IS the signature."""
    d = SIGNALS[name]
    params = list(inspect.signature(d.fn).parameters.values())
    if d.variadic:
        assert [p.kind for p in params] == [inspect.Parameter.VAR_POSITIONAL]
        return
    assert [p.name for p in params] == [n for n, _ in d.inputs] + [p.name for p in d.params]
    for p in d.params:
        assert inspect.signature(d.fn).parameters[p.name].default == p.default
        assert p.min <= p.default <= p.max and p.kind in (int, float)
    assert d.doc and "\n" not in d.doc and d.n_series == len(d.inputs)


@pytest.mark.parametrize(("name", "build", "kwargs", "ref", "extra"), CASES, ids=IDS)
def test_block_matches_slow_loop_on_real_data(name, build, kwargs, ref, extra):
    args = build()
    out = SIGNALS[name].fn(*args, **kwargs)
    index = candles().index
    assert out.dtype == bool and not out.isna().any() and out.index.equals(index)
    expected = np.array(ref(*args, **kwargs), dtype=bool)
    got = out.to_numpy()
    if name.startswith("zscore"):  # float noise at the threshold itself is not a disagreement
        z, k = np.array(ref_zscore_value(args[0], kwargs["n"])), kwargs["k"]
        keep = ~(np.abs(z - k) < 1e-7)
        got, expected = got[keep], expected[keep]
    assert (got == expected).all(), f"{name}: {int((got != expected).sum())} bars differ from the loop"
    assert 0 < out.sum() < len(out), f"{name}: the case should produce some True and some False"
    warm = out.attrs["warmup"]
    assert warm == max(_lead(a) for a in args) + extra
    assert not out.iloc[:warm].any()


@pytest.mark.parametrize(("name", "build", "kwargs", "ref", "extra"), CASES, ids=IDS)
def test_truncation_never_changes_earlier_bars(name, build, kwargs, ref, extra):
    args = build()
    full = SIGNALS[name].fn(*args, **kwargs)
    for cut in (1, 15, 40, 777, 1999):
        cut_args = [a.iloc[:cut] if isinstance(a, pd.Series) else a for a in args]
        for a, ca in zip(args, cut_args, strict=True):
            if isinstance(a, pd.Series) and a.dtype == bool:
                ca.attrs["warmup"] = a.attrs["warmup"]
        part = SIGNALS[name].fn(*cut_args, **kwargs)
        pd.testing.assert_series_equal(part, full.iloc[:cut], check_flags=False)
        assert part.attrs["warmup"] == min(full.attrs["warmup"], cut)


# ---- tiny hand-made series: the expected booleans written out -----------------------------------

T, F = True, False
X = pd.Series([NAN, 1.0, 2.0, 3.0, 2.0, 5.0, 5.0, 6.0])
Y = pd.Series([2.0, 2.0, 2.0, 2.0, 3.0, 3.0, NAN, 3.0])


@pytest.mark.parametrize(("call", "expected", "warmup"), [
    (lambda: sig.crosses_above(X, 2.5), [F, F, F, T, F, T, F, F], 2),
    (lambda: sig.crosses_below(X, Y), [F, F, F, F, T, F, F, F], 2),
    (lambda: sig.above(X, Y), [F, F, F, T, F, T, F, T], 1),
    (lambda: sig.below(X, 2), [F, T, F, F, F, F, F, F], 1),
    (lambda: sig.gt(3, X), [F, T, T, F, T, F, F, F], 1),
    (lambda: sig.eq(X, Y), [F, F, T, F, F, F, F, F], 1),
    (lambda: sig.ne(X, Y), [F, T, F, T, T, T, F, T], 1),
    (lambda: sig.between(X, 2, Y), [F, F, T, F, T, F, F, F], 1),
    (lambda: sig.near(X, 5.2, pct=5), [F, F, F, F, F, T, T, F], 1),
    (lambda: sig.rising(X, 2), [F, F, F, T, F, F, F, F], 3),
    (lambda: sig.rising(X, 1), [F, F, T, T, F, T, F, T], 2),
    (lambda: sig.falling(X, 1), [F, F, F, F, T, F, F, F], 2),
    (lambda: sig.breakout_high(X, 2), [F, F, F, T, F, T, F, T], 3),
    (lambda: sig.breakout_low(X, 3), [F, F, F, F, F, F, F, F], 4),
    (lambda: sig.pct_change_above(X, 1, 40), [F, F, T, T, F, T, F, F], 2),
    (lambda: sig.pct_change_below(X, 2, 0), [F, F, F, F, F, F, F, F], 3),
    (lambda: sig.pct_change_below(X, 1, -10), [F, F, F, F, T, F, F, F], 2),
    (lambda: sig.zscore_above(X, 3, 1.0), [F, F, F, T, F, T, F, T], 3),
    (lambda: sig.zscore_below(X, 2, -0.5), [F, F, F, F, T, F, F, F], 2),
    (lambda: sig.confirmed(sig.rising(X, 1), 2), [F, F, F, T, F, F, F, F], 3),
    (lambda: sig.cooldown(sig.above(X, 1.5), 2), [F, F, T, F, F, T, F, F], 1),
    (lambda: sig.all_of(sig.above(X, 1.5), sig.rising(X, 1)), [F, F, T, T, F, T, F, T], 2),
    (lambda: sig.any_of(sig.below(X, 2.5), sig.rising(X, 1)), [F, F, T, T, T, T, F, T], 2),
    (lambda: sig.not_(sig.rising(X, 1)), [F, F, F, F, T, F, T, F], 2),
])
def test_hand_made_cases(call, expected, warmup):
    out = call()
    assert out.tolist() == expected
    assert out.attrs["warmup"] == warmup
    assert out.dtype == bool and out.index.equals(X.index)


def test_all_nan_input_is_all_false_with_full_warmup():
    x = pd.Series([NAN] * 5)
    for name, d in SIGNALS.items():
        if any(k == "bool" for _, k in d.inputs):
            continue
        out = d.fn(*[x] * d.n_series)
        assert not out.any() and out.attrs["warmup"] == 5, name


def test_nan_in_the_middle_is_false_and_not_negated_into_true():
    x = pd.Series([1.0, 2.0, NAN, 4.0, 5.0])
    assert sig.gt(x, 0).tolist() == [T, T, F, T, T]
    assert sig.ne(x, 3).tolist() == [T, T, F, T, T]
    assert sig.rising(x, 1).tolist() == [F, T, F, F, T]
    assert sig.breakout_high(x, 2).tolist() == [F, F, F, F, F]


def test_bool_inputs_from_outside_and_as_signal():
    raw = pd.Series([True, False, None, True], dtype="boolean")
    s = sig.as_signal(raw)
    assert s.dtype == bool and s.tolist() == [T, F, F, T] and s.attrs["warmup"] == 0
    lead = pd.Series([None, True, True], dtype="boolean")
    assert sig.as_signal(lead).attrs["warmup"] == 1
    assert sig.not_(lead).tolist() == [F, F, F]
    assert sig.gt(pd.Series([True, False]), 0.5).tolist() == [T, F]


def test_warmup_of_a_combination_is_the_max_of_the_parts():
    s = inputs()
    a, b = sig.gt(s["ret"], 0), sig.crosses_above(s["sma_fast"], s["sma_slow"])
    assert (a.attrs["warmup"], b.attrs["warmup"]) == (1, 30)
    assert sig.all_of(a, b).attrs["warmup"] == sig.any_of(a, b).attrs["warmup"] == sig.not_(sig.any_of(a, b)).attrs["warmup"] == 30
    assert sig.confirmed(b, 3).attrs["warmup"] == 32


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: sig.rising(X, 0), "rising(n): 0 is below the minimum 1"),
    (lambda: sig.rising(X, 2.5), "rising(n): expected a whole number"),
    (lambda: sig.rising(X, 3.0), "write 3"),
    (lambda: sig.rising(X, "3"), "got '3' (str)"),
    (lambda: sig.rising(X, True), "got True (bool)"),
    (lambda: sig.zscore_above(X, 1), "zscore_above(n): 1 is below the minimum 2"),
    (lambda: sig.near(X, 3, pct=float("nan")), "near(pct): expected a number"),
    (lambda: sig.above(X, "high"), "'level' must be a series or a number, got 'high'"),
    (lambda: sig.above(pd.Series(["a", "b"]), 1), "must hold numbers or booleans"),
    (lambda: sig.above(X, Y.iloc[:4]), "has another index"),
    (lambda: sig.above(1, 2), "needs at least one series"),
    (lambda: sig.confirmed(X, 2), "must be a boolean series"),
    (lambda: sig.all_of(), "needs at least one condition"),
    (lambda: get_signal("crosover"), "did you mean 'crossover'"),
])
def test_wrong_inputs_raise_strategy_error(call, fragment):
    with pytest.raises(StrategyError, match=None) as e:
        call()
    assert fragment in str(e.value)


def test_bind_reports_argument_problems_together():
    d = get_signal("rising")
    inputs_, params, problems = d.bind(["x"], {"m": 3, "x": "again"}, "signals.entry")
    assert params == {} and inputs_ == ["x"]
    assert any("unknown parameter 'm'" in p for p in problems)
    assert any("input 'x' is given twice" in p for p in problems)
    _, params, problems = get_signal("between").bind(["x"], {"lo": 1, "hi": 2})
    assert problems == [] and params == {}
    _, _, problems = get_signal("crosses_above").bind(["a"], {})
    assert "missing b" in problems[0]


def test_signal_table_and_markdown():
    t = signal_table()
    assert list(t.columns) == ["name", "aliases", "args", "params", "doc"]
    assert set(t["name"]) == set(SIGNALS)
    row = t.set_index("name").loc["rising"]
    assert row["args"] == "x" and row["params"] == "n=3 (1..100000)"
    md = signal_markdown()
    assert md.count("\n") == len(SIGNALS) + 2 and "`crosses_above` | crossover" in md

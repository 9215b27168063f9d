"""Retention: per-timeframe rules for how long stored candles are kept, applied in one transaction.

    policy = load_retention("data/retention.example.yaml")   # e.g. 1m: keep 90 days, derive 1h first
    plan = prune_plan(store, policy)                          # what would go: rows and ranges per series
    prune(store, policy, dry_run=False)                       # derive, then delete, all or nothing

A rule's cut-off is `now - keep`, floored to the grid of the coarsest timeframe it derives (so no derived bar
is built from half its bars): rows with open time before the cut-off are removed. Before that, every timeframe
named in `derive` is filled in from the rows about to go (Store.resample semantics: open first, high max, low min,
close last, volume sum); bars of the derived timeframe already stored are kept as they are, the others are written
with source 'resample:<timeframe>'. Timeframes without a rule follow `default` (forever unless set).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from qlab.config import qlab_home
from qlab.data.candles import resample_candles, timeframe_delta
from qlab.data.store import Store
from qlab.errors import ConfigError, NotFoundError, did_you_mean

FOREVER = ("forever", "never", "none", None)
RULE_KEYS = ("keep", "derive")


@dataclass(frozen=True)
class RetentionRule:
    """Keep `timeframe` bars for `keep` (None: forever); before pruning, store the `derive` timeframes built from them."""

    timeframe: str
    keep: pd.Timedelta | None
    derive: tuple[str, ...] = ()

    def cutoff(self, now: pd.Timestamp) -> pd.Timestamp | None:
        """Rows opening before this go; None when the rule keeps everything."""
        if self.keep is None:
            return None
        grid = max((timeframe_delta(t) for t in (self.timeframe, *self.derive)), default=timeframe_delta(self.timeframe))
        origin = pd.Timestamp(0, tz="UTC")
        return origin + ((now - self.keep - origin) // grid) * grid


@dataclass(frozen=True)
class RetentionPolicy:
    """Rules by timeframe, and the `default` keep for timeframes without one (None: forever)."""

    rules: dict[str, RetentionRule]
    default: pd.Timedelta | None = None

    def rule(self, timeframe: str) -> RetentionRule:
        """The rule that applies to `timeframe` (the default when it has none of its own)."""
        return self.rules.get(timeframe) or RetentionRule(timeframe, self.default)


def _keep(value: Any, where: str) -> pd.Timedelta | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in FOREVER):
        return None
    text = str(value).strip().lower()
    if re.fullmatch(r"[\d.]+", text):
        raise ConfigError(f"{where}: keep={value!r} has no unit; write e.g. '{text} days'")
    years = re.fullmatch(r"(\d+)\s*(y|yr|years?)", text)  # pandas has no year unit: a year is 365 days here
    try:
        keep = pd.Timedelta(days=365 * int(years.group(1))) if years else pd.Timedelta(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: keep={value!r} is not a duration; use e.g. '90 days', '90d', '12w' or 'forever'") from None
    if keep <= pd.Timedelta(0):
        raise ConfigError(f"{where}: keep={value!r} must be a positive duration, or 'forever'")
    return keep


def parse_retention(config: Mapping[str, Any], where: str = "retention") -> RetentionPolicy:
    """A RetentionPolicy from {rules: {TF: {keep, derive} | KEEP}, default: KEEP}; bad values are ConfigErrors."""
    if not isinstance(config, Mapping) or not isinstance(config.get("rules"), Mapping):
        raise ConfigError(f"{where}: expected a mapping with 'rules:' (timeframe -> {{keep: 90 days, derive: [1h]}})")
    for key in config:
        if key not in ("rules", "default"):
            raise ConfigError(f"{where}: unknown key {key!r}; use rules, default." + did_you_mean(str(key), ("rules", "default")))
    rules = {}
    for timeframe, body in config["rules"].items():
        at = f"{where} rule {timeframe}"
        timeframe = str(timeframe)
        timeframe_delta(timeframe)
        body = body if isinstance(body, Mapping) else {"keep": body}
        for key in body:
            if key not in RULE_KEYS:
                raise ConfigError(f"{at}: unknown key {key!r}; use keep, derive." + did_you_mean(str(key), RULE_KEYS))
        derive = body.get("derive") or ()
        derive = (derive,) if isinstance(derive, str) else tuple(str(d) for d in derive)
        for target in derive:
            if timeframe_delta(target) <= timeframe_delta(timeframe) or timeframe_delta(target) % timeframe_delta(timeframe):
                raise ConfigError(f"{at}: cannot derive {target} from {timeframe}; give a higher timeframe that is a whole "
                                  f"multiple of {timeframe}, e.g. 1h")
        rules[timeframe] = RetentionRule(timeframe, _keep(body.get("keep"), at), derive)
    return RetentionPolicy(rules, _keep(config.get("default"), f"{where} default"))


def default_retention_path() -> Path:
    """Where `qlab data prune` looks without --rules: $QLAB_HOME/retention.yaml."""
    return qlab_home() / "retention.yaml"


def load_retention(path: str | Path | None = None) -> RetentionPolicy:
    """Read a YAML retention file (see data/retention.example.yaml); None reads $QLAB_HOME/retention.yaml."""
    import yaml

    p = Path(path) if path is not None else default_retention_path()
    if not p.is_file():
        raise ConfigError(f"no retention rules at {str(p)!r}; copy data/retention.example.yaml there or pass --rules FILE")
    try:
        config = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_retention(config, str(p))


def _now(now: Any) -> pd.Timestamp:
    stamp = pd.Timestamp.now("UTC") if now is None else pd.Timestamp(now)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def prune_plan(store: Store, policy: RetentionPolicy, *, now: Any = None) -> pd.DataFrame:
    """What `prune` would do, changing nothing: one row per stored series with rows to remove.

    Columns: exchange, symbol, timeframe, cutoff, rows (to delete), first and last (open times of the first and last
    row to delete), keep_rows (rows left), derive (timeframes filled in first).
    """
    when = _now(now)
    listing = store.symbols()
    rows = []
    for s in listing.itertuples(index=False):
        rule = policy.rule(s.timeframe)
        cutoff = rule.cutoff(when)
        if cutoff is None or s.first >= cutoff:
            continue
        counted = store.sql(
            """SELECT count(*) AS n, min(ts) AS first, max(ts) AS last FROM candles
               WHERE exchange = ? AND symbol = ? AND timeframe = ? AND ts < ?""",
            [s.exchange, s.symbol, s.timeframe, cutoff.tz_localize(None)],
        ).iloc[0]
        rows.append({"exchange": s.exchange, "symbol": s.symbol, "timeframe": s.timeframe, "cutoff": cutoff,
                     "rows": int(counted["n"]), "first": pd.Timestamp(counted["first"]).tz_localize("UTC"),
                     "last": pd.Timestamp(counted["last"]).tz_localize("UTC"), "keep_rows": int(s.rows - counted["n"]),
                     "derive": ",".join(rule.derive)})
    columns = ["exchange", "symbol", "timeframe", "cutoff", "rows", "first", "last", "keep_rows", "derive"]
    return pd.DataFrame(rows, columns=columns)


def _derive(store: Store, exchange: str, symbol: str, timeframe: str, target: str, cutoff: pd.Timestamp) -> int:
    """Store the `target` bars built from the `timeframe` rows before `cutoff` that `target` lacks; returns bars written."""
    built = resample_candles(store.candles(exchange, symbol, timeframe, None, cutoff), target)
    try:
        have = store.candles(exchange, symbol, target, built.index[0], built.index[-1] + timeframe_delta(target)).index
    except NotFoundError:
        have = pd.DatetimeIndex([], tz="UTC")
    new = built[~built.index.isin(have)]
    if new.empty:
        return 0
    return store.write_candles(new, exchange, symbol, target, source=f"resample:{timeframe}")


@dataclass(frozen=True, eq=False)
class PruneResult:
    """What a prune did (or, for a dry run, would do): the plan, and the rows deleted and bars derived per series."""

    plan: pd.DataFrame
    dry_run: bool
    deleted: int
    derived: dict[str, int]


def prune(store: Store, policy: RetentionPolicy, *, now: Any = None, dry_run: bool = False) -> PruneResult:
    """Apply the retention rules in ONE transaction: derive the higher timeframes first, then delete old rows.

    Any failure rolls everything back, so the store is either pruned as planned or unchanged. `dry_run` only plans.
    """
    plan = prune_plan(store, policy, now=now)
    if dry_run or plan.empty:
        return PruneResult(plan, dry_run, 0, {})
    deleted, derived = 0, {}
    with store.transaction():
        finest_first = plan.iloc[plan["timeframe"].map(timeframe_delta).argsort(kind="stable")]
        for p in finest_first.itertuples(index=False):  # 1m -> 5m before 5m -> 1h
            for target in filter(None, p.derive.split(",")):
                derived[f"{p.exchange} {p.symbol} {target}"] = _derive(store, p.exchange, p.symbol, p.timeframe, target, p.cutoff)
        for p in plan.itertuples(index=False):
            deleted += store.delete_candles(p.exchange, p.symbol, p.timeframe, end=p.cutoff)
    return PruneResult(plan, dry_run, deleted, derived)

"""The data explorer behind notebooks/01_data.ipynb: `run(params)` for papermill, `widget()` for people."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qlab.analytics.plots import candlestick_figure
from qlab.data.candles import Candles
from qlab.data.quality import QualityReport, quality_report
from qlab.data.sample import samples
from qlab.errors import ConfigError, NotFoundError
from qlab.ui.params import merge_params, sample_window

DEFAULTS: dict[str, Any] = {
    "symbol": "BTC/USDT:USDT",
    "timeframe": "1h",
    "start": None,
    "end": None,
    "exchange": None,
    "source": "auto",  # "store", "sample", or "auto": the store when it holds the series, else the bundled sample
    "store": None,  # store path; None means the default QLAB_HOME/qlab.duckdb
}


@dataclass
class ExplorerResult:
    """What the explorer shows: the candles, their quality report and the annotated chart."""

    params: dict[str, Any]
    candles: Candles
    source: str
    report: QualityReport
    figure: Any


def _check_params(params: dict[str, Any] | None) -> dict[str, Any]:
    merged = merge_params(params, DEFAULTS, "data-explorer")
    if merged["source"] not in ("auto", "store", "sample"):
        raise ConfigError(f"source={merged['source']!r}; use 'auto', 'store' or 'sample'")
    return merged


def _store_candles(p: dict[str, Any]) -> Candles | None:
    """The series from the store, or None in 'auto' mode when the store lacks it."""
    from qlab.data.store import Store

    try:
        with Store(p["store"], read_only=True) as store:
            listing = store.symbols()
            rows = listing[(listing.symbol == p["symbol"]) & (listing.timeframe == p["timeframe"])]
            if p["exchange"]:
                rows = rows[rows.exchange == p["exchange"]]
            if rows.empty:
                if p["source"] == "auto":
                    return None
                store.candles(p["exchange"] or "?", p["symbol"], p["timeframe"])  # raises with the listing
            return store.candles(rows.exchange.iloc[0], p["symbol"], p["timeframe"], p["start"], p["end"])
    except NotFoundError:
        if p["source"] == "auto":
            return None
        raise


def run(params: dict[str, Any] | None = None) -> ExplorerResult:
    """Load a series (store or bundled sample), report its quality and chart it with gaps and anomalies."""
    p = _check_params(params)
    candles, source = None, "sample"
    if p["source"] in ("auto", "store"):
        candles = _store_candles(p)
        source = "store" if candles is not None else "sample"
    if candles is None:
        candles = sample_window(p["symbol"], p["timeframe"], p["start"], p["end"], p["exchange"])
    report = quality_report(candles, p["timeframe"])
    title = f"{p['symbol']} {p['timeframe']} ({source}), quality score {report.score:.0f}/100"
    figure = candlestick_figure(candles, p["timeframe"], title=title, gaps=report.gaps, anomalies=report.anomalies)
    return ExplorerResult(p, candles, source, report, figure)


def widget(params: dict[str, Any] | None = None):
    """Pick symbol, timeframe and dates; 'Show' calls the same `run(params)` that papermill runs."""
    import ipywidgets as w
    from IPython.display import display

    from qlab.ui.display import show

    p = _check_params(params)
    series = samples()
    series = series[series.kind == "candles"]
    symbol = w.Dropdown(options=sorted(series.symbol.unique()), value=p["symbol"], description="symbol")
    timeframe = w.Dropdown(options=[], description="timeframe")
    start = w.Text(value=p["start"] or "", placeholder="YYYY-MM-DD", description="start")
    end = w.Text(value=p["end"] or "", placeholder="YYYY-MM-DD", description="end")
    button = w.Button(description="Show", button_style="primary")
    out = w.Output()

    def refresh_timeframes(*_: object) -> None:
        options = list(series[series.symbol == symbol.value].timeframe)
        timeframe.options = options
        timeframe.value = p["timeframe"] if p["timeframe"] in options else options[0]

    def on_show(*_: object) -> None:
        out.clear_output(wait=True)
        with out:
            try:
                result = run({**p, "symbol": symbol.value, "timeframe": timeframe.value,
                              "start": start.value or None, "end": end.value or None})
            except Exception as exc:  # shown to the user in the widget instead of a silent failure
                print(f"error: {exc}")
                return
            show(result.figure)
            display(result.report.table())

    symbol.observe(refresh_timeframes, names="value")
    refresh_timeframes()
    button.on_click(on_show)
    return w.VBox([w.HBox([symbol, timeframe]), w.HBox([start, end, button]), out])

"""Reports: `qlab run --batch` in parallel processes, unique report names, failures reported without stopping the
others, metadata beside each report, and reports/index.html with parameters, dates and headline metrics."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from qlab.cli import main
from qlab.errors import ConfigError
from qlab.ui.batch import batch_items, report_name
from qlab.ui.runner import NotebookError, run_notebook

REPO = Path(__file__).resolve().parents[2]
DATA_NB = str(REPO / "notebooks" / "01_data.ipynb")
RUNS = [
    {"notebook": DATA_NB, "parameters": {"symbol": "BTC/USDT", "timeframe": "1h", "start": "2024-01-01", "end": "2024-01-08",
                                         "source": "sample"}},
    {"notebook": DATA_NB, "parameters": {"symbol": "ETH/USDT", "timeframe": "1h", "start": "2022-01-01", "end": "2022-01-08",
                                         "source": "sample"}},
    {"notebook": DATA_NB, "parameters": {"symbol": "DOGE/USDT", "timeframe": "1h"}, "name": "doge"},
]


def test_batch_runs_in_parallel_reports_failures_and_writes_the_index(tmp_path, monkeypatch, capsys):
    import qlab
    from qlab.ui.params import sample_window

    monkeypatch.chdir(tmp_path)
    batch = tmp_path / "batch.yaml"
    import yaml

    batch.write_text(yaml.safe_dump(RUNS))
    reports = tmp_path / "reports"
    code = main(["run", "--batch", str(batch), "--workers", "2", "--reports", str(reports)])
    out = capsys.readouterr().out
    assert code == 1  # one run failed: non-zero exit at the end, after the others finished
    assert "2 of 3 run(s) succeeded" in out
    assert "FAILED doge" in out and "DOGE/USDT" in out and "01_data.ipynb" in out

    names = [report_name(DATA_NB, r["parameters"]) for r in RUNS[:2]]
    index = (reports / "index.html").read_text()
    for run, name in zip(RUNS[:2], names, strict=True):
        p = run["parameters"]
        html = (reports / f"{name}.html").read_text()
        assert "from qlab.ui import data_explorer" not in html and "application/vnd.qlab.metrics" not in html  # no code, no internals
        assert f"{p['symbol']} 1h from the sample" in html
        meta = json.loads((reports / f"{name}.meta.json").read_text())
        expected = qlab.quality_report(sample_window(p["symbol"], "1h", p["start"], p["end"]), "1h")
        assert meta["status"] == "ok" and meta["parameters"] == p
        assert meta["metrics"]["quality_score"] == round(expected.score, 2)
        assert meta["metrics"]["bars"] == len(sample_window(p["symbol"], "1h", p["start"], p["end"])) == 168
        assert f'href="{name}.html"' in index
        assert f"<code>symbol</code> = {p['symbol']}</li>" in index and f"<code>start</code> = {p['start']}</li>" in index
    assert index.count("<tr>") == 1 + 3  # header + every report, the failed one included
    assert "quality_score" in index and "completeness" in index
    failed = json.loads((reports / "doge.meta.json").read_text())
    assert failed["status"] == "failed" and "DOGE/USDT" in failed["error"]
    assert 'class="failed"' in index and "no bundled candles for &#x27;DOGE/USDT&#x27;" in index


def test_published_metrics_win_and_parameters_are_listed(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                                            "language_info": {"name": "python"}})
    params = nbformat.v4.new_code_cell("x = 2\nlabel = 'a'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("import qlab\nqlab.publish_metrics({'sharpe': x * 0.5, 'n_trades': 7, "
                                                  "'max_drawdown': -0.125})\nprint('done', label)")]
    source = tmp_path / "tiny.ipynb"
    nbformat.write(nb, source)
    html = run_notebook(source, {"x": 4, "label": "b"}, reports=tmp_path / "r", name="tiny-x4")
    meta = json.loads((tmp_path / "r" / "tiny-x4.meta.json").read_text())
    assert meta["metrics"] == {"sharpe": 2.0, "n_trades": 7, "max_drawdown": -0.125}
    assert meta["parameters"] == {"x": 4, "label": "b"} and meta["duration_s"] > 0
    assert "done b" in html.read_text() and "qlab.publish_metrics" not in html.read_text()
    index = (tmp_path / "r" / "index.html").read_text()
    assert "<code>sharpe</code> = 2" in index and "<code>max_drawdown</code> = -12.50%" in index

    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError(f'bad x={x}')"))
    nbformat.write(nb, source)
    with pytest.raises(NotebookError, match=r"tiny.ipynb failed with parameters \{'x': 3\}: ValueError: bad x=3"):
        run_notebook(source, {"x": 3}, reports=tmp_path / "r", name="tiny-x3")
    assert "bad x=3" in (tmp_path / "r" / "tiny-x3.html").read_text()  # the error is in the report too


def test_report_names_are_unique_and_batch_files_are_checked(capsys):
    a = report_name("nb/01_data.ipynb", {"symbol": "BTC/USDT"})
    b = report_name("nb/01_data.ipynb", {"symbol": "BTC-USDT"})
    assert a != b and a.startswith("01_data--symbol=BTC-USDT--") and report_name("x.ipynb") == "x"
    assert report_name("x.ipynb", {"b": 1, "a": 2}) == report_name("x.ipynb", {"a": 2, "b": 1})
    assert report_name("x.ipynb", {"a": 1, "b": 2}) != report_name("x.ipynb", {"a": 2, "b": 1})
    with pytest.raises(ConfigError, match="would both write report"):
        batch_items([{"notebook": "x.ipynb", "parameters": {"a": 1}}, {"notebook": "x.ipynb", "parameters": {"a": 1}}])
    with pytest.raises(ConfigError, match=r"unknown key 'params'.*did you mean 'parameters'"):
        batch_items([{"notebook": "x.ipynb", "params": {}}])
    assert main(["run"]) == 2 and "give either a NOTEBOOK" in capsys.readouterr().err
    assert main(["run", "x.ipynb", "--batch", "b.yaml"]) == 2 and "not both" in capsys.readouterr().err


def test_the_index_lists_the_notebooks_defaults_beside_the_given_parameters(tmp_path):
    from qlab.ui.reports_index import notebook_defaults

    defaults = notebook_defaults(DATA_NB)
    # read the parameters cell independently: every `name = value` line of the tagged cell
    nb = json.loads(Path(DATA_NB).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [line.split("=")[0].strip() for line in "".join(cell["source"]).splitlines() if "=" in line and not line.startswith("#")]
    assert sorted(defaults) == sorted(names) and defaults["timeframe"] == "1h" and defaults["start"] is None

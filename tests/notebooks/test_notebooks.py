"""Every notebook runs headless through papermill with its defaults, offline, and exports HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlab.ui.runner import run_notebook

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_saved_clean_with_one_parameters_cell(notebook):
    nb = json.loads(notebook.read_text())
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, f"{notebook.name} has outputs"
            assert "import qlab." not in cell["source"] or "from qlab.ui" in "".join(cell["source"])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_headless_and_exports_html(notebook, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no store here: the explorer falls back to the bundled sample
    html = run_notebook(notebook, reports=tmp_path / "reports")
    text = html.read_text()
    assert html.name == notebook.stem + ".html"
    assert text.count("Plotly.newPlot") >= 1 and "plotly.js" in text.lower()
    assert "Traceback" not in text


def test_data_explorer_reads_the_store_and_shades_every_gap(tmp_path):
    """ADA/BTC 5m has 40 missing bars in 5 runs (SOURCES.md): the chart must shade all 5."""
    import os

    from qlab.data.sample import load_into_store
    from qlab.data.store import Store

    with Store(Path(os.environ["QLAB_HOME"]) / "qlab.duckdb") as s:  # the default store the kernel opens
        load_into_store(s)
    run_notebook(REPO / "notebooks" / "01_data.ipynb", {"symbol": "ADA/BTC", "timeframe": "5m", "source": "store"},
                 reports=tmp_path / "reports", name="ada")
    executed = json.loads((tmp_path / "reports" / "ada.ipynb").read_text())
    texts = [o.get("text", "") for c in executed["cells"] for o in c.get("outputs", [])]
    assert any("ADA/BTC 5m from the store: 5720 bars" in "".join(t) for t in texts)
    figures = [o["data"]["application/vnd.plotly.v1+json"] for c in executed["cells"] for o in c.get("outputs", [])
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    chart = figures[0]
    assert "(store)" in chart["layout"]["title"]["text"]
    starts = {s["x0"][:16] for s in chart["layout"].get("shapes", []) if s.get("type") == "rect"}
    assert starts == {f"2018-01-15T{hm}" for hm in ("10:10", "10:30", "11:10", "11:45", "12:00")}

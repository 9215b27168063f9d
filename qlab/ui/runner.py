"""Run a notebook headless through papermill and export it as an HTML report without code cells."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qlab.config import reports_dir
from qlab.errors import NotFoundError


def run_notebook(
    notebook: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    reports: str | Path | None = None,
    name: str | None = None,
    timeout: int = 600,
) -> Path:
    """Execute `notebook` with `parameters` injected after its `parameters` cell; write reports/NAME.html.

    The executed notebook (with outputs) is kept beside the HTML as NAME.ipynb for inspection.
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    source = Path(notebook)
    if not source.is_file():
        candidates = sorted(p.name for p in Path("notebooks").glob("*.ipynb"))
        from qlab.errors import did_you_mean

        listing = ", ".join(candidates) or "none"
        raise NotFoundError(f"no notebook {str(source)!r}; notebooks here: {listing}." + did_you_mean(source.name, candidates))
    out_dir = Path(reports) if reports is not None else reports_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = name or source.stem
    executed = out_dir / f"{stem}.ipynb"
    papermill.execute_notebook(
        str(source), str(executed), parameters=parameters or {}, kernel_name="python3",
        cwd=str(Path.cwd()), progress_bar=False, execution_timeout=timeout,
    )
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    html = out_dir / f"{stem}.html"
    html.write_text(_with_plotly_js(body), encoding="utf-8")
    return html


def _with_plotly_js(html: str) -> str:
    """Put one offline copy of plotly.js into the report's head, for every figure in it."""
    if "Plotly.newPlot" not in html:
        return html
    from plotly.offline import get_plotlyjs

    script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return re.sub(r"<head>", lambda m: m.group(0) + script, html, count=1)

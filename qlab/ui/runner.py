"""Run a notebook headless through papermill and export it as an HTML report without code cells."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from qlab.config import reports_dir
from qlab.errors import NotFoundError, QlabError
from qlab.ui import reports_index


class NotebookError(QlabError, RuntimeError):
    """A notebook raised while it ran headless; the message names the notebook, its parameters and the error."""


def run_notebook(
    notebook: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    reports: str | Path | None = None,
    name: str | None = None,
    timeout: int = 600,
    index: bool = True,
) -> Path:
    """Execute `notebook` with `parameters` injected after its `parameters` cell; write reports/NAME.html.

    The executed notebook (with outputs) is kept beside the HTML as NAME.ipynb for inspection, its parameters, times
    and headline metrics as NAME.meta.json, and reports/index.html is rebuilt (index=False leaves that to the caller).
    A failing notebook still gets its HTML (with the error) and an index entry, then raises NotebookError.
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
    nb = nbformat.read(source, as_version=4)
    nb.cells.append(reports_index.auto_metrics_cell())
    error = None
    try:
        papermill.execute_notebook(
            nb, str(executed), parameters=parameters or {}, kernel_name="python3",
            cwd=str(Path.cwd()), progress_bar=False, execution_timeout=timeout,
        )
    except Exception as exc:  # papermill's execution error (or a dead kernel): report it, then raise a clear one
        ename, evalue = getattr(exc, "ename", type(exc).__name__), getattr(exc, "evalue", None)
        error = f"{ename}: {evalue if evalue is not None else (str(exc).strip().splitlines() or [''])[-1]}"
    done = nbformat.read(executed, as_version=4) if executed.is_file() else None
    reports_index.write_run_info(out_dir, reports_index.run_info(done, source, stem, parameters or {}, error))
    html = out_dir / f"{stem}.html"
    if done is not None:
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(reports_index.strip_report_internals(done))
        html.write_text(_with_plotly_js(body), encoding="utf-8")
    if index:
        reports_index.build_index(out_dir)
    if error:
        raise NotebookError(f"{source.name} failed with parameters {parameters or {}}: {error}; the executed notebook "
                            f"is {executed}")
    return html


def _with_plotly_js(html: str) -> str:
    """Put one offline copy of plotly.js into the report's head, for every figure in it."""
    if "Plotly.newPlot" not in html:
        return html
    from plotly.offline import get_plotlyjs

    script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    return re.sub(r"<head>", lambda m: m.group(0) + script, html, count=1)

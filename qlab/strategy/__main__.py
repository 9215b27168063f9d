"""`python -m qlab.strategy --readme`: regenerate the indicator, signal and template lists in README.md."""

from __future__ import annotations

import sys
from pathlib import Path

from qlab.strategy.indicators import indicator_markdown
from qlab.strategy.signals import signal_markdown
from qlab.strategy.templates import template_table

README = Path(__file__).resolve().parents[2] / "README.md"


def generated_sections() -> dict[str, str]:
    """Marker name -> markdown generated from the registries."""
    templates = template_table()
    lines = ["| template | what it does |", "|---|---|"] + [f"| `{r.name}` | {r.description} |" for r in templates.itertuples()]
    return {"indicators": indicator_markdown(), "signals": signal_markdown(), "templates": "\n".join(lines)}


def section(text: str, name: str) -> str:
    """The text between `<!-- name:start -->` and `<!-- name:end -->`."""
    return text.split(f"<!-- {name}:start -->")[1].split(f"<!-- {name}:end -->")[0].strip()


def update_readme(path: Path = README) -> None:
    """Replace every generated section of the README with what the registries hold now."""
    text = path.read_text()
    for name, body in generated_sections().items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        head, _, rest = text.partition(start)
        _, _, tail = rest.partition(end)
        text = f"{head}{start}\n{body}\n{end}{tail}"
    path.write_text(text)


if __name__ == "__main__":
    if "--readme" in sys.argv:
        update_readme()
        print(f"updated {README}")

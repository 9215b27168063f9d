"""Package-level promises: fast import, declared dependencies, layering."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import qlab

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["errors", "config", "events", "exchange", "accounts", "data", "costs", "execution", "strategy", "engine", "analytics",
          "research", "paper", "alerts", "ui", "cli"]


def test_import_is_light_and_fast():
    code = (
        "import time, sys; t = time.perf_counter(); import qlab; print(time.perf_counter() - t); "
        "print(sorted(m for m in ('pandas', 'duckdb', 'plotly', 'numpy', 'vectorbt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert float(out[0]) < 1.0
    assert out[1] == "[]"


def test_public_names_resolve_and_unknown_names_suggest():
    assert callable(qlab.load_sample) and callable(qlab.quality_report) and qlab.Store.__name__ == "Store"
    with pytest.raises(AttributeError, match="did you mean 'load_sample'"):
        _ = qlab.load_sampel


def _names(requirements: list[str]) -> dict[str, str]:
    return {re.split(r"[<>=~!\[ ]", r, maxsplit=1)[0].lower(): r for r in requirements}


def test_environment_yml_declares_every_pyproject_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = (REPO / "environment.yml").read_text()
    listed = {m.group(1).lower(): m.group(2) for m in re.finditer(r"^\s*-\s+([A-Za-z0-9_.\-]+)\s*([<>=~!].*)?$", env, re.M)}
    conda_names = {"python-duckdb": "duckdb", "arch-py": "arch"}  # conda-forge names that differ from PyPI
    listed = {conda_names.get(k, k): v for k, v in listed.items()}
    for name, requirement in wanted.items():
        assert name in listed, f"{name} is in pyproject.toml but not in environment.yml"
        spec = re.sub(r"^\[[^\]]*\]", "", requirement[len(name):].strip())  # extras such as psycopg[binary]
        assert (listed[name] or "").replace(" ", "") == spec.replace(" ", ""), f"{name}: {spec} vs {listed[name]}"


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "qlab" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_modules_import_only_earlier_layers_and_only_the_store_imports_duckdb():
    for path in (REPO / "qlab").rglob("*.py"):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        own = _layer(module)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "duckdb":
                    assert module == "qlab.data.store", f"{module} imports duckdb"
                if name.split(".")[0] == "ccxt":
                    assert module.startswith("qlab.exchange"), f"{module} imports ccxt"
                target = _layer(name)
                if own is not None and target is not None:
                    assert target <= own, f"{module} imports {name} from a later layer"

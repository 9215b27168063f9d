"""The machine a benchmark ran on: CPU, cores, memory, OS, Python and key library versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

LIBRARIES = ("qlab", "numpy", "pandas", "pyarrow", "duckdb", "numba", "vectorbt", "backtesting", "optuna")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count()


def _memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """A dict of facts about this machine and the installed libraries (absent ones left out)."""
    memory = _memory_bytes()
    versions = {name: v for name in LIBRARIES if (v := _version(name)) is not None}
    if "qlab" not in versions:  # running from a checkout that is not pip-installed
        try:
            import qlab

            versions["qlab"] = getattr(qlab, "__version__", "checkout")
        except ImportError:
            pass
    return {
        "cpu": _cpu_model(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "libraries": versions,
    }


def machine_markdown(info: dict[str, Any]) -> str:
    """The machine block of BENCHMARKS.md."""
    cores = info["logical_cores"]
    if info["usable_cores"] and info["usable_cores"] != cores:
        cores = f"{info['usable_cores']} usable of {cores}"
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return "\n".join(
        [
            "## Machine",
            "",
            f"- CPU: {info['cpu']} ({info['arch']}), {cores} logical cores",
            f"- Memory: {info['memory_gib']} GiB",
            f"- OS: {info['os']}",
            f"- Python: {info['python']}",
            f"- Libraries: {libs}",
        ]
    )
